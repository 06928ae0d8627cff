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
from edgekd.prune.importance import IMPORTANCES, importance_strategy, read_once
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
        assert isinstance(strategy.make({}), tp.importance.Importance)
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


@pytest.mark.parametrize("family", ["hf", "cnn-image"])
@pytest.mark.parametrize("name", sorted(IMPORTANCES))
def test_copies_pruned_with_scores_read_once_match_copies_that_run_the_loss_themselves(name, family):
    """The budget bisection prunes many copies of one model: one loss backward serves them all, to the same result."""
    import copy

    model, batch = tiny_bert() if family == "hf" else tiny_cnn()
    labels = torch.arange(len(next(iter(batch.values())))) % 3
    calls = []
    loss = loss_of(batch, labels)

    def counted(m):
        calls.append(1)
        return loss(m)

    scores = read_once(name, model, counted)
    read = len(calls)
    assert all(p.grad is None for p in model.parameters())  # the scored model is left as it was
    for ratio in (0.25, 0.5):
        cfg = PruneConfig(ratio=ratio, head_ratio=ratio, importance=name, recovery=None)
        fresh, replayed = copy.deepcopy(model), copy.deepcopy(model)
        prune_structured(fresh, batch, cfg, family, loss)
        prune_structured(replayed, batch, cfg, family, scores)
        a, b = fresh.state_dict(), replayed.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert sum(p.numel() for p in replayed.parameters()) < sum(p.numel() for p in model.parameters())
    assert len(calls) == read == (1 if IMPORTANCES[name].needs_gradients else 0)


@pytest.mark.parametrize("name", sorted(n for n, s in IMPORTANCES.items() if s.needs_gradients))
def test_a_gradient_importance_without_a_loss_is_refused(name):
    model, batch = tiny_bert()
    with pytest.raises(ValueError, match=f"{name} importance needs a loss"):
        prune_structured(model, batch, PruneConfig(ratio=0.5, importance=name, recovery=None), "hf")


def test_loss_importance_ranks_heads_by_the_loss_they_carry():
    """A head whose output is zeroed carries no loss: it is the one removed (Michel et al. 2019)."""
    model, batch = tiny_bert()
    labels = torch.tensor([0, 1, 2])
    attn = model.bert.encoder.layer[0].attention
    with torch.no_grad():  # head 2 of layer 0 contributes nothing: its value rows are zero
        size = attn.self.attention_head_size
        attn.self.value.weight[2 * size:3 * size] = 0
        attn.self.value.bias[2 * size:3 * size] = 0
    before = model.bert.encoder.layer[0].attention.self.value.weight.clone()
    cfg = PruneConfig(ratio=0.01, head_ratio=1 / 8, importance="loss", recovery=None, global_pruning=True)
    prune_structured(model, batch, cfg, "hf", loss_of(batch, labels))
    s = architecture_summary(model)
    assert s["heads_per_layer"] == [3, 4], s
    kept = model.bert.encoder.layer[0].attention.self.value.weight
    # the kept value rows are heads 0, 1 and 3 of the original
    torch.testing.assert_close(kept, torch.cat([before[:2 * size], before[3 * size:]]))


@pytest.mark.parametrize("name", ["magnitude", "loss"])
def test_minimum_widths_are_kept_whatever_the_ranking(name):
    from edgekd.prune.structured import below_minimum

    model, batch = tiny_bert()  # 4 heads, FFN 64 per layer
    # layer 0's heads carry (almost) nothing: the loss ranking alone would take all four, which torch-pruning
    # refuses, so no head at all went (measured: [4, 4] heads without the minimum)
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.value.weight.mul_(1e-3)
        model.bert.encoder.layer[0].attention.self.value.bias.zero_()
    cfg = PruneConfig(ratio=0.3, head_ratio=0.5, importance=name, recovery=None, min_heads=2, min_channels=40,
                      max_layer_ratio=0.99)
    prune_structured(model, batch, cfg, "hf", loss_of(batch, torch.tensor([0, 1, 2])), round_to=8)
    s = architecture_summary(model)
    assert all(h >= 2 for h in s["heads_per_layer"]) and all(c >= 40 for c in s["ffn_per_layer"]), s
    assert sum(s["heads_per_layer"]) < 8 and sum(s["ffn_per_layer"]) < 128  # still pruned
    assert below_minimum(model, cfg) == []
    assert below_minimum(model, cfg.model_copy(update={"min_heads": 4})) != []
