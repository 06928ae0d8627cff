"""Hidden-width pruning: the residual stream narrows everywhere at once, the model reloads and exports."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification,
                          ViTConfig, ViTForImageClassification)

from conftest import tiny_text_recipe
from edgekd.configs import PruneConfig
from edgekd.models.hf import hf_base_spec, logits_of
from edgekd.models.hf_folder import hf_folder_blocker
from edgekd.models.onnx_graph import LogitsOnly, torch_to_onnx
from edgekd.models.spec import (architecture_summary, build_model, hidden_width, load_model_from_artifact, load_weights,
                                make_spec, residual_input, save_weights)
from edgekd.pipeline import Pipeline
from edgekd.prune.structured import hidden_keep, prune_hidden, prune_structured
from edgekd.recipe import validate_recipe


def tiny(family: str):
    torch.manual_seed(0)
    common = {"num_labels": 3, "attn_implementation": "eager"}
    if family == "bert":
        m = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64, **common))
    elif family == "roberta":
        m = RobertaForSequenceClassification(RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                           num_attention_heads=4, intermediate_size=64,
                                                           max_position_embeddings=40, **common))
    elif family == "distilbert":
        m = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4,
                                                                 hidden_dim=64, **common))
    else:
        m = ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32,
                                                num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                                **common))
    if family == "vit":
        return m.eval(), {"pixel_values": torch.randn(3, 3, 16, 16)}, "image-classification"
    ids = torch.randint(5, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return m.eval(), {"input_ids": ids, "attention_mask": mask}, "text-classification"


@pytest.mark.parametrize("importance", ["magnitude", "loss"])
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "vit"])
def test_a_hidden_pruned_transformer_reloads_identically_and_its_onnx_matches(family, importance, tmp_path):
    model, batch, task = tiny(family)
    base = hf_base_spec(model, task)
    labels = torch.tensor([0, 1, 2])
    loss = lambda m: F.cross_entropy(logits_of(m, batch), labels)  # noqa: E731
    cfg = PruneConfig(ratio=0.3, importance=importance)
    assert prune_hidden(model, batch, cfg, hidden_keep(32, 0.5, 8), loss) == 16
    prune_structured(model, batch, cfg, "hf", loss, round_to=8)  # heads and FFN channels on top
    s = architecture_summary(model)
    assert s["hidden"] == hidden_width(model) == 16
    # every table, norm and layer on the stream narrowed together
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(n.normalized_shape == (16,) for n in norms)
    spec = json.loads(json.dumps(make_spec(model, base)))
    save_weights(model, tmp_path)
    reloaded = load_weights(build_model(spec), tmp_path).eval()
    with torch.no_grad():
        expected = logits_of(model, batch)
        assert torch.equal(expected, logits_of(reloaded, batch))
    path = tmp_path / "model.onnx"
    torch_to_onnx(LogitsOnly(reloaded, list(batch)), batch, path, 17)
    got = ort.InferenceSession(str(path)).run(None, {k: v.numpy() for k, v in batch.items()})[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)
    assert "hidden width was pruned (32 -> 16)" in hf_folder_blocker(model)


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "loss"])
def test_the_hidden_channel_that_carries_nothing_goes_first(importance):
    model, batch, _ = tiny("bert")
    c = 5  # channel 5 of the residual stream: zero in every table, norm, layer input and output
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                m.weight[:, c] = 0
            elif isinstance(m, nn.LayerNorm):
                m.weight[c] = 0
                m.bias[c] = 0
            elif isinstance(m, nn.Linear) and m.in_features == 32:
                m.weight[:, c] = 0
            if isinstance(m, nn.Linear) and m.out_features == 32:
                m.weight[c] = 0
                m.bias[c] = 0
    table = residual_input(model).weight.detach().clone()
    labels = torch.tensor([0, 1, 2])
    loss = lambda m: F.cross_entropy(logits_of(m, batch), labels)  # noqa: E731
    prune_hidden(model, batch, PruneConfig(importance=importance), 31, loss)
    kept = [i for i in range(32) if i != c]
    assert torch.equal(residual_input(model).weight, table[:, kept])


@pytest.mark.slow
def test_a_budget_run_narrows_the_hidden_width_over_its_steps(tmp_path, tiny_bert_dir, text_data_dir):
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    kd = r["stages"][0]["distill"]
    r["stages"] = [r["stages"][0], {"prune": {"budget": {"params": 0.5}, "steps": 2, "width_multiple": 8,
                                              "hidden_ratio": 0.5, "importance": "loss",
                                              "recovery": {**kd, "epochs": 1}}}]
    pipe = Pipeline(validate_recipe(r))
    m = pipe.run()["prune"]
    assert [s["architecture"]["hidden"] for s in m["steps"]] == [24, 16]  # 32 -> 24 -> 16, in equal shares
    assert m["after"]["hidden"] == 16
    assert m["non_embedding_params_after"] <= 0.5 * m["non_embedding_params_before"]
    assert "hidden width was pruned" in m["hf_folder"]["reason"]
    art = next(a for a in pipe.artifacts if a.stage == "prune")
    assert hidden_width(load_model_from_artifact(art)) == 16
    assert "| hidden |" in (tmp_path / "run" / "report.md").read_text()
    with pytest.raises(Exception, match="hidden_ratio narrows a transformer's residual stream"):
        validate_recipe({**r, "student": {"kind": "cnn", "channels": [8]}})
