"""The device report: one self-contained HTML file (+ the same table and recommendation as Markdown and JSON).

Self-contained means it can be mailed or archived as one file: plots are inline base64 PNGs,
the CSS is inline, and nothing is fetched from anywhere.
"""
from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from .. import __version__
from ..artifact import write_json_atomic
from ..errors import EdgekdError
from . import plots
from .markdown import budget_text, data_warning, teacher_warnings
from .recommend import (baseline_label, device_info, estimate_label, normalize_accuracy, pareto, profile_names,
                        recommend, run_labels, trusted_error)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#222;margin:0 auto;
 max-width:1200px;padding:16px 24px}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}th,td{border:1px solid #d4d4d4;padding:3px 7px;
 text-align:right;vertical-align:top}th{background:#f3f3f3}td.l,th.l{text-align:left}
tr.est td{background:#fff6f6;font-style:italic}.wrap{overflow-x:auto}
.badge{display:inline-block;padding:0 5px;border-radius:3px;font-size:11px;font-style:normal;color:#fff}
.m{background:#1f77b4}.e{background:#d62728}.b{background:#7f7f7f}.ok{color:#2a7d2a}.bad{color:#b00}
.rec{border:2px solid #2ca02c;background:#f3fbf3;padding:10px 14px;border-radius:6px}
.rec.none{border-color:#d62728;background:#fdf3f3}.note{color:#666;font-size:12.5px}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0;flex:1 1 520px;max-width:600px}img{max-width:100%;height:auto}
figcaption{font-size:12px;color:#555}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _code(text: str) -> str:
    """Escape, then show the Markdown `code` spans of the shared rule text as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))


def _n(x, fmt="{:.3g}") -> str:
    return "—" if not isinstance(x, (int, float)) else fmt.format(x)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}"><figcaption>{_e(alt)}</figcaption></figure>'


def _source(c: dict) -> str:
    if not c["estimated"]:
        return '<span class="badge m">measured</span>'
    return f'<span class="badge e">{estimate_label(True, c["estimator_error"])}</span>'


def _pareto_flags(rows: list[dict]) -> set[int]:
    """ids of rows on their device's Pareto frontier."""
    on = set()
    for dev in {r["device"] for r in rows}:
        sub = [r for r in rows if r["device"] == dev and r["accuracy"] is not None]
        on |= {id(sub[i]) for i in pareto([(r["p50_ms"], r["accuracy"]) for r in sub])}
    return on


def _table(rec: dict) -> str:
    rows = rec["candidates"]
    if not rows:
        return '<p class="note">No latency measurements or estimates in these runs.</p>'
    front = _pareto_flags(rows)
    head = ["run/model", "device (class)", "source", "case", "p50 ms", "p90 ms", "throughput /s", "peak memory MB",
            "size MB", "accuracy %", "agreement with teacher %", "other cases, p50 ms", "Pareto", "constraints"]
    left = {0, 1, 2, 3, 11, 13}  # text columns; the numbers stay right-aligned
    out = ['<div class="wrap"><table><tr>' + "".join(
        f'<th{" class=l" if i in left else ""}>{_e(h)}</th>' for i, h in enumerate(head)) + "</tr>"]
    for c in rows:
        est = " (estimated)" if c["estimated"] else ""
        other = ", ".join(f"{k}: {_n(v)}" for k, v in c["other_cases"].items()) or "—"
        fails = c.get("failures") or []
        verdict = '<span class="ok">meets</span>' if not fails else f'<span class="bad">{_e("; ".join(fails))}</span>'
        what = f'<br><span class="badge b">{_e(c["baseline"])}</span>' if c.get("baseline") else ""
        cells = [f'<td class="l">{_e(c["label"])}{what}</td>', f'<td class="l">{_e(c["device"])} ({_e(c["device_class"])})</td>',
                 f'<td class="l">{_source(c)}</td>', f'<td class="l">{_e(c["case"])}</td>',
                 f"<td>{_n(c['p50_ms'])}{est}</td>", f"<td>{_n(c['p90_ms'])}</td>", f"<td>{_n(c['throughput'])}</td>",
                 f"<td>{_n(c['peak_memory_mb'], '{:.1f}')}</td>", f"<td>{_n(c['size_mb'], '{:.3g}')}</td>",
                 f"<td>{_n(None if c['accuracy'] is None else 100 * c['accuracy'], '{:.2f}')}</td>",
                 f"<td>{_n(None if c.get('agreement') is None else 100 * c['agreement'], '{:.2f}')}</td>",
                 f'<td class="l">{_e(other)}{est if other != "—" else ""}</td>',
                 f"<td>{'✓' if id(c) in front else ''}</td>", f'<td class="l">{verdict}</td>']
        out.append(f'<tr class="{"est" if c["estimated"] else ""}">' + "".join(cells) + "</tr>")
    out.append("</table></div>")
    out.append('<p class="note">Latency: batch 1 at the reference case, warm-up excluded; measured p50 is the lowest '
               "median of several rounds (each a fresh process at another time: the machine when quiet), p90 pools "
               "every run of every round. Throughput: the best items/s over the profile's batch sizes, all threads. "
               "Rows marked <em>estimated</em> (pink, italic) are computed from the device's published peak figures, "
               "not measured; their p90, memory and throughput are not estimated. Accuracy: the model's test accuracy "
               "under ONNX Runtime on the host; <code>final-&lt;device&gt;</code> is the build made for that device "
               "(static shapes, its quantization scheme), whose accuracy is onnxruntime CPU running the device's graph. "
               "Agreement: the share of test examples on which the model predicts what the teacher predicts. Rows marked <em>PTQ baseline</em> are not shipped: the final model's own FP32 export "
               "quantized after training by onnxruntime's tools (<code>ptq-dynamic</code>: quantize_dynamic; "
               "<code>ptq-static</code>: quantize_static, QDQ, MinMax-calibrated on train examples; "
               "<code>ptq-static-matmul</code>, where that model does not run: the same for MatMul and Gemm only), "
               "measured like the other models — what QAT buys over quantizing the trained float model.</p>")
    return "\n".join(out)


def _failed_baselines(summaries, labels) -> str:
    """A note for each PTQ baseline onnxruntime could not build or run (they have no row above)."""
    items = [f"<li>{_e(lab)}/{_e(name)} ({_e(baseline_label(m))}): "
             f"{'built, does not run' if m.get('failed_at') == 'run' else 'not built'} — {_e(str(m['error'])[:500])}</li>"
             for lab, s in zip(labels, summaries) for name, m in (s.get("systems") or {}).items()
             if isinstance(m, dict) and "error" in m]
    return f'<p class="note">PTQ baselines that could not be built or run:</p><ul class="note">{"".join(items)}</ul>' if items else ""


def _data_warnings(summaries, labels) -> str:
    """A warning box per run whose data loading found a problem (a dev split made of train texts), or whose teacher
    has learned little of the task (teacher.stage.weak_teacher), above all else: each qualifies every accuracy below."""
    return "".join([f'<p class="rec none"><strong>Data ({_e(label)}).</strong> {_e(data_warning(s))}</p>'
                    for s, label in zip(summaries, labels) if data_warning(s)]
                   + [f'<p class="rec none"><strong>Teacher ({_e(label)}).</strong> {_e(w)}</p>'
                      for s, label in zip(summaries, labels) for w in teacher_warnings(s)])


def _recommendation(rec: dict) -> str:
    cls = "rec" if rec["qualified"] else "rec none"
    lim = [f"max latency {rec['max_latency_ms']:g} ms" if rec["max_latency_ms"] is not None else "no latency limit",
           f"min accuracy {100 * rec['min_accuracy']:g}%" if rec["min_accuracy"] is not None else "no accuracy minimum"]
    return (f'<div class="{cls}" id="recommendation"><strong>{_e(rec["text"])}</strong><br>'
            f'<span class="note">Constraints: {_e(", ".join(lim))}. {rec["qualifying"]} of '
            f'{rec.get("eligible", len(rec["candidates"]))} candidates qualify.</span></div>'
            f"<p class=\"note\"><strong>Rule.</strong> {_code(rec['rule'])}</p>")


def _pareto_section(rec: dict) -> str:
    devices = list(dict.fromkeys(c["device"] for c in rec["candidates"]))
    if not devices:
        return '<p class="note">No latency data: no Pareto plot.</p>'
    figs = [_img(plots.pareto_png(d, [c for c in rec["candidates"] if c["device"] == d], rec["max_latency_ms"],
                                  rec["min_accuracy"]), f"Pareto plot: accuracy vs p50 latency on {d}")
            for d in devices]
    return ('<p class="note">Filled points are measured, hollow red points estimated. The green line and rings mark the Pareto '
            'frontier: the models no other model beats on both latency and accuracy.</p><div class="grid">'
            + "".join(figs) + "</div>")


def _op_section(summaries, labels) -> str:
    figs = []
    for lab, s in zip(labels, summaries):
        ops = s.get("op_breakdown")
        if isinstance(ops, dict) and ops:
            case = f" at {s['op_breakdown_case']}" if s.get("op_breakdown_case") else ""
            total = f", total {ops['_total']:.3g} ms" if isinstance(ops.get("_total"), (int, float)) else ""
            figs.append(_img(plots.op_breakdown_png(f"{lab}/final: per-operator latency (host{case}{total})", ops),
                             f"Per-operator latency breakdown of {lab}/final, measured on the host{case}"))
    note = ('<p class="note">Each operator type\'s share of kernel time in onnxruntime\'s profiler, scaled to the '
            "p50 measured without the profiler (the profiler's own cost per kernel would inflate small models).</p>")
    return ('<div class="grid">' + "".join(figs) + "</div>" + note) if figs else \
        '<p class="note">No per-operator breakdown in these runs (no <code>op_breakdown</code>).</p>'


def _widths(a: dict) -> str:
    """A step's kept widths: hidden, heads and FFN per layer (transformers), channels (CNN), units (BiLSTM)."""
    names = (("hidden", "hidden"), ("heads_per_layer", "heads"), ("ffn_per_layer", "FFN"),
             ("conv_channels", "channels"), ("lstm_hidden", "LSTM units"))
    return " · ".join(f"{label} {a[key]}" for key, label in names if key in a) or "—"


def _prune_section(summaries, labels) -> str:
    """Each budget-pruning run's steps: a table (parameters, FP32 host latency, dev accuracy around recovery) and
    the accuracy-against-size plot."""
    parts = []
    for lab, s in zip(labels, summaries):
        prune = next((st for st in s.get("stages", []) if st.get("stage") == "prune"), None)
        m = (prune or {}).get("metrics") or {}
        steps, start = m.get("steps"), m.get("non_embedding_params_before")
        if not steps or not start:
            continue
        rows = "".join(
            f'<tr><td>{st["step"]}</td><td>{_n(st["ratio"], "{:.3f}")}</td><td>{st["non_embedding_params"]:,}</td>'
            f'<td>{_n(100 * st["non_embedding_params"] / start, "{:.1f}")}%</td>'
            f'<td>{_n(st.get("macs") and st["macs"] / 1e6, "{:,.1f}M")}</td><td>{_n(st.get("onnx_fp32_mb"))}</td>'
            f'<td>{_n(st.get("latency_ms"))}</td><td>{_n(st.get("int8_dynamic_latency_ms"))}</td>'
            f'<td>{_e(_widths(st.get("architecture") or {}))}</td>'
            f'<td>{_n(100 * st["dev_accuracy_before_recovery"], "{:.2f}")}</td>'
            f'<td>{_n(100 * st["dev_accuracy"], "{:.2f}")}</td></tr>' for st in steps)
        budget = m.get("budget") or {}
        head = budget_text(budget) if budget else f"from {start:,} non-embedding parameters"
        parts.append(f"<h3>{_e(lab)}: {_e(head)}</h3><table><tr><th>step</th><th>ratio</th><th>non-embedding params"
                     "</th><th>kept</th><th>MACs</th><th>FP32 ONNX MB</th><th>FP32 host ms</th><th>INT8 host ms</th><th>widths</th>"
                     "<th>dev % before recovery</th><th>dev % after</th></tr>"
                     + rows + "</table>"
                     + _img(plots.prune_steps_png(f"{lab}: pruning steps", steps, start),
                            f"Dev accuracy against parameters kept for each pruning step of {lab}"))
    if not parts:
        return '<p class="note">No budget pruning in these runs (no <code>prune.budget</code>).</p>'
    return "".join(parts) + ('<p class="note">MACs and host ms: the step\'s FP32 ONNX model at batch 1, sequence 128, '
                             "1 thread, timed on the host when the run measures it; INT8 host ms: onnxruntime's "
                             "dynamic INT8 of that export (a stand-in for the QAT model the export stage times).</p>")


def _compat_section(summaries, labels) -> str:
    rows = []
    for lab, s in zip(labels, summaries):
        for prof, c in (s.get("compat") or {}).items():
            if not isinstance(c, dict):
                continue
            ok = '<span class="ok">compatible</span>' if c.get("ok") else '<span class="bad">not compatible</span>'
            ops = ", ".join(map(str, c.get("unsupported_ops") or [])) or "none"
            share = lambda k: _n(None if c.get(k) is None else 100 * c[k], "{:.1f}%")  # noqa: E731
            rows.append(f'<tr><td class="l">{_e(lab)}</td><td class="l">{_e(prof)}</td><td class="l">{ok}</td>'
                        f'<td class="l">{_e(ops)}</td><td>{share("fallback_nodes_share")}</td>'
                        f'<td>{share("fallback_flops_share")}</td></tr>')
    if not rows:
        return '<p class="note">No compatibility checks in these runs (no <code>compat</code>).</p>'
    return ('<table><tr><th class="l">run</th><th class="l">profile</th><th class="l">result</th>'
            '<th class="l">unsupported ops</th><th>fallback nodes</th><th>fallback FLOPs</th></tr>'
            + "".join(rows) + "</table>")


def _npu_section(summaries, labels) -> str:
    """Each NPU build as the vendor's compiler saw it (export, onnxruntime-qnn): placement and HTP accuracy."""
    rows = []
    for lab, s in zip(labels, summaries):
        for prof, b in (s.get("device_models") or {}).items():
            htp = b.get("htp") if isinstance(b, dict) else None
            if not isinstance(htp, dict):
                continue
            if not htp.get("checked"):
                rows.append(f'<tr><td class="l">{_e(lab)}</td><td class="l">{_e(prof)}</td><td class="l" colspan="5">'
                            f'not checked by the vendor\'s compiler: {_e(htp.get("reason", ""))}</td></tr>')
                continue
            pl = htp["placement"]
            cpu = ", ".join(f"{r['node']} ({r['op']}: {r['reason']})" for r in pl.get("rejected", [])) or "none"
            where = ('<span class="ok">all on the HTP</span>' if not pl["cpu_nodes"] else
                     f'<span class="bad">{pl["cpu_nodes"]} on the CPU</span>')
            rows.append(f'<tr><td class="l">{_e(lab)}</td><td class="l">{_e(prof)} (HTP v{_e(htp["htp_arch"])})</td>'
                        f'<td class="l">{where}, {pl["htp_nodes"]} nodes in {pl["partitions"]} HTP partition(s)</td>'
                        f'<td class="l">{_e(cpu)}</td><td>{_n(100 * htp["accuracy"], "{:.2f}%")}</td>'
                        f'<td>{_n(100 * htp["argmax_agreement"], "{:.2f}%")}</td><td>{htp["examples"]}</td></tr>')
    if not rows:
        return '<p class="note">No NPU builds in these runs.</p>'
    return ("<p>Each NPU build compiled by Qualcomm's compiler for the profile's HTP and run on the test split under "
            "its emulation (onnxruntime-qnn): the accuracy the HTP computes, not a simulation.</p>"
            '<table><tr><th class="l">run</th><th class="l">profile</th><th class="l">placement</th>'
            '<th class="l">nodes left to the CPU (QNN\'s reason)</th><th>HTP accuracy</th>'
            "<th>agreement with PyTorch</th><th>examples</th></tr>" + "".join(rows) + "</table>")


def _estimator_section(summaries, labels) -> str:
    rows = []
    for lab, s in zip(labels, summaries):
        for prof, t in (s.get("estimators") or {}).items():
            if not isinstance(t, dict):
                continue
            host = t.get("host_estimator_error")
            rows.append(f'<tr><td class="l">{_e(lab)}</td><td class="l">{_e(prof)}</td>'
                        f'<td>{_e(estimate_label(True, trusted_error(t)))}</td>'
                        f'<td class="l">{_e(t.get("anchor", ""))}</td>'
                        f'<td>{_n(None if host is None else 100 * host, "{:.0f}%")}</td></tr>')
    if not rows:
        return '<p class="note">No device in these runs was estimated.</p>'
    return ("<p>An estimate for a device that is not present carries its profile's error against published "
            "timings of public models on that device; where none exists it is an <em>unanchored estimate</em>, "
            "ranked after measured devices. The host estimator's own error (fitted and checked on this machine) "
            "is shown for reference only.</p>"
            '<table><tr><th class="l">run</th><th class="l">profile</th><th>estimate</th>'
            '<th class="l">anchors (published vs estimated)</th><th>host estimator error</th></tr>'
            + "".join(rows) + "</table>")


def render_html(summaries: list[dict], max_latency_ms: float | None = None, min_accuracy: float | None = None,
                devices: dict[str, dict] | None = None) -> str:
    """The whole report as one HTML string. `devices`: profile fields (default: read from the profile files)."""
    devices = device_info(profile_names(summaries)) if devices is None else devices
    rec = recommend(summaries, max_latency_ms, min_accuracy, devices)
    labels = run_labels(summaries)
    title = f"edgekd device report — {', '.join(labels)}"
    body = [f"<h1>{_e(title)}</h1>", _data_warnings(summaries, labels),
            "<h2>Recommendation</h2>", _recommendation(rec),
            "<h2>Models × devices</h2>", _table(rec), _failed_baselines(summaries, labels),
            "<h2>Pareto plots</h2>", _pareto_section(rec),
            "<h2>Per-operator breakdown</h2>", _op_section(summaries, labels),
            "<h2>Pruning steps</h2>", _prune_section(summaries, labels),
            "<h2>Compatibility per profile</h2>", _compat_section(summaries, labels),
            "<h2>NPU builds on the vendor's compiler</h2>", _npu_section(summaries, labels),
            "<h2>Estimates for absent devices</h2>", _estimator_section(summaries, labels),
            f'<p class="note">edgekd {_e(__version__)}. Every number marked <em>estimated</em> is computed, '
            "not measured.</p>"]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def render_devices_markdown(rec: dict, labels: list[str]) -> str:
    out = [f"# edgekd device report — {', '.join(labels)}", "", "## Recommendation", "", rec["text"], "",
           f"**Rule.** {rec['rule']}", "", "## Models × devices", "",
           "| run/model | device (class) | source | case | p50 ms | p90 ms | peak memory MB | size MB | accuracy % | "
           "agreement with teacher % | constraints |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in rec["candidates"]:
        src = estimate_label(c["estimated"], c["estimator_error"])
        p50 = _n(c["p50_ms"]) + (" (estimated)" if c["estimated"] else "")
        acc = _n(None if c["accuracy"] is None else 100 * c["accuracy"], "{:.2f}")
        agr = _n(None if c.get("agreement") is None else 100 * c["agreement"], "{:.2f}")
        label = c["label"] + (f" — {c['baseline']}" if c.get("baseline") else "")
        out.append(f"| {label} | {c['device']} ({c['device_class']}) | {src} | {c['case']} | {p50} | "
                   f"{_n(c['p90_ms'])} | {_n(c['peak_memory_mb'], '{:.1f}')} | {_n(c['size_mb'], '{:.3g}')} | {acc} | "
                   f"{agr} | {'; '.join(c['failures']) or 'meets'} |")
    out += ["", "Estimated rows are computed from published peak figures, not measured."]
    if any(c.get("baseline") for c in rec["candidates"]):
        out.append("PTQ baseline rows are not shipped: the final model's own FP32 export quantized after training "
                   "by onnxruntime's tools, measured like the other models.")
    out.append("")
    return "\n".join(out)


def load_summaries(run_dirs) -> list[dict]:
    out = []
    for d in map(Path, run_dirs):
        path = d / "manifest.json"
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise EdgekdError(f"{str(d)!r} has no manifest.json; give a run folder written by `edgekd run`.") from None
        except (OSError, ValueError) as e:
            raise EdgekdError(f"Cannot read {str(path)!r} ({e}); rebuild it with `edgekd report {d}`.") from None
    return out


def check_constraints(max_latency_ms: float | None, min_accuracy: float | None) -> None:
    if max_latency_ms is not None and not max_latency_ms > 0:
        raise EdgekdError(f"--max-latency-ms must be a positive number of milliseconds (got {max_latency_ms}).")
    if min_accuracy is not None and not 0 <= min_accuracy <= 100:
        raise EdgekdError(f"--min-accuracy must be a fraction (0.9) or a percentage (90) (got {min_accuracy}).")


def write_reports(run_dirs, out_html: Path, max_latency_ms: float | None = None,
                  min_accuracy: float | None = None) -> dict:
    """Write out_html, and next to it report-devices.md and report-devices.json; return their paths + recommendation."""
    check_constraints(max_latency_ms, min_accuracy)
    summaries = load_summaries(run_dirs)
    devices = device_info(profile_names(summaries))
    rec = recommend(summaries, max_latency_ms, normalize_accuracy(min_accuracy), devices)
    labels = run_labels(summaries)
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    md, js = out_html.with_name("report-devices.md"), out_html.with_name("report-devices.json")
    _write(out_html, render_html(summaries, max_latency_ms, min_accuracy, devices))
    _write(md, render_devices_markdown(rec, labels))
    write_json_atomic(js, {"edgekd_version": __version__, "runs": [{"label": lab, "folder": str(d)} for lab, d in
                                                                   zip(labels, run_dirs)],
                           "constraints": {"max_latency_ms": max_latency_ms, "min_accuracy": rec["min_accuracy"]},
                           "rule": rec["rule"], "recommendation": {k: rec[k] for k in ("qualified", "text", "choice")},
                           "qualifying": rec["qualifying"], "rows": rec["candidates"]})
    return {"html": out_html, "markdown": md, "json": js, "recommendation": rec}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")  # atomic: a reader never sees half a report
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
