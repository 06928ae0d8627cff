"""Unsafe inputs are refused without executing anything; numerical faults and Ctrl-C stop cleanly."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from conftest import reuse_stages, tiny_text_recipe
from edgekd.configs import TrainConfig
from edgekd.data.batching import Encoded
from edgekd.train.loop import fit
from edgekd.errors import TrainingFault


class _Payload:
    """Unpickling this runs `open(marker, 'w')` — the classic pickle code-execution gadget."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_malicious_pickle_checkpoint_is_refused_and_never_executed(tmp_path, tiny_bert_dir, text_data_dir):
    model_dir = tmp_path / "evil-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text((tiny_bert_dir / "config.json").read_text())
    marker = tmp_path / "pwned"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(str(marker))))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_text_recipe(model_dir, text_data_dir, tmp_path / "out")))
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "run", str(recipe)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "pickle" in proc.stderr and "pytorch_model.bin" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "out").exists()  # refused before any work


def test_trust_remote_code_is_off_by_default():
    from edgekd.configs import TeacherConfig

    assert TeacherConfig(path="x").trust_remote_code is False


def _toy(n=64):
    rng = np.random.default_rng(0)
    return Encoded(rng.integers(0, 2, n), images=rng.normal(size=(n, 4)).astype(np.float32))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    model = torch.nn.Linear(4, 2)
    calls = {"n": 0}

    def loss_fn(m, batch, idx, labels):
        calls["n"] += 1
        out = torch.nn.functional.cross_entropy(m(batch["pixel_values"]), labels)
        return out * float("nan") if calls["n"] == 5 else out

    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, checkpoint_every=2)
    with pytest.raises(TrainingFault, match=r"step 5.*(learning rate|lr)"):
        fit(model, _toy(), cfg, loss_fn, seed=0, desc="toy", work_dir=tmp_path)
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["position"]["step"] == 4  # the last good one, not overwritten by the faulty step


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, tiny_bert_dir, text_data_dir, text_run):
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "out")
    r["stages"] = [{"distill": {**r["stages"][0]["distill"], "epochs": 200, "checkpoint_every": 1000}}]
    reuse_stages(text_run[0] / "out", tmp_path / "out", ("teacher",))  # the session's teacher: only distillation runs
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(r))
    proc = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "run", str(recipe)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "EDGEKD_QUIET": "1"})
    deadline = time.time() + 300
    # the teacher's train logits are cached right before the distillation loop starts
    while time.time() < deadline and not list((tmp_path / "out" / "cache").glob("teacher-logits-train-*")):
        time.sleep(0.05)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted at step" in stderr and "Traceback" not in stderr
    ckpt = list((tmp_path / "out" / "work").glob("*/checkpoint/state.json"))
    assert ckpt and json.loads(ckpt[0].read_text())["position"]["step"] > 0


def test_recipe_names_cannot_leave_the_output_folder():
    from edgekd.errors import RecipeError
    from edgekd.recipe import validate_recipe

    r = tiny_text_recipe("t", "d", "o", name="../../etc/evil")
    with pytest.raises(RecipeError, match=r"name: String should match pattern"):
        validate_recipe(r)
