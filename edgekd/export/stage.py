"""The `export` stage: ONNX (QDQ when the model was QAT'd), validated against PyTorch.

Writes model.onnx (what ships) and, for a quantized model, model-fp32.onnx: the same network with
quantization switched off, so profiling can show what INT8 gained on the same architecture; and,
with export.teacher, teacher.onnx: the run's teacher in FP32, the reference the profile stage
measures the shipped model against.
The export fails — it does not warn — when onnxruntime and PyTorch disagree on the dev split, or
and ships FP32 where INT8 does not pay on the host (layout.py).

Text models ship with a trimmed vocabulary (vocab.py) unless export.vocabulary is `full`: every
ONNX model in the folder takes the ids of the folder's own tokenizer (in `fallback` mode renumbered, and
teacher.onnx then takes the teacher's: teacher-tokenizer/), which config.json describes for Optimum's
ORTModelForSequenceClassification.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from ..artifact import read_preprocessing
from ..configs import ExportConfig
from ..data.batching import Encoded
from ..devices.feeds import encoded_feeds
from ..devices.runtime import quiet_ort
from ..errors import ExportValidationError, NpuFallbackError
from ..models.spec import load_model_from_artifact
from ..progress import log
from ..quantize.fakequant import fake_quant_off, output_quant_off
from ..train.context import Context
from .device import export_for_device
from .device_weights import device_weights
from ..models.onnx_graph import example_inputs
from .onnx_export import export_onnx
from .validate import validate_export

DEFAULT_OPSET = 17
# Examples (from the train split) that calibrate the activation ranges of a full-INT8 device export.
CALIBRATION_EXAMPLES = 64
# The NPU build's test-split logits as the HTP computes them, beside the build
HTP_LOGITS = "htp-test-logits.safetensors"
# The EPContext model (its context binary beside it): what a Snapdragon app loads without compiling on the phone
CONTEXT_MODEL = "model_ctx.onnx"
CONTEXT_CHECK_EXAMPLES = 8


def device_builds(cfg: ExportConfig, profiles: list[str]) -> list[str]:
    """Profiles after the first that get a model of their own (export.devices; default: every integer
    NPU, whose full-INT8 static-shape scheme the first profile's model does not follow)."""
    from ..devices.profiles import load_profile

    first = profiles[0] if profiles else None
    if cfg.devices is not None:
        return [p for p in cfg.devices if p != first]
    return [p for p in profiles[1:] if p != first and load_profile(p).quantization.scope == "full"]


def run_export(cfg: ExportConfig, parent, ctx: Context, out: Path, key: str) -> dict:
    """model.onnx for the first profile; devices/<profile>/model.onnx for each device build."""
    from ..devices.profiles import load_profile

    profiles = ctx.recipe.profiles
    model = load_model_from_artifact(parent)
    quantized = bool(parent.spec.get("quant"))
    encoded, vocabulary, trim = _vocabulary(model, cfg, ctx, out)
    pre_qat: dict = {}  # the model QAT started from, loaded once for the device builds that take it
    val_data = encoded("dev", cfg.validation_examples)
    primary = load_profile(profiles[0]) if profiles else None
    # the float twin: of a QAT model on the CPU path; a full-INT8 device export always keeps the float model it quantized
    twin = quantized or (primary is not None and primary.quantization.scope == "full")
    calibration = encoded("train", CALIBRATION_EXAMPLES)
    built, weights = model, None
    if primary is not None and primary.quantization.scope == "full":  # `edgekd export --profile <an NPU>`
        built, weights = device_weights(model, parent, primary, cfg.device_weights, trim, pre_qat)
    facts, extra = _build(built, cfg, primary, parent, ctx, out, val_data, calibration, cfg.min_agreement,
                          float_twin=twin)
    if weights:
        extra["weights"] = weights
    if vocabulary:
        extra["vocabulary"] = vocabulary
    if primary is not None and primary.execution_provider == "QNNExecutionProvider":
        extra["htp"] = on_htp(built, out, primary, cfg, encoded("test"), primary.name)
    if quantized and primary is not None and primary.measured and primary.quantization.scope != "full":
        extra["int8"] = _int8_on_host(model, parent, cfg, ctx, out, val_data, extra)
    validation = extra.pop("validation")
    devices = {}
    for name in device_builds(cfg, profiles):
        folder = out / "devices" / name
        folder.mkdir(parents=True)
        profile = load_profile(name)
        built, weights = device_weights(model, parent, profile, cfg.device_weights, trim, pre_qat)
        dev_facts, dev_extra = _build(built, cfg, profile, parent, ctx, folder, val_data, calibration,
                                      cfg.device_min_agreement, float_twin=False)
        devices[name] = {"file": f"devices/{name}/model.onnx", "onnx": dev_facts, "compat": dev_extra.get("compat"),
                         "validation": dev_extra["validation"], "size_mb": dev_facts["size_mb"], "weights": weights}
        if profile.execution_provider == "QNNExecutionProvider":
            devices[name]["htp"] = on_htp(built, folder, profile, cfg, encoded("test"), name)
    if devices:
        extra["devices"] = devices
    shipped_int8 = quantized and extra.get("int8", {}).get("int8_pays", True)
    metrics = {"validation": validation, "size_mb": (out / "model.onnx").stat().st_size / 1e6, "quantized": quantized,
               "shipped": "int8" if shipped_int8 else "fp32",
               **({"int8_speedup": extra["int8"]["timing"]["speedup"],
                   "integer_kernels_ok": extra["int8"]["integer_kernels"]["ok"]} if "int8" in extra else {}),
               **({"vocabulary": {k: vocabulary[k] for k in ("size", "original_size")}} if vocabulary else {}),
               **({"devices": {n: {"size_mb": d["size_mb"], "argmax_agreement": d["validation"]["argmax_agreement"],
                                   "fallback_nodes_share": (d["compat"] or {}).get("fallback_nodes_share"),
                                   **({"htp": _htp_summary(d["htp"])} if "htp" in d else {})}
                               for n, d in devices.items()}} if devices else {})}
    if ctx.task == "text-classification" and hasattr(model, "config"):
        # config.json: Optimum's ORTModel loads the folder with it; with the label names the teacher stage recorded
        # from the data (preprocess.json travels with every artifact), so that its pipelines answer "positive", not
        # LABEL_1
        names = read_preprocessing(out).get("labels")
        if names:
            model.config.id2label = dict(enumerate(names))
            model.config.label2id = {name: i for i, name in enumerate(names)}
        model.config.save_pretrained(str(out))
    if cfg.teacher and ctx.teacher is not None and ctx.teacher.id != parent.id:
        # on the CPU: the teacher may sit on the training GPU since it predicted the teacher outputs
        teacher = export_onnx(ctx.teacher_model().cpu(), example_inputs(ctx.task, ctx.data.preprocess), out / "teacher.onnx",
                              cfg.opset or DEFAULT_OPSET)
        extra["teacher_onnx"] = {**teacher, "artifact": ctx.teacher.id, "params": ctx.teacher.spec["summary"]["params"]}
        log(f"export: teacher.onnx {teacher['size_mb']:.2f} MB (FP32 reference)")
        if ctx.task == "text-classification":  # what `edgekd shadow` needs to run the teacher beside the student
            extra["shadow"] = _shadow_files(ctx, out, encoded, renumbered=bool(vocabulary and vocabulary.get("renumbered")))
    ort = _ort_format_models(profiles, devices, out, extra["onnx"].get("portable", "model.onnx"))
    if ort:
        extra["ort_format"] = ort
    spec = {**parent.spec, "exported_from": parent.id}
    if vocabulary and vocabulary.get("positions") and "hf_config" in spec:  # what the profile stage may time
        spec["hf_config"] = {**spec["hf_config"], "max_position_embeddings": vocabulary["positions"]["rows"]}
    return {"metrics": metrics, "spec": spec, "extra": extra}


def _build(model, cfg: ExportConfig, profile, parent, ctx: Context, out: Path, val_data: Encoded,
           calibration: Encoded, min_agreement: float, float_twin: bool) -> tuple[dict, dict]:
    full_int8 = profile is not None and profile.quantization.scope == "full"
    # a CPU build keeps attention's products float (QAT may have trained them in INT8 for an NPU profile of the
    # same run; float is only more precise)
    from .vocab import int32_row_map

    with (int32_row_map(model) if full_int8 else output_quant_off(model)):
        return _build_layout(model, cfg, profile, parent, ctx, out, val_data, calibration, min_agreement, float_twin)


def device_length(model, profile, max_length: int | None) -> int:
    """The static sequence length of an integer NPU's build: the profile's longest that the model's position table
    holds (trimmed to data.max_length unless export.vocabulary is full) and that a text reaches. preprocess.json
    truncates every text at data.max_length (`max_length`), so a longer static input would only be padding that the
    device computes on every call; a text CNN has no position table to say so."""
    limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None), max_length]
    limit = min((n for n in limits if n), default=None)
    fitting = [s for s in profile.seq_lens if limit is None or s <= limit]
    return max(fitting) if fitting else limit


