"""Markdown report: one table across all stages, then the measured models on each profile."""
from __future__ import annotations

from .recommend import baseline_label, estimate_label, trusted_error


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def _num(x, fmt="{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def budget_text(budget: dict) -> str:
    """A prune budget that is not a parameter share, and how close the pruned model came: one line."""
    name = next(k for k in ("latency_ms", "macs") if k in budget)
    fmt = (lambda v: f"{v:.3g} ms") if name == "latency_ms" else (lambda v: f"{v / 1e6:,.1f}M MACs")
    est = budget.get("estimated")
    how = (f"estimated on {est['profile']} ({estimate_label(True, trusted_error(est))})"
           if est else "measured on the host" if name == "latency_ms" else "counted")
    return f"{'Latency' if name == 'latency_ms' else 'MAC'} budget {fmt(budget[name])}: {how} {fmt(budget.get('reached', budget.get('measured_ms')))} " \
           f"({budget['off_by']:+.1%}) at {budget.get('case', 'batch 1')}"


def data_warning(s: dict) -> str | None:
    """The run's data warning (a dev split made of train texts, from loading's check), if it has one; the Markdown
    and the HTML report both show it."""
    return (s.get("data", {}).get("overlap_with_train") or {}).get("warning")


def dev_holdout_text(s: dict) -> str | None:
    """How dev was built when it was carved out of train (data.dev_holdout), else None."""
    h = s.get("data", {}).get("dev_holdout")
    if not h:
        return None
    share = f", {h['share']:.1%} of them" if "share" in h else ""
    return (f"dev is {h['dev']:,} whole train texts held out (of {h['roots']:,} that no other train text contains"
            f"{share}), "
            f"with the {h['removed_from_train']:,} train texts of {h['min_chars']}+ characters inside them "
            "(`data.dev_holdout`): inputs train has never seen.")


def grouped_text(s: dict) -> str | None:
    """Which splits came grouped by class and were shuffled on loading, else None."""
    g = s.get("data", {}).get("grouped_by_class")
    if not g:
        return None
    return (f"the {' and '.join(g)} split{'s' if len(g) > 1 else ''} came grouped by class; edgekd shuffled "
            f"{'them' if len(g) > 1 else 'it'} once (seed 0), so that the first examples a stage reads hold every class.")


def teacher_warnings(s: dict) -> list[str]:
    """The teacher stage's warning of a teacher that has learned little of the task (teacher.stage.weak_teacher), for
    each teacher that has one."""
    return [st["metrics"]["weak"] for st in s.get("stages", [])
            if st.get("stage") == "teacher" and (st.get("metrics") or {}).get("weak")]


def labels_text(s: dict) -> list[str]:
    """How each teacher's trained head was read with the data's labels, where it was not taken as it is."""
    lines = []
    for st in s.get("stages", []):
        lab = st.get("stage") == "teacher" and (st.get("metrics") or {}).get("labels")
        if not lab or (lab["order"] == list(range(len(lab["order"]))) and not lab["dropped"]):
            continue
        order = ", ".join(f"{name} = its class {i}" for name, i in zip(lab["data_labels"], lab["order"]))
        dropped = (f"; its classes {lab['dropped']}, which the data never shows, are left out" if lab["dropped"]
                   else "")
        lines.append(f"Labels: the teacher `{st['id']}` was read with the data's labels ({lab['matched_by']}): "
                     f"{order}{dropped}.")
    return lines


def _params(n) -> str:
    return "—" if n is None else (f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k")


def _cell(text: str, limit: int = 200) -> str:
    """Text that stays inside one table cell: one line, no column separators, at most `limit` characters."""
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _latency_cases(systems: dict) -> list[tuple[str, str]]:
    cases = []
    for sysm in systems.values():
        for prof, lat in sysm.get("latency_ms", {}).items():
            for case in lat:
                if (prof, case) not in cases:
                    cases.append((prof, case))
    return cases


def render_markdown(s: dict) -> str:
    out = [f"# edgekd report — {s.get('name')}", ""]
    if s.get("accuracy") is not None:
        out += [f"Final model (`{s.get('model', 'model.onnx')}`, ONNX Runtime) accuracy on the test split: "
                f"**{_pct(s['accuracy'])}%** vs teacher **{_pct(s.get('teacher_accuracy'))}%** "
                f"(agreement with the teacher {_pct(s.get('agreement'))}%).", ""]
    if data_warning(s):
        out += [f"> **Data:** {data_warning(s)}", ""]
    if dev_holdout_text(s):
        out += [f"Data: {dev_holdout_text(s)}", ""]
    if grouped_text(s):
        out += [f"Data: {grouped_text(s)}", ""]
    for line in labels_text(s):
        out += [line, ""]
    for line in teacher_warnings(s):
        out += [f"> **Teacher:** {line}", ""]
    systems = s.get("systems", {})
    onnx_acc = {"export": systems.get("final", {}).get("accuracy")}
    onnx_agr = {"export": systems.get("final", {}).get("agreement")}
    out += ["## Stages", "",
            "| stage | params | size MB | test accuracy % | agreement with teacher % | architecture |",
            "| --- | --- | --- | --- | --- | --- |"]
    for st in s.get("stages", []):
        if st["stage"] == "profile":
            continue
        m = st["metrics"]
        acc = onnx_acc.get(st["stage"], m.get("test_accuracy"))
        agr = onnx_agr.get(st["stage"], m.get("test_agreement", 1.0 if st["stage"] == "teacher" else None))
        arch = "; ".join(f"{k}={v}" for k, v in st.get("architecture", {}).items())
        note = " (ONNX)" if st["stage"] == "export" else ""
        out.append(f"| {st['stage']}{note} | {_params(st.get('params'))} | {_num(st.get('size_mb'))} | {_pct(acc)} | "
                   f"{_pct(agr)} | {arch or '—'} |")
    out.append("")
    out.append("Accuracy of the torch stages is measured in PyTorch; the export row is the ONNX model under "
               "ONNX Runtime. Size: safetensors (torch stages) or the .onnx file.")
    out.append("")
    out += _transfer_section(s.get("stages", []), systems.get("final", {}).get("transfer"))
    prune = next((st["metrics"] for st in s.get("stages", []) if st["stage"] == "prune"), {})
    out += _prune_steps_section(prune)
    if systems:
        cases = _latency_cases(systems)
        out += ["## Measured models", ""]
        estimated = {(p, c) for sysm in systems.values() for p, lat in sysm.get("latency_ms", {}).items()
                     for c, x in lat.items() if x.get("estimated")}
        head = "| model | accuracy % | agreement % | size MB | params | " + " | ".join(
            f"{p} {c} p50 ms (estimated)" if (p, c) in estimated else f"{p} {c} p50/p90 ms" for p, c in cases
        ) + " | peak memory MB |"
        out += [head, "| " + " | ".join(["---"] * (6 + len(cases))) + " |"]
        for name, m in systems.items():
            label = f"{name} — {baseline_label(m)}" if baseline_label(m) else name
            if "error" in m:  # a PTQ baseline onnxruntime could not build or run: nothing measured
                what = "built, does not run" if m.get("failed_at") == "run" else "not built"
                out.append(f"| {label}: {what} ({_cell(m['error'])}) | " + " | ".join(["—"] * (5 + len(cases))) + " |")
                continue
            lat = m.get("latency_ms", {})
            cells = []
            peak = None
            for p, c in cases:
                x = lat.get(p, {}).get(c)
                if x is None:
                    cells.append("—")
                elif x.get("estimated"):
                    cells.append(f"~{x['p50']:.2f} ({estimate_label(True, trusted_error(x))})")
                else:
                    cells.append(f"{x['p50']:.2f} / {x['p90']:.2f}")
                if x is not None and not x.get("estimated"):
                    peak = max(peak or 0.0, x.get("peak_memory_mb", 0.0))
            out.append(f"| {label} | {_pct(m.get('accuracy'))} | {_pct(m.get('agreement'))} | {_num(m.get('size_mb'))} | "
                       f"{_params(m.get('params'))} | " + " | ".join(cells) + f" | {_num(peak, '{:.1f}')} |")
        out += ["", "Latency: ONNX Runtime CPU, batch 1, warm-up excluded; `seqN_tT` = padded to N tokens with T "
                "threads, `natural_t1` = each test text at its own length, 1 thread. Measured cases: p50 is the "
                "lowest median of several rounds (each a fresh process at another time: the machine when quiet), p90 "
                "pools every run of every round. `final-<profile>` is the build made for that device (static "
                "shapes, its quantization scheme); its accuracy is what the device's own compiler computes where "
                "edgekd can run it (Qualcomm's HTP under onnxruntime-qnn), else onnxruntime CPU running that device "
                "graph (a simulation): see NPU builds below.", ""]
        if any(baseline_label(m) for m in systems.values()):
            out += ["PTQ baselines (not shipped): the final model's own FP32 export quantized after training by "
                    "onnxruntime's tools — `ptq-dynamic` with quantize_dynamic (int8 per-channel weights, activations "
                    "quantized at run time), `ptq-static` with quantize_static (QDQ, uint8 activations calibrated "
                    "MinMax on train examples, int8 per-channel weights) — measured like the other models: what QAT "
                    "buys over quantizing the trained float model. Agreement is with the teacher."
                    + (" `ptq-static-matmul`: the same quantize_static of the MatMul and Gemm nodes only, built "
                       "because the model of onnxruntime's default operator set does not run (its note says why)."
                       if "ptq-static-matmul" in systems else ""), ""]
        spreads = {f"{name} {p} {c}": x["round_spread"] for name, m in systems.items()
                   for p, lat in m.get("latency_ms", {}).items() for c, x in lat.items() if "round_spread" in x}
        if spreads:
            worst = max(spreads, key=spreads.get)
            out += [f"Round-to-round spread (median round p50 / lowest − 1): median {100 * sorted(spreads.values())[len(spreads) // 2]:.1f}%, "
                    f"worst {100 * spreads[worst]:.1f}% ({worst}) — how noisy the machine was while measuring.", ""]
        rates = [(name, p, c, x) for name, m in systems.items() for p, cs in (m.get("throughput") or {}).items()
                 for c, x in cs.items()]
        if rates:
            out += ["## Throughput", "", "| model | profile | case | items/s | ms per batch |", "| --- | --- | --- | --- | --- |"]
            out += [f"| {n} | {p} | {c} | {x['items_per_s']:.1f} | {x['ms_per_batch']:.2f} |" for n, p, c, x in rates]
            out += ["", "Whole batches with every thread of the profile (`bB_seqN_tT`); ms per batch as p50 above.", ""]
    speed = s.get("int8_speedup_vs_fp32")
    if speed:
        out += ["## INT8 vs the same model in FP32", "",
                "Speed-up of the INT8 model over its own FP32 export (p50 ratio, same run, same machine): "
                + ", ".join(f"{k} {v:.2f}x" for k, v in speed.items()) + ".", ""]
        slow = [k for k, v in speed.items() if v < 1.0]
        if slow:
            shipped_fp32 = "final-int8" in systems  # the export measured it too and shipped FP32
            out += [f"**{'Note' if shipped_fp32 else 'Warning'}:** INT8 is slower than FP32 for {', '.join(slow)}: on "
                    "this device the quantized graph does not reach fast integer kernels (or the model is too small "
                    "to benefit); " + ("the FP32 model ships (see INT8 on this host)." if shipped_fp32 else
                                       "ship FP32 there."), ""]
    out += _npu_section(s.get("device_models") or {}, s.get("systems") or {})
    compat = s.get("compat")
    if compat:
        out += ["## Device compatibility of the shipped model", "",
                "| profile | model shipped there | runs as-is | unsupported ops | fallback nodes % | fallback FLOPs % | dynamic inputs | quantization violations |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for prof, c in compat.items():
            out.append(f"| {prof} | {c.get('model', 'final')} | {'yes' if c.get('ok') else 'no'} | {', '.join(c.get('unsupported_ops', [])) or '—'} | "
                       f"{_pct(c.get('fallback_nodes_share'))} | {_pct(c.get('fallback_flops_share'))} | "
                       f"{len(c.get('dynamic_inputs', [])) or '—'} | {c.get('quantization_violations', 0)}"
                       f"{' (' + ', '.join(c.get('violation_kinds', [])) + ')' if c.get('violation_kinds') else ''} |")
        out.append("")
    v = s.get("export_validation")
    if v:
        out += ["## Export validation", "",
                f"ONNX Runtime vs PyTorch on {v['examples']} dev examples: argmax agreement "
                f"{_pct(v.get('argmax_agreement'))}%, max |Δlogit| {_num(v.get('max_abs_logit_diff'), '{:.4g}')}, "
                f"failures: {len(v.get('failures', []))}.", ""]
    out += _int8_section(s.get("int8")) + _vocabulary_section(s.get("vocabulary"))
    mach = s.get("machine")
    if mach:
        isa = ", ".join(k for k, on in mach.get("isa", {}).items() if on) or "none detected"
        out += ["## Machine", "", f"{mach.get('cpu')} — {mach.get('cores')} logical cores, {mach.get('arch')}, "
                f"ISA: {isa}, {_num(mach.get('memory_gb'), '{:.0f}')} GB.", ""]
    out += [f"_edgekd {s.get('edgekd_version')}_", ""]
    return "\n".join(out)


def _transfer_section(stages: list[dict], shipped: dict | None) -> list[str]:
    """What transferred at each stage that trains a student, and to the shipped ONNX model (test split)."""
    rows = [(st["stage"], st.get("path"), st["metrics"]["transfer"]) for st in stages
            if isinstance(st.get("metrics", {}).get("transfer"), dict)]
    if shipped:
        profile = next((st.get("path") for st in stages if st["stage"] == "profile"), None)
        rows.append(("shipped model.onnx (ONNX Runtime)", profile, shipped))
    if not rows:
        return []
    out = ["## What transferred (test split)", "",
           "| model | accuracy % | teacher % | agreement % | ECE | teacher ECE | per-class accuracy % | disagreements |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, path, t in rows:
        per_class = ", ".join(f"{_cell(k, 30)} {_pct(v)}" for k, v in (t.get("per_class_accuracy") or {}).items())
        where = f" (`{path}/{t['disagreements_file']}`)" if path and t.get("disagreements_file") else ""
        out.append(f"| {name} | {_pct(t.get('accuracy'))} | {_pct(t.get('teacher_accuracy'))} | "
                   f"{_pct(t.get('agreement'))} | {_num(t.get('ece'), '{:.3f}')} | {_num(t.get('teacher_ece'), '{:.3f}')} | "
                   f"{per_class or '—'} | {t.get('disagreements', '—')}{where} |")
    return out + ["", "ECE: expected calibration error over 15 equal-width confidence bins (0 = confidence matches "
                  "accuracy). The disagreements files list each input where the model and the teacher differ, with "
                  "both predictions and confidences.", ""]


def _int8_section(int8: dict | None) -> list[str]:
    """Whether INT8 paid on the host: the integer-kernel check of onnxruntime's optimised graph and the timing."""
    if not int8:
        return []
    k = int8["integer_kernels"]
    share = k["time_share"]
    kernels = ", ".join(f"{op} ×{n}" for op, n in k["integer_kernels"].items()) or "none"
    out = ["## INT8 on this host", "", f"**{'INT8 ships' if int8['int8_pays'] else 'FP32 ships'}**: {int8['reason']}.", "",
           f"Integer-kernel check of the graph onnxruntime runs (`{k['optimized_graph']}`): "
           f"{'every quantized layer runs as an integer kernel' if k['ok'] else 'quantized layers left in float'}; "
           f"integer kernels {kernels}. Share of the profiled time ({k['profiled']['inputs']}, "
           f"{k['profiled']['threads']} thread): integer kernels {_pct(share['integer_kernels'])}%, float layers "
           f"{_pct(share['float_layers'])}%, other float ops {_pct(share['float_ops'])}%, quantize/dequantize "
           f"{_pct(share['quantize_dequantize'])}%.", ""]
    layouts = int8.get("layouts") or {}
    if len(layouts) > 1:  # the INT8 layouts measured against each other in the same rounds
        out += [f"INT8 layouts timed in the same rounds ({int8['timing']['case']}); "
                f"**{int8.get('layout')}** is the one kept:", "",
                "| layout | file | p50 ms | × FP32 | integer kernels | agreement with PyTorch | MB |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        out += [f"| {name} | `{f['file']}` | {f['p50_ms']:.3g} | {f['speedup']:.2f}× | "
                f"{'ok' if f['integer_kernels_ok'] else 'float left'} | "
                f"{_pct(f.get('argmax_agreement')) if 'argmax_agreement' in f else 'QAT model (validated at export)'}"
                f"{' — failed' if f.get('validation_failures') else ''} | {f['size_mb']:.2f} |"
                for name, f in layouts.items()] + [""]
    if k["float_layers"]:
        out += ["| float layer left | op | int8 weight | time % |", "| --- | --- | --- | --- |"]
        out += [f"| {_cell(f['node'], 80)} | {f['op']} | {'yes' if f['quantized_weight'] else 'no'} | "
                f"{_pct(f['time_share'])} |" for f in k["float_layers"][:20]] + [""]
    top = list(k["float_ops"].items())[:8]
    if top:
        out += ["Float ops by share of time: " + ", ".join(f"{op} {_pct(v)}%" for op, v in top) + ".", ""]
    return out


def _npu_section(builds: dict, systems: dict) -> list[str]:
    """Each NPU build as the vendor's compiler saw it: placement, rejected nodes, accuracy on the HTP."""
    out = []
    for prof, b in builds.items():
        htp = b.get("htp")
        if htp is None:
            continue
        out += [f"## NPU build for {prof}", ""]
        w = b.get("weights")  # the export manifest's record of the weights the build started from
        if w and w["from"] in ("qat", "pre-qat"):
            out += [f"Built from the {'QAT model' if w['from'] == 'qat' else 'model QAT started from'} "
                    f"({w.get('stage', 'qat')} `{w['artifact']}`): {w.get('reason', '')}.", ""]
        if not htp.get("checked"):
            m = systems.get(f"final-{prof}", {})
            out += [f"Not checked by the vendor's compiler: {htp.get('reason', 'onnxruntime-qnn is not installed')}. "
                    f"Accuracy {_pct(m.get('accuracy'))}% is a simulation.", ""]
            continue
        pl = htp["placement"]
        where = (f"every node on the HTP ({pl['htp_nodes']} nodes, {pl['partitions']} partition"
                 f"{'s' if pl['partitions'] != 1 else ''})" if not pl["cpu_nodes"] else
                 f"**{pl['cpu_nodes']} nodes on the CPU** ({', '.join(f'{k} ×{v}' for k, v in pl['cpu_ops'].items())}), "
                 f"{pl['htp_nodes']} on the HTP in {pl['partitions']} partitions; shipped with "
                 f"export.npu_fallback: {htp.get('npu_fallback')}")
        out += [f"Compiled by Qualcomm's compiler for HTP v{htp['htp_arch']} (SoC {htp['soc_model']}) and run under "
                f"its emulation ({htp['by']}): {where}. On {htp['examples']} test examples the HTP scores "
                f"{_pct(htp['accuracy'])}% (PyTorch {_pct(htp['pytorch_accuracy'])}%), argmax agreement with PyTorch "
                f"{_pct(htp['argmax_agreement'])}%. Its latency is an estimate: an emulation's timing means nothing.",
                ""]
        if pl["rejected"]:
            out += ["| node left to the CPU | op | QNN's reason |", "| --- | --- | --- |"]
            out += [f"| {r['node']} | {r['op'] or '—'} | {r['reason']} |" for r in pl["rejected"]] + [""]
    return out


def _vocabulary_section(v: dict | None) -> list[str]:
    if not v:
        return []
    if not v.get("trimmed"):
        return ["## Vocabulary", "", f"Not trimmed: {v.get('reason')}.", ""]
    t = v["test"]
    changed = t.get("texts_changed", t.get("texts_tokenized_differently"))  # the latter: artifacts before the modes
    return ["## Vocabulary", "", f"Trimmed ({v.get('mode', 'fallback')}) to {v['size']:,} of {v['original_size']:,} "
            f"rows ({v['kept']}). Test accuracy of the PyTorch model {_pct(t['accuracy_full_vocabulary'])}% with the "
            f"full vocabulary, {_pct(t['accuracy_trimmed'])}% trimmed ({changed} test texts "
            f"{v.get('texts_changed_means', 'tokenized differently')}; agreement {_pct(t['agreement'])}%)."
            + (f" Position table cut to {pos['rows']} of {pos['original_rows']} rows (the trained length)."
               if (pos := v.get("positions")) else ""), ""]


def _prune_steps_section(m: dict) -> list[str]:
    """Each prune -> recover step of a budget run: what it removed and what dev accuracy it kept."""
    steps = m.get("steps")
    if not steps:
        return []
    start = m.get("non_embedding_params_before")
    out = ["## Pruning steps", "", f"Budget run from {_params(start)} non-embedding parameters; widths in multiples of "
           f"{m.get('width_multiple', 1)}.", "",
           "| step | ratio | non-embedding params | kept % | MACs | FP32 ONNX MB | FP32 host ms | INT8 host ms | "
           "hidden | heads per layer | FFN per layer | dev % before recovery | dev % after |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for st in steps:
        a = st.get("architecture", {})
        out.append(f"| {st['step']} | {st['ratio']:.3f} | {_params(st['non_embedding_params'])} | "
                   f"{_pct(st['non_embedding_params'] / start if start else None)} | "
                   f"{_num(st.get('macs') and st['macs'] / 1e6, '{:,.1f}M')} | {_num(st.get('onnx_fp32_mb'))} | "
                   f"{_num(st.get('latency_ms'), '{:.3g}')} | {_num(st.get('int8_dynamic_latency_ms'), '{:.3g}')} | "
                   f"{a.get('hidden', '—')} | {a.get('heads_per_layer', '—')} | {a.get('ffn_per_layer', '—')} | "
                   f"{_pct(st.get('dev_accuracy_before_recovery'))} | {_pct(st.get('dev_accuracy'))} |")
    case = next((st["latency_case"] for st in steps if st.get("latency_case")), None)
    if case:
        out += ["", f"MACs and host latency at {case}; INT8 host ms: onnxruntime's dynamic INT8 of the step's FP32 "
                    "export (a stand-in: the shipped model's INT8 comes from QAT and is timed by the export stage)."]
    if m.get("budget"):
        out += ["", budget_text(m["budget"]) + "."]
    hf = m.get("hf_folder") or {}
    if hf:
        out += ["", (f"Hugging Face folder: `{hf['folder']}/` in the prune artifact ({hf['loads_with']})." if hf.get("folder")
                     else f"No Hugging Face folder: {hf.get('reason')}; load it with {hf.get('load_instead')}.")]
    return out + [""]
