"""The training engine: devices, mixed precision, length-bucketed batches, throughput figures,
the distiller, and the house rules (no import cycles, `python -m edgekd`)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.configs import KDConfig, TrainConfig
from edgekd.data.batching import Encoded, batch_indices, bucketed_batches
from edgekd.errors import EdgekdError
from edgekd.train.distiller import Distiller, Teacher
from edgekd.train.loop import epoch_batches, fit
from edgekd.train.losses import LogitKD, logit_kd_loss
from edgekd.train.runtime import Runtime, resolve_device

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch here)")


class TinyText(nn.Module):
    def __init__(self, vocab=50, dim=16, labels=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, labels)

    def forward(self, input_ids, attention_mask):
        x = self.emb(input_ids) * attention_mask[..., None]
        return self.out(torch.relu(self.fc(x.sum(1) / attention_mask.sum(1, keepdim=True))))


def _data(n=96, seed=0) -> Encoded:
    rng = np.random.default_rng(seed)
    ids = [list(rng.integers(1, 50, rng.integers(2, 40))) for _ in range(n)]
    labels = np.array([int(x[0] > 25) for x in ids])
    return Encoded(labels, ids=ids)


def _ce(m, batch, idx, labels):
    return nn.functional.cross_entropy(m(**batch), labels)


def test_ctrl_c_during_an_epochs_dev_scoring_still_leaves_a_checkpoint(tmp_path):
    """Ctrl-C sets a flag the loop reads after the step; when it lands while the epoch's dev split is scored (after
    that step's checkpoint chance), the loop still saves before it stops, as its message says."""
    import json
    import os
    import signal

    from edgekd.errors import Interrupted

    scored = []

    def select(model):
        scored.append(1)
        if len(scored) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, during the first epoch's scoring
        return 0.5

    with pytest.raises(Interrupted, match="interrupted at step 12/36; a checkpoint was saved"):
        fit(TinyText(), _data(96), TrainConfig(epochs=3, batch_size=8, lr=1e-3, checkpoint_every=1000), _ce, seed=0,
            desc="t", work_dir=tmp_path, select=select)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["position"]["step"] == 12


# ---------------------------------------------------------------------------------------- devices
def test_device_settings_resolve_or_fail_clearly(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(EdgekdError, match="no CUDA GPU"):
            resolve_device("cuda")
        with pytest.raises(EdgekdError, match="no CUDA GPU"):
            resolve_device("cuda:1")
    with pytest.raises(EdgekdError, match="fp16 needs a GPU"):
        Runtime.from_settings("cpu", "fp16")


def test_recipe_device_and_precision_are_validated():
    from conftest import tiny_image_recipe
    from edgekd.errors import RecipeError
    from edgekd.recipe import validate_recipe

    r = validate_recipe({**tiny_image_recipe("o"), "device": "cuda:0", "precision": False})  # YAML's bare `no`
    assert (r.device, r.precision) == ("cuda:0", "no")
    with pytest.raises(RecipeError, match="device"):
        validate_recipe({**tiny_image_recipe("o"), "device": "gpu"})
    with pytest.raises(RecipeError, match="precision"):
        validate_recipe({**tiny_image_recipe("o"), "precision": "int8"})


def test_bf16_mixed_precision_trains_on_the_cpu_and_writes_float32_weights(tmp_path):
    from edgekd.models.spec import save_weights
    from edgekd.quantize.fakequant import convert, set_mode

    torch.manual_seed(0)
    model = TinyText()
    convert(model, ["fc", "out"], "uint8")  # fake-quant layers get bf16 inputs under autocast
    set_mode(model, "train")
    rt = Runtime(torch.device("cpu"), precision="bf16")
    stats = fit(model, _data(), TrainConfig(epochs=2, batch_size=16, lr=1e-2), _ce, seed=0, desc="bf16", runtime=rt)
    assert stats["precision"] == "bf16" and np.isfinite(stats["final_loss"])
    save_weights(model, tmp_path)
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(tmp_path / "model.safetensors")).values()} <= {torch.float32}


def test_fit_records_throughput_device_and_processes():
    stats = fit(TinyText(), _data(), TrainConfig(epochs=1, batch_size=16), _ce, seed=0, desc="t")
    assert stats["device"] == "cpu" and stats["processes"] == 1 and stats["precision"] == "no"
    assert stats["examples_per_s"] > 0 and stats["wall_s"] > 0 and stats["steps"] == stats["steps_this_run"] == 6
    assert 0 <= stats["padding_share"] < 0.5