def _build_layout(model, cfg: ExportConfig, profile, parent, ctx: Context, out: Path, val_data: Encoded,
                  calibration: Encoded, min_agreement: float, float_twin: bool) -> tuple[dict, dict]:
    """Export `model` to out/model.onnx as `profile` needs it and validate it against PyTorch.

    float_twin: also write out/model-fp32.onnx, the same network with quantization off, at the same
    shapes (what profiling compares INT8 with); a device build's twin is not kept (the first
    profile's serves the run). Returns (graph facts, extra manifest entries incl. validation). Raises ExportValidationError when
    onnxruntime and PyTorch disagree on more than 1 - min_agreement of the dev examples.
    """
    opset = cfg.opset or (profile.opset if profile is not None and profile.opset else DEFAULT_OPSET)
    static = cfg.static_shapes if cfg.static_shapes is not None else bool(profile and profile.static_shapes)
    seq_len = cfg.seq_len or (max(profile.seq_lens) if profile and static else 16)
    device = profile is not None and profile.quantization.scope == "full"
    if device and not cfg.seq_len:  # an integer NPU: static shapes whatever export.static_shapes says
        seq_len = device_length(model, profile, ctx.recipe.data.max_length if ctx.task == "text-classification"
                                else None)
    inputs = example_inputs(ctx.task, ctx.data.preprocess, seq_len)
    if device:
        facts = export_for_device(model, inputs, out, profile, encoded_feeds(calibration, list(inputs), seq_len),
                                  opset)
        extra = {"onnx": facts, "compat": facts.pop("compat"), "onnx_fp32": facts.pop("fp32")}
        if not float_twin:  # export_for_device always writes the float model it quantized
            (out / "model-fp32.onnx").unlink()
            del extra["onnx_fp32"]
        scheme = "w8a16" if profile.quantization.activation_dtype == "uint16" else "INT8"
        log(f"export: {profile.name} model.onnx {facts['size_mb']:.2f} MB: static [1, {seq_len}], full {scheme} QDQ "
            f"({facts['qdq_nodes']} QDQ nodes, {facts['quantized_weights']} {profile.quantization.weight_dtype} "
            f"{profile.quantization.weight_granularity} weights), {extra['compat']['fallback_nodes_share']:.0%} "
            "operator fallback")
    else:
        facts = export_onnx(model, inputs, out / "model.onnx", opset, static)
        log(f"export: model.onnx {facts['size_mb']:.2f} MB, {facts['qdq_nodes']} QDQ nodes, "
            f"{facts['quantized_weights']} int8 weights" + (f"; {facts['activations']}" if "activations" in facts else ""))
        extra = {"onnx": facts}
        if float_twin:
            with fake_quant_off(model):
                extra["onnx_fp32"] = export_onnx(model, inputs, out / "model-fp32.onnx", opset, static)
    validation = validate_export(model, out / "model.onnx", val_data, min_agreement, list(inputs))
    if validation["failures"]:
        kinds = ", ".join(f["type"] for f in validation["failures"])
        field = "export.device_min_agreement" if out.parent.name == "devices" else "export.min_agreement"
        hint = ("Try another opset (export.opset) or report a bug." if not device else
                f"The model is quantized in full (every activation uint8, per-tensor weights) for {profile.name}, "
                f"which the QAT model was not trained for; if this loss is acceptable lower {field} "
                "(edgekd export --min-agreement), otherwise report it.")
        raise ExportValidationError(
            f"export{' for ' + profile.name if profile else ''}: the ONNX model disagrees with PyTorch on "
            f"{validation['examples']} dev examples ({kinds}: {validation['failures']}). Nothing was written. {hint}",
            validation["failures"],
        )
    log(f"export{' for ' + profile.name if device else ''}: onnxruntime vs PyTorch argmax agreement "
        f"{validation['argmax_agreement']:.2%}, max |Δlogit| {validation['max_abs_logit_diff']:.3g}")
    extra["validation"] = validation
    return facts, extra


