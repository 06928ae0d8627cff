"""Pruning importance strategies: every registered one prunes a tiny BERT and a tiny CNN, and the
registry and `PruneConfig.importance` name the same criteria."""
from __future__ import annotations

from typing import get_args

import pytest
import torch
import torch_pruning as tp
from torch.nn import functional as F
from transformers import BertConfig, BertForSequenceClassification

from edgekd.configs import PruneConfig
from edgekd.models.cnn import ImageCNN
from edgekd.models.hf import logits_of
from edgekd.models.spec import architecture_summary
from edgekd.prune.importance import IMPORTANCES, importance_strategy
from edgekd.prune.structured import prune_structured


def tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=3, attn_implementation="eager")
    return BertForSequenceClassification(cfg).eval(), {"input_ids": torch.randint(5, 50, (3, 9))}


def tiny_cnn():
    torch.manual_seed(0)
    return ImageCNN(1, [8, 16], 3, 10).eval(), {"pixel_values": torch.randn(4, 1, 8, 8)}


def loss_of(batch, labels):
    return lambda m: F.cross_entropy(logits_of(m, batch), labels)


def test_the_config_and_the_registry_name_the_same_importances():
    assert set(get_args(PruneConfig.model_fields["importance"].annotation)) == set(IMPORTANCES)
    for strategy in IMPORTANCES.values():
        assert isinstance(strategy.make(), tp.importance.Importance)
    with pytest.raises(ValueError, match="unknown pruning importance 'random'.*magnitude"):
        importance_strategy("random")


@pytest.mark.parametrize("name", sorted(IMPORTANCES))
def test_each_importance_prunes_a_tiny_bert(name):
    model, batch = tiny_bert()
    cfg = PruneConfig(ratio=0.5, head_ratio=0.5, importance=name, recovery=None)
    prune_structured(model, batch, cfg, "hf", loss_of(batch, torch.tensor([0, 1, 2])))
    s = architecture_summary(model)
    assert sum(s["heads_per_layer"]) < 8 and sum(s["ffn_per_layer"]) < 128
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind
    with torch.no_grad():
        assert model(**batch).logits.shape == (3, 3)


@pytest.mark.parametrize("name", sorted(IMPORTANCES))
def test_each_importance_prunes_a_tiny_cnn(name):
    model, batch = tiny_cnn()
    before = sum(p.numel() for p in model.parameters())
    prune_structured(model, batch, PruneConfig(ratio=0.5, importance=name, recovery=None), "cnn-image",
                     loss_of(batch, torch.tensor([0, 1, 2, 3])))
    assert sum(p.numel() for p in model.parameters()) < before
    with torch.no_grad():
        assert logits_of(model, batch).shape == (4, 10)


@pytest.mark.parametrize("name", sorted(n for n, s in IMPORTANCES.items() if s.needs_gradients))
def test_a_gradient_importance_without_a_loss_is_refused(name):
    model, batch = tiny_bert()
    with pytest.raises(ValueError, match=f"{name} importance needs a loss"):
        prune_structured(model, batch, PruneConfig(ratio=0.5, importance=name, recovery=None), "hf")
