"""The one SIGKILL test: a two-process torchrun run (DDP with gloo) killed mid-distillation resumes from its
checkpoint and ends where an uninterrupted run ends. (One process resumes through the same checkpoints, which rank 0
writes: test_prune_budget stops and resumes a single-process run; test_safety_and_faults checks Ctrl-C's checkpoint.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import reuse_stages, tiny_text_recipe

# Figures of how the run went, not of what it learned: a resumed run differs here by design.
TIMING = ("wall_s", "examples_per_s", "steps_this_run")


def _recipe(tmp_path, teacher, data, out):
    r = tiny_text_recipe(teacher, data, out)
    # long enough to be killed between its first checkpoint and its end
    distill = {**r["stages"][0]["distill"], "epochs": 12, "checkpoint_every": 5}
    r["stages"] = [{"distill": distill}]
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def _run(recipe, processes: int):
    if processes == 1:
        cmd = [sys.executable, "-m", "edgekd", "run", str(recipe)]
    else:  # torch's own launcher, as a user runs it: torchrun --standalone --nproc_per_node=N -m edgekd run
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "edgekd", "run", str(recipe)]
    # a session of its own, so that SIGKILL can hit the launcher and every worker at once (as a node loss does)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "EDGEKD_QUIET": "1", "OMP_NUM_THREADS": "1"})


def _distill_metrics(out):
    m = json.loads((out / "manifest.json").read_text())
    metrics = next(s for s in m["stages"] if s["stage"] == "distill")["metrics"]
    return {**metrics, "train": {k: v for k, v in metrics["train"].items() if k not in TIMING}}


@pytest.mark.slow
def test_sigkill_of_a_torchrun_run_mid_distillation_then_rerun_matches_uninterrupted(tmp_path, tiny_bert_dir,
                                                                                      text_data_dir, text_run):
    processes = 2
    ref_out, killed_out = tmp_path / "ref", tmp_path / "killed"
    # the session run's teacher (the same key) is both runs' teacher: only distillation runs, is killed and resumed
    for out in (ref_out, killed_out):
        reuse_stages(text_run[0] / "out", out, ("teacher",))
    ref = _run(_recipe(tmp_path, tiny_bert_dir, text_data_dir, ref_out), processes)
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-3000:]
    proc = _run(_recipe(tmp_path, tiny_bert_dir, text_data_dir, killed_out), processes)
    # Wait until distillation has written a checkpoint, then kill -9 the launcher and every worker at once.
    deadline = time.time() + 300
    checkpoint = None
    while time.time() < deadline and proc.poll() is None:
        ckpts = list((killed_out / "work").glob("*/checkpoint/state.json")) if (killed_out / "work").is_dir() else []
        if ckpts:
            checkpoint = ckpts[0]
            break
        time.sleep(0.02)
    assert checkpoint is not None and proc.poll() is None, "distillation finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    step = json.loads(checkpoint.read_text())["position"]["step"]
    assert not [p for p in (killed_out / "stages").glob("*-distill-*") if not p.name.startswith(".tmp")], \
        "a half-written artifact was committed"

    resumed = _run(_recipe(tmp_path, tiny_bert_dir, text_data_dir, killed_out), processes)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    metrics = _distill_metrics(killed_out)
    assert 0 < step < metrics["train"]["steps"]
    assert metrics["train"]["processes"] == processes
    assert metrics == _distill_metrics(ref_out)  # the same weights, losses and accuracies as the uninterrupted run
    assert not list((killed_out / "stages").glob(".tmp-*"))  # the killed run's temporary folder is gone