def on_htp(model, folder: Path, profile, cfg: ExportConfig, test: Encoded, name: str) -> dict:
    """The NPU build compiled by Qualcomm's compiler for the profile's HTP and run on the test split under the HTP's
    emulation (devices/qnn.py): where its nodes went, and the accuracy and agreement with PyTorch the HTP computes.
    Its logits are kept beside the build (htp-test-logits.safetensors) for the profile stage. A build that leaves
    nodes to the CPU is refused (export.npu_fallback, default refuse where the profile is full_offload)."""
    from ..devices import qnn

    if not qnn.available():
        return {"checked": False, "reason": "onnxruntime-qnn is not installed (pip install edgekd[qnn]): the build's "
                "placement is edgekd's reading of the profile's operator list and its accuracy onnxruntime's CPU "
                "kernels running the QDQ graph, a simulation"}
    from safetensors.numpy import save_file

    from ..devices.runtime import fit_to_static, static_onnx_logits, static_shapes
    from ..train.predict import accuracy, predict_logits

    # the deployable artifact too: the EPContext model and the context binary QNN prepared for this HTP
    session, placement = qnn.htp_session(folder / "model.onnx", profile, context=folder / CONTEXT_MODEL)
    fallback = cfg.npu_fallback or ("refuse" if profile.full_offload else "allow")
    if placement["cpu_nodes"] and fallback == "refuse":
        ops = ", ".join(f"{r['node']} ({r['op']}: {r['reason']})" for r in placement["rejected"][:8])
        raise NpuFallbackError(
            f"export: Qualcomm's compiler (onnxruntime-qnn {qnn.version()}, HTP v{profile.htp_arch}) leaves "
            f"{placement['cpu_nodes']} of {placement['cpu_nodes'] + placement['htp_nodes']} nodes of the {name} build "
            f"to the CPU: {ops}. The {name} profile is meant to run wholly on the NPU (full_offload); set "
            "export.npu_fallback: allow to ship it with those nodes on the CPU (the report says so), or change the "
            "model so that the HTP takes them.")
    static = static_shapes(session)
    data = fit_to_static(test.head(cfg.htp_examples), static)
    # the test split runs on the context binary (what an app loads; a quiet session), checked below against the
    # session that compiled it
    deployed = qnn.load_context_model(folder / CONTEXT_MODEL, profile)
    htp = static_onnx_logits(deployed, data, static, f"export: {name} on the HTP (emulated)")
    reference = predict_logits(model, data, desc=f"export: {name} PyTorch reference")
    save_file({"logits": htp}, str(folder / HTP_LOGITS))
    context = _context_round_trip(session, folder, data, static, htp)
    facts = {"checked": True, "by": f"onnxruntime-qnn {qnn.version()}, HTP backend emulated on x86",
             "htp_arch": profile.htp_arch, "soc_model": profile.soc_model, "npu_fallback": fallback,
             "placement": placement, "examples": len(data), "accuracy": accuracy(htp, data.labels),
             "pytorch_accuracy": accuracy(reference, data.labels),
             "argmax_agreement": float((htp.argmax(-1) == reference.argmax(-1)).mean()),
             "max_abs_logit_diff": float(np.abs(htp - reference).max()), "logits": HTP_LOGITS, "context": context}
    where = (f"all {placement['htp_nodes']} nodes on the HTP" if not placement["cpu_nodes"] else
             f"{placement['cpu_nodes']} nodes on the CPU ({', '.join(placement['cpu_ops'])}), "
             f"{placement['htp_nodes']} on the HTP in {placement['partitions']} partitions")
    log(f"export: {name} compiled by QNN for HTP v{profile.htp_arch}: {where}; on {len(data)} test examples the HTP "
        f"scores {facts['accuracy']:.2%} (PyTorch {facts['pytorch_accuracy']:.2%}), agreement "
        f"{facts['argmax_agreement']:.2%}")
    return facts


