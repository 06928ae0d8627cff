"""Artifacts: atomic commit, and spec -> module rebuilds that reproduce outputs exactly."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

from edgekd.artifact import Artifact, write_manifest, writing
from edgekd.configs import PruneConfig
from edgekd.errors import EdgekdError
from edgekd.models.cnn import ImageCNN
from edgekd.models.hf import hf_base_spec
from edgekd.models.spec import architecture_summary, build_model, load_weights, make_spec, save_weights
from edgekd.prune.structured import prune_structured
from edgekd.quantize.fakequant import convert, fold_batchnorm, quantizable_modules, set_mode


def tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=3, attn_implementation="eager")
    return BertForSequenceClassification(cfg).eval()


def text_batch():
    ids = torch.randint(5, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def roundtrip(model, base, tmp_path):
    spec = json.loads(json.dumps(make_spec(model, base)))  # the spec must survive JSON
    save_weights(model, tmp_path)
    return load_weights(build_model(spec), tmp_path).eval(), spec


def test_writing_commits_atomically(tmp_path):
    final = tmp_path / "a"
    with writing(final) as tmp:
        assert not final.exists()
        write_manifest(tmp, id="x", stage="teacher", config={}, metrics={}, parent=None)
    assert Artifact.load(final).id == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_failed_stage_leaves_nothing_and_never_overwrites(tmp_path):
    final = tmp_path / "a"
    with pytest.raises(RuntimeError):
        with writing(final) as tmp:
            (tmp / "model.safetensors").write_bytes(b"partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with writing(final) as tmp:
        write_manifest(tmp, id="first", stage="teacher", config={}, metrics={}, parent=None)
    with pytest.raises(EdgekdError, match="never overwrites"):
        with writing(final) as tmp:
            write_manifest(tmp, id="second", stage="teacher", config={}, metrics={}, parent=None)
    assert Artifact.load(final).id == "first"


def test_pruned_bert_with_uneven_layers_reloads_identically(tmp_path):
    model = tiny_bert()
    batch = text_batch()
    prune_structured(model, batch, PruneConfig(ratio=0.4, head_ratio=0.4, global_pruning=True), "hf")
    summary = architecture_summary(model)
    assert summary["heads_per_layer"] != [4, 4] and summary["ffn_per_layer"] != [64, 64]
    reloaded, spec = roundtrip(model, hf_base_spec(model, "text-classification"), tmp_path)
    assert spec["summary"] == summary
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


def test_uneven_pruning_is_recorded_per_layer(tmp_path):
    model = tiny_bert()
    prune_structured(model, text_batch(), PruneConfig(ratio=0.5, head_ratio=0.5, global_pruning=True), "hf")
    s = architecture_summary(model)
    assert sum(s["heads_per_layer"]) < 8 and min(s["heads_per_layer"]) >= 1
    assert sum(s["ffn_per_layer"]) <= 0.55 * 128


def test_pruned_vit_q_proj_naming_reloads_identically(tmp_path):
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, num_labels=10, attn_implementation="eager")
    model = ViTForImageClassification(cfg).eval()
    x = torch.randn(2, 1, 8, 8)
    prune_structured(model, {"pixel_values": x}, PruneConfig(ratio=0.5, head_ratio=0.5), "hf")
    assert sum(architecture_summary(model)["heads_per_layer"]) < 8
    reloaded, _ = roundtrip(model, hf_base_spec(model, "image-classification"), tmp_path)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, reloaded(pixel_values=x).logits)


def test_quantized_pruned_cnn_with_folded_batchnorm_reloads_identically(tmp_path):
    torch.manual_seed(0)
    base = {"family": "cnn-image", "task": "image-classification",
            "cnn_config": {"in_channels": 1, "channels": [8, 16], "kernel_size": 3, "num_labels": 10}}
    model = ImageCNN(1, [8, 16], 3, 10).eval()
    x = torch.randn(4, 1, 8, 8)
    prune_structured(model, {"pixel_values": x}, PruneConfig(ratio=0.5), "cnn-image")
    fold_batchnorm(model)
    names = quantizable_modules(model)
    convert(model, names, "uint8", weight_qmax=63)
    set_mode(model, "calibrate")
    model(x)
    for n in names:
        model.get_submodule(n).freeze(n)
    model.edgekd_quant = {"scheme": {"activation_dtype": "uint8", "weight_qmax": 63}, "modules": names}
    reloaded, spec = roundtrip(model, base, tmp_path)
    assert spec["quant"]["modules"] == names
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))
