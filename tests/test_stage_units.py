"""Unit tests of the stage internals on tiny random models."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from transformers import BertConfig, BertForSequenceClassification

from edgekd.data.batching import Encoded
from edgekd.train.losses import logit_kd_loss
from edgekd.errors import EdgekdError
from edgekd.export.onnx_export import export_onnx
from edgekd.export.validate import validate_export
from edgekd.quantize.fakequant import QuantLinear, convert, quantizable_modules, set_mode


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=2, attn_implementation="eager")
    return BertForSequenceClassification(cfg).eval()


def encoded(n=40, seed=0):
    rng = np.random.default_rng(seed)
    ids = [list(rng.integers(5, 50, rng.integers(3, 12))) for _ in range(n)]
    return Encoded(np.zeros(n, dtype=np.int64), ids=ids)


def quantized_bert(qmax=127):
    model = tiny_bert()
    names = quantizable_modules(model)
    convert(model, names, "uint8", weight_qmax=qmax)
    set_mode(model, "calibrate")
    data = encoded()
    with torch.no_grad():
        model(**data.batch(np.arange(len(data))))
    for n in names:
        model.get_submodule(n).freeze(n)
    return model, names


def first_linear(names: list[str]) -> str:
    return next(n for n in names if "embeddings" not in n)  # embedding tables come first and have no input range


# ------------------------------------------------------------------ distillation loss
def test_kd_loss_is_zero_for_identical_soft_targets_and_matches_formula():
    s = torch.tensor([[2.0, -1.0, 0.5]])
    y = torch.tensor([0])
    assert logit_kd_loss(s, s.clone(), y, temperature=3.0, alpha=1.0).item() == pytest.approx(0.0, abs=1e-7)
    t = torch.tensor([[0.0, 1.0, 0.0]])
    T, a = 2.0, 0.7
    p_t = torch.softmax(t / T, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / T, -1))).sum()
    expected = a * T * T * kl + (1 - a) * torch.nn.functional.cross_entropy(s, y)
    assert logit_kd_loss(s, t, y, T, a).item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------ QAT
@pytest.mark.parametrize("qmax", [127, 63])
def test_frozen_weights_lie_on_the_per_channel_int_grid(qmax):
    model, names = quantized_bert(qmax)
    layer = model.get_submodule(first_linear(names))
    w = layer._quant_weight().detach()
    levels = w / layer.w_scale[:, None]
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.abs().max() <= qmax + 1e-3
    assert levels.abs().max() >= qmax - 1e-3  # the range is used fully (max |w| maps to qmax)


def test_activation_fake_quant_uses_uint8_with_zero_exact():
    model, names = quantized_bert()
    layer = model.get_submodule(first_linear(names))
    scale, zp = layer.act_qparams()
    assert 0 <= zp <= 255 and scale > 0
    x = torch.tensor([0.0, float(layer.act_max) * 0.5])
    y = layer._quant_input(x)
    assert y[0].item() == 0.0  # padding zeros stay exactly zero


def test_collapsed_activation_range_is_refused_with_the_layer_name():
    layer = torch.nn.Linear(4, 3)
    convert(torch.nn.Sequential(layer), ["0"], "uint8")
    assert isinstance(layer, QuantLinear)
    set_mode(layer, "calibrate")
    layer(torch.ones(2, 4))  # constant input: min == max
    with pytest.raises(EdgekdError, match=r"layer 'dense_x'.*collapsed"):
        layer.freeze("dense_x")


# ------------------------------------------------------------------ export
def test_qat_export_has_qdq_int8_weights_dynamic_axes_and_agrees(tmp_path):
    model, names = quantized_bert(qmax=63)
    inputs = {"input_ids": torch.full((1, 8), 7), "attention_mask": torch.ones(1, 8, dtype=torch.long)}
    facts = export_onnx(model, inputs, tmp_path / "m.onnx", 17)
    g = onnx.load(str(tmp_path / "m.onnx"))
    ops = [n.op_type for n in g.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert facts["quantized_weights"] == len(names)
    int8 = [i for i in g.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) == len(names)
    # the float copies of quantized weights are gone
    assert all(i.name.endswith("_quantized") or numpy_helper.to_array(i).ndim < 2 or "embeddings" in i.name
               for i in g.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for b, s in ((1, 5), (3, 17)):  # dynamic batch and sequence
        out = sess.run(None, {"input_ids": np.full((b, s), 9, np.int64), "attention_mask": np.ones((b, s), np.int64)})[0]
        assert out.shape == (b, 2)
    report = validate_export(model, tmp_path / "m.onnx", encoded(), 0.99, ["input_ids", "attention_mask"])
    assert report["failures"] == [] and report["argmax_agreement"] >= 0.99


def test_validation_reports_typed_failures_when_models_disagree(tmp_path):
    a, b = tiny_bert(0), tiny_bert(1)
    inputs = {"input_ids": torch.full((1, 8), 7), "attention_mask": torch.ones(1, 8, dtype=torch.long)}
    export_onnx(b, inputs, tmp_path / "other.onnx", 17)
    report = validate_export(a, tmp_path / "other.onnx", encoded(200), 0.99, ["input_ids", "attention_mask"])
    kinds = {f["type"] for f in report["failures"]}
    assert "argmax_agreement" in kinds
    assert report["argmax_agreement"] < 0.99


def test_static_shape_export_fixes_every_input_dimension(tmp_path):
    model, _ = quantized_bert()
    inputs = {"input_ids": torch.full((1, 24), 7), "attention_mask": torch.ones(1, 24, dtype=torch.long)}
    export_onnx(model, inputs, tmp_path / "s.onnx", 17, static_shapes=True)
    g = onnx.load(str(tmp_path / "s.onnx"))
    for inp in g.graph.input:
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims == [1, 24], (inp.name, dims)  # NPUs need every dimension known


def test_a_layers_student_without_layers_keeps_every_other_teacher_layer_ending_with_the_last():
    from edgekd.configs import StudentConfig
    from edgekd.models.students import build_student, half_depth_layers

    assert half_depth_layers(6) == [1, 3, 5] and half_depth_layers(12) == [1, 3, 5, 7, 9, 11]
    assert half_depth_layers(5) == [0, 2, 4] and half_depth_layers(2) == [1] and half_depth_layers(1) == [0]
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=4,
                                                       num_attention_heads=4, intermediate_size=64)).eval()
    student, _ = build_student(StudentConfig(kind="layers"), teacher, {"family": "hf"}, "text-classification", 2)
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    for kept, source in zip(student.bert.encoder.layer, (1, 3)):
        assert torch.equal(kept.output.dense.weight, teacher.bert.encoder.layer[source].output.dense.weight)
    with pytest.raises(ValueError, match="student.layers is empty"):
        StudentConfig(kind="layers", layers=[])


def test_a_stage_revision_moves_its_cache_key_and_revision_0_keeps_the_old_keys():
    import dataclasses
    from types import SimpleNamespace

    from conftest import tiny_text_recipe
    from edgekd import __version__
    from edgekd.artifact import stable_hash
    from edgekd.pipeline import Pipeline
    from edgekd.recipe import validate_recipe
    from edgekd.stages import STAGES

    recipe = validate_recipe(tiny_text_recipe("t", "d", "o"))
    pipe = Pipeline(recipe)
    pipe.ctx = SimpleNamespace(data=SimpleNamespace(fingerprint="data-fp"))
    export = dataclasses.replace(STAGES["export"], revision=0)  # as it was before its first revision
    cfg = {"validation_examples": 60}
    # the key a run made before revisions existed: a cached artifact of unchanged code stays valid
    old = stable_hash({"stage": "export", "config": cfg, "parent": "p", "data": "data-fp", "seed": 0,
                       "version": __version__, "profiles": recipe.profiles})
    assert pipe._key(export, cfg, "p") == old
    bumped = dataclasses.replace(export, revision=1)
    assert pipe._key(bumped, cfg, "p") != old
    assert pipe._key(dataclasses.replace(export, revision=2), cfg, "p") not in {old, pipe._key(bumped, cfg, "p")}


def test_a_recovery_key_added_later_stays_out_of_the_cache_key_at_its_default():
    # the prune stage's key hashes its config's dump: recovery.layer_teacher at its default must not appear in it
    # (runs made before the key existed stay cached); set, it does (a different recovery, a different artifact)
    from edgekd.configs import PruneConfig

    before = {"budget": {"params": 0.5}, "steps": 2, "recovery": {"epochs": 0.5}}
    default = PruneConfig.model_validate(before).model_dump(mode="json")
    assert "layer_teacher" not in default["recovery"]
    assert PruneConfig.model_validate(default).recovery.layer_teacher == "teacher"  # a manifest's config reloads
    on = PruneConfig.model_validate({**before, "recovery": {"epochs": 0.5, "hidden_weight": 1.0,
                                                            "layer_teacher": "unpruned"}})
    assert on.model_dump(mode="json")["recovery"]["layer_teacher"] == "unpruned"