def _context_round_trip(compiled, folder: Path, data: Encoded, static: dict, htp) -> dict:
    """The EPContext model loaded back with the QNN provider (`htp`: its outputs) against the session that compiled
    the graph: the same outputs."""
    from ..devices import qnn
    from ..devices.runtime import static_onnx_logits

    head = data.head(CONTEXT_CHECK_EXAMPLES)
    n = len(head)
    with qnn.silenced():
        loaded = static_onnx_logits(compiled, head, static, "export: the compiling session")
    binaries = sorted(p.name for p in folder.glob("*.bin"))
    return {"model": CONTEXT_MODEL, "binaries": binaries,
            "size_mb": sum((folder / b).stat().st_size for b in binaries) / 1e6,
            "checked_examples": n, "same_outputs": bool(np.array_equal(loaded, htp[:n]))}


def _htp_summary(htp: dict) -> dict:
    if not htp.get("checked"):
        return {"checked": False}
    return {"checked": True, "cpu_nodes": htp["placement"]["cpu_nodes"], "accuracy": htp["accuracy"],
            "argmax_agreement": htp["argmax_agreement"]}


def _shadow_files(ctx: Context, out: Path, encoded, renumbered: bool) -> dict:
    """teacher-tokenizer/ where the folder's tokenizer was renumbered (teacher.onnx takes the original ids) and drift-reference.json: the teacher's
    confidence and the token length on the dev split, which `edgekd shadow` compares new inputs with. Dev, not
    train: the teacher was fine-tuned on train and is more confident there than on any new input."""
    import json

    from ..data.drift import drift_reference

    teacher_own = renumbered or ctx.cross_tokenizer  # teacher.onnx takes the teacher's original ids
    if teacher_own:
        ctx.teacher_tokenizer.save_pretrained(str(out / "teacher-tokenizer"))
    reference = drift_reference(ctx.teacher_logits("dev"), encoded("dev").lengths)
    (out / "drift-reference.json").write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")
    return {"teacher_tokenizer": "teacher-tokenizer" if teacher_own else ".", "drift_reference": "drift-reference.json"}


