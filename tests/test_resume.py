"""A run killed with SIGKILL mid-distillation resumes from its checkpoint and ends where an
uninterrupted run ends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import yaml

from conftest import tiny_text_recipe


def _recipe(tmp_path, teacher, data, out):
    r = tiny_text_recipe(teacher, data, out)
    distill = {**r["stages"][0]["distill"], "epochs": 30, "checkpoint_every": 10}
    r["stages"] = [{"distill": distill}]
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def _run(recipe):
    return subprocess.Popen([sys.executable, "-m", "edgekd.cli", "run", str(recipe)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EDGEKD_QUIET": "1"})


def _distill_metrics(out):
    m = json.loads((out / "manifest.json").read_text())
    return next(s for s in m["stages"] if s["stage"] == "distill")["metrics"]


def test_sigkill_mid_distillation_then_rerun_matches_uninterrupted(tmp_path, tiny_bert_dir, text_data_dir):
    ref_out, killed_out = tmp_path / "ref", tmp_path / "killed"
    ref = _run(_recipe(tmp_path, tiny_bert_dir, text_data_dir, ref_out))
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-2000:]

    proc = _run(_recipe(tmp_path, tiny_bert_dir, text_data_dir, killed_out))
    # Wait until the teacher is committed and distillation has written a checkpoint, then kill -9.
    deadline = time.time() + 300
    checkpoint = None
    while time.time() < deadline and proc.poll() is None:
        stages = list((killed_out / "stages").glob("*-teacher-*")) if (killed_out / "stages").is_dir() else []
        ckpts = list((killed_out / "work").glob("*/checkpoint/state.json")) if (killed_out / "work").is_dir() else []
        if stages and ckpts:
            checkpoint = ckpts[0]
            break
        time.sleep(0.02)
    assert checkpoint is not None and proc.poll() is None, "distillation finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = json.loads(checkpoint.read_text())["position"]["step"]
    assert not [p for p in (killed_out / "stages").glob("*-distill-*") if not p.name.startswith(".tmp")], \
        "a half-written artifact was committed"

    resumed = _run(_recipe(tmp_path, tiny_bert_dir, text_data_dir, killed_out))
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    assert 0 < step < _distill_metrics(killed_out)["train"]["steps"]
    assert _distill_metrics(killed_out) == _distill_metrics(ref_out)
    assert not list((killed_out / "stages").glob(".tmp-*"))  # the killed run's temporary folder is gone
