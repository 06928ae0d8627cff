"""Device report: recommendation rule on synthetic summaries, the HTML/MD/JSON files, and the
HTML as a real browser renders it (headless Chromium: skipped where it is not installed, a failure on CI)."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.report.html import render_html, write_reports
from edgekd.report.recommend import candidates, device_class, pareto, recommend

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _measured(p50, peak=20.0):
    return {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "mean": p50, "std": 0.01, "peak_memory_mb": peak,
            "session_create_ms": 5.0, "spread": 0.1, "runs": 100}


def _system(acc, size, lat):
    return {"accuracy": acc, "agreement": 0.99, "size_mb": size, "params": int(size * 250_000), "latency_ms": lat}


def summary(name="quick", estimated_pi=True, compat=None, op_breakdown=True, anchored=True):
    """teacher (big, accurate, slow), final-fp32 and final (small); host measured, a Pi estimated (anchored to a
    published measurement with ±12%, or unanchored)."""
    def lat(host_ms, pi_ms):
        out = {"host-cpu": {"t1": _measured(host_ms), "t2": _measured(host_ms * 0.6)}}
        if estimated_pi:
            out["rpi4"] = {"t1": {"p50": pi_ms, "estimated": True, "estimator_error": 0.12 if anchored else None,
                                  "anchored": anchored}}
        return out
    s = {"name": name, "task": "image-classification", "edgekd_version": "test",
         "systems": {"teacher-fp32": _system(0.97, 0.45, lat(2.0, 30.0)),
                     "final-fp32": _system(0.96, 0.20, lat(0.30, 4.0)),
                     "final": _system(0.955, 0.06, lat(0.12, 1.5))}}
    if compat is not None:
        s["compat"] = compat
    if op_breakdown:
        s["op_breakdown"] = {"ConvInteger": 0.05, "MatMulInteger": 0.03, "DequantizeLinear": 0.01, "Relu": 0.004}
        s["estimators"] = {"rpi4": {"estimator_error": 0.12 if anchored else None, "anchored": anchored,
                                    "anchor": "MobileBERT on a Pixel 4: published 74 ms, estimated 66 ms",
                                    "host_estimator_error": 0.2}}
    return s


DEVICES = {"host-cpu": {"description": "This machine's CPU", "execution_provider": "CPUExecutionProvider"},
           "rpi4": {"description": "Raspberry Pi 4", "execution_provider": "CPUExecutionProvider"}}


def test_device_classes_follow_the_documented_order():
    assert device_class("pixel7-cpu")[1] == "phone CPU"
    assert device_class("rpi4")[1] == "Raspberry Pi / SBC"
    assert device_class("phone-npu", {"execution_provider": "QNNExecutionProvider"})[1] == "NPU"
    assert device_class("host-cpu")[1] == "x86 server"
    assert [device_class(n)[0] for n in ("pixel7-cpu", "rpi4", "hexagon-npu", "xeon")] == [0, 1, 2, 3]


def test_pareto_keeps_only_undominated_points():
    pts = [(1.0, 90.0), (2.0, 95.0), (3.0, 94.0), (0.5, 80.0), (2.0, 93.0)]
    assert pareto(pts) == [3, 0, 1]


def test_cheapest_qualifying_device_then_smallest_model():
    # The Pi is cheaper than the host; on it, final (0.06 MB) fits 2 ms with its error bar (1.5 x 1.12).
    rec = recommend([summary()], max_latency_ms=2.0, min_accuracy=0.95, devices=DEVICES)
    assert rec["qualified"] and rec["choice"]["device"] == "rpi4" and rec["choice"]["model"] == "final"
    assert rec["choice"]["estimated"] and "estimated" in rec["text"] and "not measured" in rec["text"]
    # Accepts a percentage as well as a fraction; a higher minimum forces the bigger model.
    rec = recommend([summary()], max_latency_ms=5.0, min_accuracy=96, devices=DEVICES)
    assert (rec["choice"]["device"], rec["choice"]["model"]) == ("rpi4", "final-fp32")


def test_estimated_latency_must_fit_with_its_error_bar():
    # 1.5 ms estimated ±12% -> 1.68 ms: over a 1.6 ms limit, so the measured host wins.
    rec = recommend([summary()], max_latency_ms=1.6, min_accuracy=0.95, devices=DEVICES)
    assert rec["choice"]["device"] == "host-cpu" and not rec["choice"]["estimated"]
    pi_final = next(c for c in rec["candidates"] if c["device"] == "rpi4" and c["model"] == "final")
    assert any("estimated p50 with its error bar" in f for f in pi_final["failures"])


def test_an_unanchored_estimate_never_ranks_above_a_measured_device():
    # the same cheaper Pi, but no published measurement says how far its estimates are off
    rec = recommend([summary(anchored=False)], max_latency_ms=2.0, min_accuracy=0.95, devices=DEVICES)
    assert rec["choice"]["device"] == "host-cpu" and not rec["choice"]["estimated"]
    pi = next(c for c in rec["candidates"] if c["device"] == "rpi4" and c["model"] == "final")
    assert pi["unanchored"] and pi["estimator_error"] is None and not pi["failures"]
    # a run from before anchors: its host estimator error is not the device's, so the estimate is unanchored
    old = summary()
    old["systems"]["final"]["latency_ms"]["rpi4"]["t1"].pop("anchored")
    assert recommend([old], max_latency_ms=2.0, min_accuracy=0.95, devices=DEVICES)["choice"]["device"] == "host-cpu"
    page = render_html([summary(anchored=False)], 2.0, 0.95, devices=DEVICES)
    assert "unanchored estimate" in page and "estimated ±" not in page


def test_none_qualifies_shows_the_closest_candidate():
    rec = recommend([summary()], max_latency_ms=0.05, min_accuracy=0.99, devices=DEVICES)
    assert not rec["qualified"] and rec["qualifying"] == 0
    assert rec["text"].startswith("No device and model meet the constraints. Closest candidate:")
    assert rec["choice"]["label"] == "quick/final" and rec["choice"]["device"] == "host-cpu"


def test_incompatible_device_does_not_qualify_and_cost_usd_overrides_class():
    compat = {"rpi4": {"ok": False, "unsupported_ops": ["ConvInteger"], "fallback_nodes_share": 0.2}}
    rec = recommend([summary(compat=compat)], max_latency_ms=10, devices=DEVICES)
    assert rec["choice"]["device"] == "host-cpu"
    priced = {"host-cpu": {**DEVICES["host-cpu"], "cost_usd": 20}, "rpi4": {**DEVICES["rpi4"], "cost_usd": 75}}
    assert recommend([summary()], max_latency_ms=10, devices=priced)["choice"]["device"] == "host-cpu"


def test_missing_optional_keys_are_tolerated():
    s = summary(estimated_pi=False, op_breakdown=False)
    s["systems"]["final"]["latency_ms"]["host-cpu"] = {"seq128_t1": _measured(0.2), "natural_t1": {"p50": 0.1}}
    assert {c["case"] for c in candidates([s, {"name": "empty"}])} == {"t1", "seq128_t1"}
    page = render_html([s, {"name": "empty"}], None, None, devices={})
    assert "No compatibility checks" in page and "No per-operator breakdown" in page
    page = render_html([{}], None, None, devices={})  # a run that never reached the profile stage
    assert "No candidate" in page and "No latency data" in page


def test_npu_builds_show_where_the_vendors_compiler_placed_them_and_what_the_htp_computes():
    htp = {"checked": True, "htp_arch": 75, "soc_model": 57, "by": "onnxruntime-qnn 2.7.0", "examples": 60,
           "accuracy": 0.9, "pytorch_accuracy": 0.91, "argmax_agreement": 0.983, "npu_fallback": "allow",
           "placement": {"htp_nodes": 160, "cpu_nodes": 1, "partitions": 2, "cpu_ops": {"Gather": 1},
                         "rejected": [{"node": "/emb/Gather", "op": "Gather", "reason": "QNN error 3110"}]}}
    s = summary()
    s["device_models"] = {"hexagon-npu": {"file": "devices/hexagon-npu/model.onnx", "htp": htp},
                          "other-npu": {"htp": {"checked": False, "reason": "onnxruntime-qnn is not installed"}}}
    page = render_html([s], None, None, devices={})
    assert "1 on the CPU</span>, 160 nodes in 2 HTP partition(s)" in page and "/emb/Gather (Gather: QNN error 3110)" in page
    assert "90.00%" in page and "98.30%" in page and "onnxruntime-qnn is not installed" in page
    assert "No NPU builds" in render_html([summary()], None, None, devices={})


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_html_is_self_contained_with_pareto_plots_and_recommendation():
    compat = {"rpi4": {"ok": True, "unsupported_ops": [], "fallback_nodes_share": 0.0, "fallback_flops_share": 0.0}}
    page = render_html([summary(compat=compat), summary("other")], 2.0, 0.95, devices=DEVICES)
    imgs = _pngs(page)
    assert len(imgs) == 2 + 2 and all(b.startswith(PNG_MAGIC) for b in imgs)  # 2 devices, 2 op breakdowns
    assert "Pareto" in page and 'id="recommendation"' in page
    assert "Recommended: model other/final on rpi4" in page  # two identical runs: the tie goes by label
    assert "estimated ±12%" in page and "Pixel 4: published 74 ms" in page and "compatible" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_budget_pruning_steps_get_a_table_and_a_plot():
    steps = [{"step": 1, "ratio": 0.29, "non_embedding_params": 2_600_000, "latency_ms": 7.9,
              "dev_accuracy_before_recovery": 0.930, "dev_accuracy": 0.9385},
             {"step": 2, "ratio": 0.28, "non_embedding_params": 1_840_000, "latency_ms": 5.3,
              "macs": 350_000_000, "onnx_fp32_mb": 55.1, "int8_dynamic_latency_ms": 2.4,
              "architecture": {"hidden": 320, "heads_per_layer": [8, 3], "ffn_per_layer": [368, 1120]},
              "dev_accuracy_before_recovery": 0.908, "dev_accuracy": 0.933}]
    s = summary(op_breakdown=False)
    s["stages"] = [{"stage": "prune", "metrics": {"steps": steps, "non_embedding_params_before": 3_700_000,
                                                  "budget": {"latency_ms": 5.0, "reached": 5.3, "off_by": 0.06,
                                                             "case": "batch 1, sequence 128, 1 thread"}}}]
    page = render_html([s], devices=DEVICES)
    section = page[page.index("<h2>Pruning steps</h2>"):page.index("<h2>Compatibility")]
    assert "Latency budget 5 ms: measured on the host 5.3 ms (+6.0%) at batch 1, sequence 128, 1 thread" in section
    assert ("<td>1,840,000</td><td>49.7%</td><td>350.0M</td><td>55.1</td><td>5.3</td><td>2.4</td>"
            "<td>hidden 320 · heads [8, 3] · FFN [368, 1120]</td><td>90.80</td><td>93.30</td>") in section
    # a step without MACs or INT8 timing (an older run): dashes, not an error
    assert "<td>2,600,000</td><td>70.3%</td><td>—</td><td>—</td><td>7.9</td><td>—</td>" in section
    assert len(_pngs(section)) == 1 and _pngs(section)[0].startswith(PNG_MAGIC)
    assert "No budget pruning" in render_html([summary()], devices=DEVICES)


def test_write_reports_writes_html_markdown_and_json(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(summary()))
    res = write_reports([run], tmp_path / "out" / "report.html", 2.0, 95)
    assert res["html"].is_file() and res["markdown"].name == "report-devices.md"
    md = res["markdown"].read_text()
    assert "Recommended: model quick/final on rpi4" in md  # rpi4 has no profile file: classed by its name
    assert "(estimated)" in md
    data = json.loads(res["json"].read_text())
    assert data["constraints"] == {"max_latency_ms": 2.0, "min_accuracy": 0.95}
    assert data["recommendation"]["qualified"] and any(r["estimated"] for r in data["rows"])


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")  # the values .ci/run treats as CI too


def find_chromium() -> Path:
    """The browser on PATH. Missing: a skip on a developer's machine, a failure on CI (CI=true),
    where a skipped rendering test would pass unnoticed."""
    found = shutil.which("chromium")
    if found:
        return Path(found)
    if on_ci():
        pytest.fail("chromium is not on PATH and CI=true: the HTML rendering test must run on CI "
                    "(.ci/run installs it: apt-get install chromium)")
    pytest.skip("chromium is not on PATH (apt-get install chromium); under CI=true this fails instead")


def test_missing_browser_fails_on_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        find_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not on PATH"):
        find_chromium()


def _stub_path(tmp_path: Path) -> Path:
    """A PATH with no chromium, an apt-get that fails and a make that succeeds (.ci/run's only tools)."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, status in (("apt-get", 1), ("make", 0)):
        (stubs / name).write_text(f"#!/bin/sh\nexit {status}\n")
        (stubs / name).chmod(0o755)
    (stubs / "dirname").symlink_to(shutil.which("dirname"))
    return stubs


@pytest.mark.parametrize("ci, status", [("true", 1), ("", 0)])
def test_ci_script_fails_when_chromium_cannot_be_installed_on_ci(tmp_path, ci, status):
    env = {"PATH": str(_stub_path(tmp_path)), "CI": ci, "HOME": str(tmp_path)}
    proc = subprocess.run(["/bin/bash", str(REPO / ".ci" / "run")], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == status, proc.stderr
    assert ("error: chromium could not be installed" in proc.stderr) == (status == 1)


@pytest.mark.slow
def test_headless_chromium_renders_the_plots_and_recommendation(tmp_path):
    chromium = find_chromium()
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(summary()))
    report = write_reports([run], tmp_path / "report.html", 2.0, 0.95)["html"]
    # A copy with a probe script: after load, each <img> records whether the browser decoded it.
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace(
        "</body>", "<script>for (const i of document.images) i.dataset.decoded = "
                   "(i.complete && i.naturalWidth > 0) ? i.naturalWidth : 'no';</script></body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    proc = subprocess.run([str(chromium), *flags, "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert "<img" in dom, proc.stderr[-2000:]
    imgs = re.findall(r"<img[^>]*>", dom)
    assert len(imgs) == 3  # 2 Pareto plots (host, Pi) + 1 operator breakdown
    for tag in imgs:
        src = re.search(r'src="data:image/png;base64,([^"]+)"', tag).group(1)
        assert base64.b64decode(src).startswith(PNG_MAGIC)
        assert re.search(r'data-decoded="\d+"', tag), tag[:80] + "… was not decoded by the browser"
        assert 'alt="' in tag
    assert "Recommended: model quick/final on rpi4" in dom and "Pareto" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([str(chromium), *flags, "--window-size=1280,2400", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.read_bytes().startswith(PNG_MAGIC)
    if os.environ.get("EDGEKD_SCREENSHOT_DIR"):  # for a human to look at the rendering after the run
        shutil.copy(shot, Path(os.environ["EDGEKD_SCREENSHOT_DIR"]) / "report-screenshot.png")


def test_device_info_reads_cost_fields_from_profile_files(tmp_path, monkeypatch):
    from edgekd.report.recommend import device_info

    (tmp_path / "board.yaml").write_text("name: board\ndescription: a Raspberry Pi 5\ncost_usd: 80\n")
    monkeypatch.setenv("EDGEKD_PROFILES_DIR", str(tmp_path))
    info = device_info(["board", "missing"])
    assert info["board"]["cost_usd"] == 80 and device_class("board", info["board"])[1] == "Raspberry Pi / SBC"
    assert info["missing"]["cost_usd"] is None


def test_cli_rejects_bad_constraints_with_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "report", str(tmp_path), "--min-accuracy", "150"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--min-accuracy" in proc.stderr