def _ort_format_models(profiles: list[str], devices: dict, out: Path, portable: str = "model.onnx") -> dict:
    """model.ort beside the model each profile with `ort_format` gets (onnxruntime-mobile reads only ORT format).

    onnxruntime's own converter, with fixed (basic) optimisations so the file runs on any build of
    the runtime; an ARM profile gets the ARM target's layout. portable: the standard-ONNX file of the shipped model
    (model.onnx, unless that is onnxruntime's own optimised graph), which the converter optimises for the target.
    """
    from ..devices.profiles import load_profile

    wanted = {p: prof for p, prof in ((p, load_profile(p)) for p in profiles) if prof.ort_format}
    if not wanted:
        return {}
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    made: dict[str, str] = {}
    for name, profile in wanted.items():
        onnx_file = out / (devices[name]["file"] if name in devices else portable)
        ort_file = onnx_file.with_suffix(".ort")
        if not ort_file.is_file():
            arm = any(isa in ("asimd", "asimddp", "neon", "dotprod", "i8mm", "sve") for isa in profile.isa)
            with tempfile.TemporaryDirectory(prefix="edgekd-ort-") as tmp:
                shutil.copy2(onnx_file, Path(tmp) / "model.onnx")
                # the converter prints each step on stdout and logs the config file it writes for a reduced build
                # (not used here); the export says in one line what it made, and a failure still raises
                with quiet_ort(), contextlib.redirect_stdout(io.StringIO()):
                    convert_onnx_models_to_ort(Path(tmp) / "model.onnx", output_dir=Path(tmp) / "ort",
                                               optimization_styles=[OptimizationStyle.Fixed],
                                               target_platform="arm" if arm else "amd64")
                shutil.copy2(next((Path(tmp) / "ort").glob("*.ort")), ort_file)
        made[name] = str(ort_file.relative_to(out))
        log(f"export: {made[name]} (ORT format for onnxruntime-mobile, {name})")
    return made


