"""The `profile` stage: measure what ships, next to the teacher, on every measured profile.

Accuracy is that of the exported ONNX model under onnxruntime on the held-out test split, not
of the PyTorch model that is thrown away. Models: the final export, its own FP32 export (same
architecture, quantization off), the teacher exported in FP32, and post-training quantization
baselines of the FP32 export built with onnxruntime's own tools (baselines.py; not shipped).

A model entry is {"path", "params"} and optionally "tokenizer_dir" (the export folder, whose trimmed
vocabulary the model takes; default the run's tokenizer, see encoded_for), "only_on" (a device build),
"baseline" (a PTQ baseline's label) and "file"/"artifact" (where a model not in the export artifact lies).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..artifact import renumbered_vocabulary
from ..configs import ProfileStageConfig
from ..train.context import Context
from ..progress import log
from ..devices.feeds import model_input_dims, model_input_names
from ..train.distiller import DISAGREEMENTS
from ..train.transfer import transfer_report
from .measure import measure_models, scored_logits, usable_seq_lens
from ..data.batching import Encoded
from ..devices.profiles import detect_host, load_profile


def estimate_all(models: dict, results: dict, profile, max_positions: int | None) -> dict | None:
    """Estimated latencies on a device that is not present, labelled as such, with the error of the profile's
    anchors (published measurements on that device) or as an unanchored estimate.

    Returns what is known about the estimate's trust, or None when no calibration exists — then nothing is
    estimated rather than guessed.
    """
    from ..errors import ProfileError
    from ..devices.anchors import UNANCHORED, estimate_trust
    from ..devices.estimate import calibration_path, estimate_latency, load_calibration

    try:
        cal = load_calibration()
    except ProfileError as e:
        log(f"[yellow]profile {profile.name}: not present and not estimated — {e}[/]")
        return None
    trust = estimate_trust(profile.name, cal)
    seq_lens = usable_seq_lens(profile, max_positions)
    for name, m in models.items():
        is_image = "pixel_values" in model_input_names(m["path"])
        ids_dims = model_input_dims(m["path"]).get("input_ids", [])
        fixed = ids_dims[1] if len(ids_dims) == 2 else None  # a static build runs at its own length, whatever the text
        cases = {f"t{t}": (None, t) for t in profile.threads} if is_image else {
            f"seq{s}_t{t}": (s, t) for s in ([fixed] if fixed else seq_lens) for t in profile.threads}
        out = {}
        for case, (seq, threads) in cases.items():
            est = estimate_latency(m["path"], profile, seq, threads, cal)
            out[case] = {"p50": est["ms"], "estimated": True, "estimator_error": trust["estimator_error"],
                         "anchored": trust["anchored"]}
        results[name]["latency_ms"][profile.name] = out
    if trust["anchored"]:
        log(f"profile {profile.name}: latency estimated (not measured), ±{100 * trust['estimator_error']:.0f}% "
            f"against published measurements ({trust['anchor']})")
    else:
        log(f"[yellow]profile {profile.name}: latency is an {UNANCHORED} (not measured): {trust['anchor']}[/]")
    return {**trust, "calibration": str(calibration_path())}


def compatibility_summary(path: Path, profile) -> dict:
    """Which operators / quantization choices of the shipped model the device cannot run as-is."""
    from ..devices.compat import check_compatibility

    c = check_compatibility(path, profile, seq_len=max(profile.seq_lens))
    keep = ("ok", "unsupported_ops", "fallback_nodes_share", "fallback_flops_share", "dynamic_inputs", "seq_len")
    out = {k: c[k] for k in keep if k in c}
    violations = c.get("quantization_violations", [])
    out["quantization_violations"] = len(violations)
    out["violation_kinds"] = sorted({v.get("kind", "?") for v in violations})
    return out


def final_op_breakdown(path: Path, test, ctx: Context, latency: dict) -> dict:
    """Where the shipped model's time goes on the host (1 thread; seq 128 or the largest the model takes).

    The profiler's shares are scaled to the p50 the profile stage measured for the same case without
    the profiler (host-cpu), else to the profiled runs' own wall time.
    """
    from ..devices.feeds import encoded_feeds
    from ..devices.op_profile import op_breakdown, scale_breakdown

    feed = encoded_feeds(test, model_input_names(path), min(128, ctx.recipe.data.max_length), limit=1)[0]
    case = "t1" if test.images is not None else f"seq{len(feed['input_ids'][0])}_t1"
    prof = op_breakdown(path, feed, threads=1)
    measured = next((lat[case]["p50"] for lat in latency.values() if case in lat and not lat[case].get("estimated")), None)
    total = measured if measured is not None else prof["run_ms"] or prof["kernel_ms"]
    return {"case": case, "ms_per_op_type": scale_breakdown(prof, total), "share": prof["share"],
            "scaled_to": "measured p50 (no profiler)" if measured is not None else "profiled run time",
            "profiler_kernel_ms": prof["kernel_ms"], "profiler_run_ms": prof["run_ms"]}


def export_encoding(parent) -> dict:
    """{"tokenizer_dir": the export folder} when the export renumbered the vocabulary (export.vocabulary: fallback),
    else {} (the run's tokenizer)."""
    return {"tokenizer_dir": parent.path} if renumbered_vocabulary(parent.manifest) else {}


def encoded_for(m: dict, ctx: Context, split: str = "test", max_examples: int | None = None) -> Encoded:
    """A split as the model entry `m` is fed."""
    return ctx.encoded(split, max_examples, tokenizer_dir=m.get("tokenizer_dir"))


def build_ptq_baselines(fp32: dict, parent, ctx: Context, out: Path, key: str) -> tuple[dict, dict]:
    """PTQ baselines of the final model's FP32 export (the entry `fp32`), built into out/baselines:
    (model entries to measure, {name: {"baseline", "error"}} for those onnxruntime failed to build or to run)."""
    from .baselines import CALIBRATION_EXAMPLES, build_baselines

    calib = encoded_for(fp32, ctx, "train", CALIBRATION_EXAMPLES)  # train examples as the FP32 model is fed
    # the weight range of the shipped model: 7 bits where QAT chose int7 (x86 without VNNI)
    reduce_range = (parent.spec.get("quant") or {}).get("scheme", {}).get("weight_qmax") == 63
    built = build_baselines(fp32["path"], calib, out / "baselines", reduce_range)
    models, failed = {}, {}
    for name, b in built.items():
        if "error" in b:
            failed[name] = {**{k: v for k, v in b.items() if k != "path"}, "built_from": fp32["path"].name,
                            **({"file": str(b["path"].relative_to(out))} if "path" in b else {})}
            what = "was built but does not run" if b.get("failed_at") == "run" else "could not be built"
            log(f"[yellow]profile: PTQ baseline {name} ({b['baseline']}) {what}; the run goes on without it — "
                f"{b['error'][:300]}[/]")
            continue
        models[name] = {"path": b["path"], "params": fp32["params"], "baseline": b["baseline"],
                        "quantization": b["quantization"], "file": str(b["path"].relative_to(out)),
                        "artifact": key, **{k: fp32[k] for k in ("tokenizer_dir",) if k in fp32}}
    if models:
        log(f"profile: PTQ baselines {', '.join(models)} built from {fp32['path'].name} with onnxruntime's own "
            "quantization tools (not shipped)")
    return models, failed


def _htp_scored(m: dict, test: Encoded, teacher_logits, simulated: dict) -> tuple[dict, np.ndarray]:
    """A device build's accuracy and agreement from the logits the HTP computed in the export (test split, or its
    first export.htp_examples); the CPU simulation's figures stay beside them."""
    from safetensors.numpy import load_file

    htp = m["htp"]
    logits = load_file(str(m["path"].parent / htp["logits"]))["logits"]
    n = len(logits)
    pred = logits.argmax(-1)
    acc = {"accuracy": float((pred == test.labels[:n]).mean()), "examples": n,
           "accuracy_by": f"{htp['by']} (HTP v{htp['htp_arch']})",
           "htp_placement": {k: htp["placement"][k] for k in ("htp_nodes", "cpu_nodes", "partitions", "cpu_ops")},
           "simulated": {k: simulated[k] for k in ("accuracy", "examples", "agreement") if k in simulated}}
    if teacher_logits is not None:
        acc["agreement"] = float((pred == teacher_logits[:n].argmax(-1)).mean())
    return acc, logits


def run_profile(cfg: ProfileStageConfig, parent, ctx: Context, out: Path, key: str) -> dict:
    models: dict[str, dict] = {}
    teacher_onnx = parent.manifest.get("teacher_onnx")
    if cfg.compare_teacher and teacher_onnx:  # exported by the export stage (export.teacher)
        models["teacher-fp32"] = {"path": parent.path / teacher_onnx["file"], "params": teacher_onnx["params"],
                                  **({"tokenizer_dir": ctx.teacher.path} if ctx.cross_tokenizer else {})}
    params = parent.spec.get("summary", {}).get("params")
    own = export_encoding(parent)  # the export's trimmed vocabulary, which every model but the teacher takes
    if cfg.compare_fp32 and (parent.path / "model-fp32.onnx").is_file():
        models["final-fp32"] = {"path": parent.path / "model-fp32.onnx", "params": params, **own}
    models["final"] = {"path": parent.path / "model.onnx", "params": params, **own,
                       **({"htp": parent.manifest["htp"]} if "htp" in parent.manifest else {})}
    if (parent.path / "model-int8.onnx").is_file():  # INT8 did not pay on the host: FP32 ships, INT8 is shown
        models["final-int8"] = {"path": parent.path / "model-int8.onnx", "params": params, **own,
                                "not_shipped": "INT8 did not pay on the host (see the export's int8 entry)"}
    # Device builds (export.devices): on its device, the build made for it is what ships, not the CPU model.
    shipped = {p: "final" for p in ctx.recipe.profiles}
    for pname, build in (parent.manifest.get("devices") or {}).items():
        models[f"final-{pname}"] = {"path": parent.path / build["file"], "params": params, "only_on": pname, **own,
                                    **({"htp": build["htp"]} if "htp" in build else {})}
        shipped[pname] = f"final-{pname}"
    failed: dict[str, dict] = {}
    fp32 = models.get("final-fp32") or (models["final"] if "final-int8" in models else None)
    if cfg.ptq_baselines and fp32 is not None:
        baselines, failed = build_ptq_baselines(fp32, parent, ctx, out, key)
        models.update(baselines)

    test = ctx.encoded("test")
    # Agreement is with the teacher as it ships (its FP32 ONNX export) when measured, else with
    # the PyTorch teacher.
    teacher_logits = None if "teacher-fp32" in models else ctx.teacher_logits("test")
    results: dict[str, dict] = {}
    for name, m in list(models.items()):  # teacher first: its predictions define agreement
        try:
            acc, logits = scored_logits(m["path"], encoded_for(m, ctx), None if teacher_logits is None else
                                        teacher_logits.argmax(-1), f"accuracy {name}")
        except Exception as e:  # noqa: BLE001 — onnxruntime raises anything; a comparison model must not end the run
            if "baseline" not in m:
                raise
            # built, but onnxruntime cannot run it (e.g. quantized index arithmetic): recorded, not measured
            failed[name] = {"baseline": m["baseline"], "built_from": fp32["path"].name, "file": m["file"],
                            "failed_at": "run", "error": f"{type(e).__name__}: {e}"[:2000]}
            log(f"[yellow]profile: PTQ baseline {name} ({m['baseline']}) was built but does not run; the run goes on "
                f"without it — {failed[name]['error'][:300]}[/]")
            del models[name]
            continue
        if m.get("htp", {}).get("checked"):  # the NPU build as Qualcomm's HTP computes it (export), not as
            acc, logits = _htp_scored(m, test, teacher_logits, acc)  # onnxruntime's CPU kernels run its graph
        elif "only_on" in m:
            acc["accuracy_by"] = "onnxruntime CPU kernels running the device build's QDQ graph (a simulation)"
        if name == "teacher-fp32":
            teacher_logits = logits
            acc["agreement"] = 1.0
        if name == "final":  # what transferred to the model that ships, as the training stages report theirs
            acc["transfer"] = transfer_report(logits, teacher_logits, test.labels, ctx.data.label_names,
                                              ctx.data.test.texts, out / DISAGREEMENTS)
        results[name] = {**acc, "params": m["params"], "size_mb": os.path.getsize(m["path"]) / 1e6,
                         "file": m.get("file") or str(m["path"].relative_to(parent.path)),
                         "artifact": m.get("artifact", parent.id), "latency_ms": {},
                         **({"built_for": m["only_on"]} if "only_on" in m else {}),
                         **({k: m[k] for k in ("baseline", "quantization", "not_shipped") if k in m})}
        log(f"profile: {name} accuracy {acc['accuracy']:.2%} on {acc['examples']} test examples"
            + (f" ({acc['accuracy_by']})" if "accuracy_by" in acc else "")
            + (f" (PTQ baseline: {m['baseline']})" if "baseline" in m else ""))
    results.update(failed)  # a baseline that could not be built: its error, nothing measured

    compat: dict = {}
    estimators: dict = {}  # per absent profile: how far its estimates can be trusted
    max_positions = parent.spec.get("hf_config", {}).get("max_position_embeddings")
    for pname in ctx.recipe.profiles:
        profile = load_profile(pname)
        compat[pname] = {"model": shipped[pname], **compatibility_summary(models[shipped[pname]]["path"], profile)}
        # a device build runs only on its device, and is the only model timed on it
        here = ({shipped[pname]: models[shipped[pname]]} if shipped[pname] != "final" else
                {n: m for n, m in models.items() if "only_on" not in m})
        if not profile.measured:
            trust = estimate_all(here, results, profile, max_positions)
            if trust is not None:
                estimators[pname] = trust
            continue
        latency, throughput = measure_models(
            {n: m["path"] for n, m in here.items()}, {n: encoded_for(m, ctx) for n, m in here.items()}, profile,
            warmup=cfg.warmup, runs=cfg.runs, rounds=cfg.rounds, natural=cfg.natural_lengths,
            natural_max=cfg.natural_max_examples,
            max_positions=max_positions, desc="profile: timing")
        for name in here:
            results[name]["latency_ms"][pname] = latency[name]
            if throughput[name]:
                results[name].setdefault("throughput", {})[pname] = throughput[name]
    metrics = {"models": results, "machine": detect_host(), "test_examples": len(test), "compat": compat,
               "estimators": estimators, "measurement": _protocol(cfg),
               "op_breakdown": final_op_breakdown(models["final"]["path"], encoded_for(models["final"], ctx), ctx,
                                                  results["final"]["latency_ms"])}
    return {"metrics": metrics, "spec": parent.spec}


def _protocol(cfg: ProfileStageConfig) -> str:
    return (f"onnxruntime CPU, batch 1, a fresh process per measurement; {cfg.warmup} warm-up then {cfg.runs} timed "
            f"runs, in {cfg.rounds} rounds spread over the profiling time. p50 = the lowest round median (the machine "
            "when quiet; other load only slows it); p90/p99 over every run of every round; round_spread = median "
            "round p50 / lowest - 1.")