# ---------------------------------------------------------------------------------------- batches
def test_length_bucketing_covers_every_example_once_and_cuts_padding():
    data = _data(1000, seed=1)
    lengths = data.lengths

    def pad(batches):
        return 1 - sum(lengths[b].sum() for b in batches) / sum(len(b) * lengths[b].max() for b in batches)

    bucketed = bucketed_batches(lengths, 16, np.random.default_rng(0))
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(1000))
    plain = batch_indices(1000, 16, shuffle=True, rng=np.random.default_rng(0))
    assert pad(bucketed) < pad(plain) / 3
    again = bucketed_batches(lengths, 16, np.random.default_rng(0))
    assert all((a == b).all() for a, b in zip(bucketed, again))  # every process builds the same batches


def test_global_batches_do_not_depend_on_the_number_of_processes():
    data = _data(100)
    one = epoch_batches(data, 10, seed=3, epoch=0, world_size=1)
    two = epoch_batches(data, 10, seed=3, epoch=0, world_size=2)
    assert all((a == b).all() for a, b in zip(one, two))
    shards = [Runtime(torch.device("cpu"), world_size=2, rank=r).shard(one[0]) for r in (0, 1)]
    assert sorted(np.concatenate(shards).tolist()) == sorted(one[0].tolist())


def test_batch_smaller_than_the_processes_is_refused():
    with pytest.raises(EdgekdError, match="batch_size 1 is smaller than the 2 processes"):
        fit(TinyText(), _data(), TrainConfig(batch_size=1), _ce, seed=0, desc="t",
            runtime=Runtime(torch.device("cpu"), world_size=2, rank=0))


# ---------------------------------------------------------------------------------------- distiller
def test_default_distiller_is_alpha_weighted_logit_kd_plus_ce():
    torch.manual_seed(0)
    teacher = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    cfg = KDConfig(temperature=3.0, alpha=0.7)
    student = nn.Linear(4, 3)
    x = torch.randn(8, 4)
    labels = torch.randint(0, 3, (8,))
    idx = np.arange(8)
    got = Distiller.from_config(cfg, teacher).loss(lambda **b: student(b["x"]), {"x": x}, idx, labels)
    want = logit_kd_loss(student(x), torch.from_numpy(teacher), labels, 3.0, 0.7)
    assert torch.allclose(got, want)


def test_two_identical_teachers_give_the_same_soft_targets_as_one():
    logits = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    one = Distiller([Teacher(logits)], [(1.0, LogitKD(1.0))]).teacher_outputs(np.arange(5), torch.device("cpu"))
    two = Distiller([Teacher(logits, 1.0), Teacher(logits, 3.0)], [(1.0, LogitKD(1.0))]).teacher_outputs(
        np.arange(5), torch.device("cpu"))
    assert torch.allclose(torch.softmax(one.logits, -1), torch.softmax(two.logits, -1), atol=1e-6)


# ---------------------------------------------------------------------------------------- CUDA
@needs_cuda
def test_cuda_training_with_fake_quant_then_the_artifact_loads_on_the_cpu(tmp_path):
    from edgekd.models.spec import save_weights
    from edgekd.quantize.fakequant import convert, set_mode

    model = TinyText()
    convert(model, ["fc", "out"], "uint8")
    set_mode(model, "train")
    rt = Runtime.from_settings("cuda", "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    stats = fit(model, _data(), TrainConfig(epochs=2, batch_size=16, checkpoint_every=3), _ce, seed=0, desc="cuda",
                runtime=rt, work_dir=tmp_path / "work")
    assert stats["device"].startswith("cuda") and np.isfinite(stats["final_loss"])
    set_mode(model, "frozen")
    save_weights(model, tmp_path)
    cpu = TinyText()
    convert(cpu, ["fc", "out"], "uint8")
    set_mode(cpu, "frozen")
    from safetensors.torch import load_model

    load_model(cpu, str(tmp_path / "model.safetensors"))
    batch = _data(8).batch(np.arange(8))
    with torch.no_grad():
        gpu_out = model.float()(**{k: v.cuda() for k, v in batch.items()}).cpu()
        assert torch.allclose(cpu(**batch), gpu_out, atol=1e-3)