def _vocabulary(model, cfg: ExportConfig, ctx: Context,
                out: Path) -> tuple[Callable[..., Encoded], dict | None, Callable[[nn.Module], None]]:
    """Trim the model's token embeddings to the rows the train split reaches (export.vocabulary, vocab.py).

    Returns how to encode a split for the exported models (the folder's tokenizer, renumbered in
    `fallback` mode), what trimming did, with test accuracy of the PyTorch model before and after
    (test.tsv has pieces the train split lacks: they now read a neighbour's row, or split into
    smaller pieces), and how to trim another model of the same shape alike (a device build's other weights).
    """
    import json

    from ..devices.profiles import load_profile
    from ..train.predict import predict_logits
    from .vocab import (input_embeddings, kept_ids, remap_embeddings, trim_embeddings, trim_positions,
                        write_trimmed_tokenizer)

    if cfg.vocabulary == "full" or ctx.task != "text-classification" or input_embeddings(model) is None:
        return ctx.encoded, None, lambda other: None
    max_length = ctx.recipe.data.max_length
    # rows for the trained length, and for the lengths the profiles time this model at (a device build takes what
    # is left); every split is encoded at most max_length long, so no logit changes
    timed = [p for p in ctx.recipe.profiles if p not in device_builds(cfg, ctx.recipe.profiles)]
    trim_rows = partial(trim_positions, length=max([max_length] + [s for p in timed for s in load_profile(p).seq_lens]))
    positions = trim_rows(model)
    if positions and (out / "tokenizer_config.json").is_file():
        # the shipped tokenizer truncates at the trained length, within the position table (a longer input would
        # fail in its Gather)
        tc = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
        tc["model_max_length"] = max_length
        (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False), encoding="utf-8")
    tok = ctx.tokenizer
    used = {i for ids in tok(ctx.data.train.texts, add_special_tokens=True, truncation=False)["input_ids"] for i in ids}
    original = input_embeddings(model).num_embeddings
    special = set(tok.all_special_ids)
    row_of = None
    if cfg.vocabulary == "nearest":
        keep = np.array(sorted((used | special) & set(range(original))), dtype=np.int64)
        why = (f"{len(used)} pieces of the train split and {len(special)} special tokens; every other piece reads "
               "the row of its nearest kept piece (cosine in the model's embedding table), the tokenizer unchanged")
        encoded = ctx.encoded
    elif (out / "tokenizer.json").is_file():
        keep, why = kept_ids(json.loads((out / "tokenizer.json").read_text(encoding="utf-8")), used)
        if keep is None:
            log(f"export: vocabulary not trimmed — {why}")
            return ctx.encoded, {"trimmed": False, "reason": why, "positions": positions}, trim_rows
        encoded = partial(ctx.encoded, tokenizer_dir=out)
    else:
        why = "the tokenizer has no tokenizer.json to renumber (fallback trimming needs one; nearest does not)"
        log(f"export: vocabulary not trimmed — {why}")
        return ctx.encoded, {"trimmed": False, "reason": why, "positions": positions}, trim_rows
    before = {s: predict_logits(model, ctx.encoded(s), desc=f"vocabulary: {s} before") for s in ("dev", "test")}
    if cfg.vocabulary == "nearest":
        row_of = remap_embeddings(model, keep, special)
    else:
        trim_embeddings(model, keep)
        write_trimmed_tokenizer(out, keep)
    facts = {"trimmed": True, "mode": cfg.vocabulary, "renumbered": cfg.vocabulary == "fallback", "size": len(keep),
             "original_size": original, "kept": why, "positions": positions}
    kept_set = set(keep.tolist())
    for s in ("dev", "test"):
        enc = encoded(s)
        after = predict_logits(model, enc, desc=f"vocabulary: {s} after").argmax(-1)
        old = before[s].argmax(-1)
        original_ids = ctx.encoded(s).ids
        # nearest: texts with a piece that reads a neighbour's row; fallback: texts split differently
        changed = (sum(any(i not in kept_set for i in ids) for ids in original_ids) if row_of is not None
                   else sum(a != [int(keep[i]) for i in b] for a, b in zip(original_ids, enc.ids)))
        facts[s] = {"accuracy_full_vocabulary": float((old == enc.labels).mean()),
                    "accuracy_trimmed": float((after == enc.labels).mean()),
                    "agreement": float((after == old).mean()),
                    "texts_changed": changed}
    facts["texts_changed_means"] = "with a piece read from a neighbour" if row_of is not None else "tokenized differently"
    log(f"export: vocabulary trimmed to {len(keep):,} of {original:,} rows ({why}); test accuracy "
        f"{facts['test']['accuracy_full_vocabulary']:.2%} -> {facts['test']['accuracy_trimmed']:.2%} "
        f"({facts['test']['texts_changed']} texts {facts['texts_changed_means']})")

    def trim(other: nn.Module) -> None:
        trim_rows(other)
        if cfg.vocabulary == "nearest":  # its own nearest rows: its table is its own
            remap_embeddings(other, keep, special)
        else:
            trim_embeddings(other, keep)

    return encoded, facts, trim


