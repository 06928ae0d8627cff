"""Long work written to a file or a CI log still shows its progress, as plain lines with elapsed time and ETA."""
import io

from rich.console import Console

import edgekd.progress as progress_mod


def _redirected(monkeypatch) -> io.StringIO:
    sink = io.StringIO()
    monkeypatch.setattr(progress_mod, "console", Console(file=sink, force_terminal=False, width=200))
    monkeypatch.delenv("EDGEKD_QUIET", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    return sink


def test_redirected_progress_writes_a_line_each_tenth_with_eta(monkeypatch):
    sink = _redirected(monkeypatch)
    now = [0.0]
    lines = progress_mod._Lines(20, "distill", clock=lambda: now[0])
    for _ in range(20):  # 20 s per step: every tenth (2 steps) is 40 s after the one before
        now[0] += 20.0
        lines.advance(loss=0.25)
    out = sink.getvalue().splitlines()
    assert len(out) == 10, out
    assert out[0] == "distill: 10% (2/20) elapsed 0:00:40 eta 0:06:00 loss=0.25"
    assert out[-1].startswith("distill: 100% (20/20) elapsed 0:06:40 eta 0:00:00")


def test_short_work_writes_only_its_last_line(monkeypatch):
    sink = _redirected(monkeypatch)
    with progress_mod.progress(20, "eval") as advance:  # well under LINE_GAP_S
        for _ in range(20):
            advance()
    out = sink.getvalue().splitlines()
    assert len(out) == 1 and out[0].startswith("eval: 100% (20/20) elapsed 0:00:0")


def test_redirected_progress_reports_time_between_tenths_and_a_correct_eta(monkeypatch):
    sink = _redirected(monkeypatch)
    now = [0.0]
    lines = progress_mod._Lines(1000, "teacher", clock=lambda: now[0])
    for _ in range(50):  # 5% of the work, 2 s per step: no tenth crossed, but a minute passes
        now[0] += 2.0
        lines.advance()
    out = sink.getvalue().splitlines()
    assert len(out) == 1 and out[0].startswith("teacher: 3% (30/1000) elapsed 0:01:00 eta 0:32:20")


def test_quiet_progress_writes_nothing(monkeypatch):
    sink = _redirected(monkeypatch)
    monkeypatch.setenv("EDGEKD_QUIET", "1")
    with progress_mod.progress(10, "qat") as advance:
        for _ in range(10):
            advance()
    assert sink.getvalue() == ""