# ---------------------------------------------------------------------------------------- the house
def _import_graph(package: str = "edgekd") -> dict[str, set[str]]:
    """A package's units (a subpackage or a top-level module) and the units each imports, inside functions too."""
    pkg = ROOT / package
    edges: dict[str, set[str]] = {}
    for path in pkg.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("").parts
        mod = list(rel[:-1]) if rel[-1] == "__init__" else list(rel)
        if len(mod) < 2:
            continue
        here = path.parent.relative_to(ROOT).parts
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = list(here[: len(here) - node.level + 1]) if node.level else []
                target = base + (node.module.split(".") if node.module else [])
                targets = [".".join(target + ([a.name] if not node.module else [])) for a in node.names]
            for t in targets:
                parts = t.split(".")
                if parts[0] == package and len(parts) > 1 and parts[1] != mod[1]:
                    edges.setdefault(mod[1], set()).add(parts[1])
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(u: str, stack: list[str]) -> bool:
        state[u] = 1
        for v in edges.get(u, ()):
            if state.get(v) == 1:
                cycle.extend(stack[stack.index(v):] + [u, v] if v in stack else [u, v])
                return True
            if state.get(v) is None and visit(v, stack + [u]):
                return True
        state[u] = 2
        return False

    any(visit(u, []) for u in list(edges) if state.get(u) is None)
    return cycle


def test_no_import_cycle_between_edgekd_units():
    edges = _import_graph()
    assert edges["train"] and "train" in edges["distill"]  # the graph is really read
    assert not _cycle(edges), f"import cycle: {' -> '.join(_cycle(edges))}"


def test_no_import_cycle_between_benchmark_modules_and_no_sys_path_edits():
    """benchmarks/ is a package run as `python -m benchmarks.NAME`: shared code in stats.py and machine.py, no
    cycle, and no module reaches around the import system."""
    edges = _import_graph("benchmarks")
    assert "stats" in edges["sst2"] and "sst2" in edges["accuracy_intervals"]  # the graph is really read
    assert not _cycle(edges), f"import cycle: {' -> '.join(_cycle(edges))}"
    assert _cycle({"a": {"b"}, "b": {"a"}})  # and a cycle would be found
    edits = [p.name for p in (ROOT / "benchmarks").glob("*.py") if "sys.path" in p.read_text(encoding="utf-8")]
    assert edits == []


def test_stages_never_import_each_other():
    """Stages that train call train/, never each other; export and profile (one layer up, DESIGN.md) may use
    what a training stage made (e.g. quantize's fake-quant switch) but not each other."""
    edges = _import_graph()
    layers = [{"teacher", "distill", "prune", "quantize"}, {"export", "profile"}]
    for i, layer in enumerate(layers):
        above = set().union(*layers[i + 1:]) if i + 1 < len(layers) else set()
        for unit in layer:
            assert not (edges.get(unit, set()) & (layer | above) - {unit}), (unit, edges.get(unit))


def test_python_dash_m_edgekd_works():
    proc = subprocess.run([sys.executable, "-m", "edgekd", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "run" in proc.stdout and "export" in proc.stdout


def test_teacher_logits_of_a_subset_and_of_the_whole_split_are_cached_apart(tmp_path, tiny_bert_dir, text_data_dir,
                                                                              monkeypatch):
    """A run that reads the teacher's outputs on the first n train examples and then, in a later process, on the
    whole split gets the whole split: each request has its own cache file."""
    from types import SimpleNamespace

    from conftest import tiny_text_recipe
    from edgekd.recipe import validate_recipe
    from edgekd.train import predict
    from edgekd.train.context import Context

    predicted = []

    def fake_predict(model, data, desc=None, runtime=None):
        predicted.append(len(data))
        return np.tile(np.arange(len(data), dtype=np.float32)[:, None], (1, 2))

    monkeypatch.setattr(predict, "predict_logits", fake_predict)
    recipe = validate_recipe(tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run"))

    def context() -> Context:
        ctx = Context(recipe, tmp_path / "run", teacher=SimpleNamespace(id="t0", path=tiny_bert_dir))
        monkeypatch.setattr(ctx, "teacher_model", lambda teacher=None: None)
        return ctx

    assert context().teacher_logits("train", 5).shape == (5, 2)
    whole = len(context().data.train)
    assert whole > 5 and context().teacher_logits("train").shape == (whole, 2)
    assert predicted == [5, whole]
    assert context().teacher_logits("train", 5).shape == (5, 2) and predicted == [5, whole]  # both read back