def _int8_on_host(model, parent, cfg: ExportConfig, ctx: Context, out: Path, val_data: Encoded, extra: dict) -> dict:
    """The INT8 layout chosen by measurement (layout.py), its integer-kernel check and its timing against FP32 on the
    host; ships FP32 when INT8 does not pay."""
    from .layout import check_int8

    seq_len = min(128, ctx.recipe.data.max_length)

    def validate_dynamic(path: Path) -> dict:  # it quantizes the float twin: checked against the float model
        with fake_quant_off(model):
            return validate_export(model, path, val_data, cfg.min_agreement, extra["onnx"]["inputs"])

    # 7-bit weights where QAT trained 7-bit ones (x86 without VNNI: u8 x s8 pairs saturate int16 otherwise)
    reduce_range = (parent.spec.get("quant") or {}).get("scheme", {}).get("weight_qmax") == 63

    def validate_qat(path: Path) -> dict:  # onnxruntime's graph of the QAT model: checked against the QAT model
        return validate_export(model, path, val_data, cfg.min_agreement, extra["onnx"]["inputs"])

    result = check_int8(out, val_data, seq_len, cfg.int8_min_speedup,
                        dynamic=validate_dynamic if cfg.int8_dynamic else None, reduce_range=reduce_range,
                        fused=validate_qat if cfg.int8_fused else None)
    kernels = result["integer_kernels"]
    log(f"export: integer kernels {kernels['integer_kernels']} run {kernels['time_share']['integer_kernels']:.0%} of "
        f"the time; {result['reason']}")
    if result["layout"] != "qdq":  # another layout ships as model.onnx; the QAT QDQ graph stays beside it
        for suffix in (".onnx", ".optimized.onnx"):
            (out / f"model{suffix}").rename(out / f"model-int8-qdq{suffix}")
            (out / f"model-int8-{result['layout']}{suffix}").rename(out / f"model{suffix}")
        extra["validation_qdq"] = extra["validation"]
        extra["validation"] = result.pop("validation")
        extra["onnx_qdq"] = {**extra.pop("onnx"), "file": "model-int8-qdq.onnx"}
        extra["onnx"] = {"file": "model.onnx", "layout": result["layout"], "inputs": extra["onnx_qdq"]["inputs"],
                         "size_mb": (out / "model.onnx").stat().st_size / 1e6}
        if result["layout"] == "fused":  # com.microsoft operators: other runtimes take the standard QDQ graph
            extra["onnx"]["runs_on"] = "onnxruntime only (its CPU provider's com.microsoft operators)"
            extra["onnx"]["portable"] = "model-int8-qdq.onnx"
        result["integer_kernels"]["optimized_graph"] = "model.optimized.onnx"
    if not result["int8_pays"]:
        (out / "model.onnx").rename(out / "model-int8.onnx")
        (out / "model-fp32.onnx").rename(out / "model.onnx")
        with fake_quant_off(model):
            validation = validate_export(model, out / "model.onnx", val_data, cfg.min_agreement,
                                         extra["onnx"]["inputs"])
        if validation["failures"]:
            raise ExportValidationError(f"export: the FP32 model shipped instead of INT8 disagrees with PyTorch: "
                                        f"{validation['failures']}", validation["failures"])
        extra["validation_int8"] = extra["validation"]
        extra["validation"] = validation
        extra["onnx_int8"] = {**extra.pop("onnx"), "file": "model-int8.onnx"}
        extra["onnx"] = {**extra.pop("onnx_fp32"), "file": "model.onnx"}
    return result
