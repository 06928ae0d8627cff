"""Hidden units of the BiLSTM student: each direction's LSTM keeps its most important units.

A unit of an LSTM is one row in each of its four gates (input, forget, cell, output) of weight_ih, weight_hh and
the biases, its column of weight_hh (what the other units read of it), and its column of the classifier (what the
max-pooled feature feeds). Removing one removes all of these together.

Written here, not with torch-pruning (1.6): its dependency graph stops at an LSTM's output, so the classifier
that reads it is never in the group, and its LSTM pruning function slices weight_ih's gate rows along the input
dimension. The student's layout is edgekd's own (models/rnn.py), so the coupling is known exactly.

Importance, per unit (the names of PruneConfig.importance):
- magnitude: L2 norm of everything removed with it;
- taylor: |sum w x dL/dw| over the same weights;
- loss: |a x dL/da| on the unit's max-pooled feature at the classifier's input, per example, averaged
  (the activation score `importance.ActivationLossImportance` computes for channels).
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.rnn import TextBiLSTM
from .importance import ActivationLossImportance, score_before_pruning


def _directions(model: TextBiLSTM) -> list[tuple[nn.LSTM, slice]]:
    """Each LSTM and the slice of the classifier's input it feeds."""
    h = model.forward_lstm.hidden_size
    return [(model.forward_lstm, slice(0, h)), (model.backward_lstm, slice(h, h + model.backward_lstm.hidden_size))]


def _unit_weights(lstm: nn.LSTM, classifier: nn.Linear, cols: slice) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, grad) views [units, ...] of what goes with each unit."""
    h = lstm.hidden_size

    def gate_rows(p):
        data = p.data.view(4, h, *p.shape[1:]).transpose(0, 1).reshape(h, -1)
        grad = None if p.grad is None else p.grad.view(4, h, *p.shape[1:]).transpose(0, 1).reshape(h, -1)
        return data, grad

    out = [gate_rows(p) for p in (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)]
    hh = lstm.weight_hh_l0
    out.append((hh.data.t(), None if hh.grad is None else hh.grad.t()))
    cw = classifier.weight
    out.append((cw.data[:, cols].t(), None if cw.grad is None else cw.grad[:, cols].t()))
    return out


def unit_scores(model: TextBiLSTM, importance: str, loss_fn=None) -> list[torch.Tensor]:
    """One score per hidden unit of each direction (forward, backward): the lowest are removed first."""
    recorder = ActivationLossImportance({})  # the loss score's activations; taylor reads the weights' gradients
    score_before_pruning(importance, recorder if importance == "loss" else None, model, loss_fn)
    scores = []
    for lstm, cols in _directions(model):
        if importance == "magnitude":
            s = sum(w.pow(2).sum(1) for w, _ in _unit_weights(lstm, model.classifier, cols)).sqrt()
        elif importance == "taylor":
            s = sum((w * g).sum(1) for w, g in _unit_weights(lstm, model.classifier, cols) if g is not None).abs()
        else:
            s = recorder.per_example[model.classifier][:, cols].abs().mean(0)
        scores.append(s.detach().float())
    model.zero_grad(set_to_none=True)
    return scores


def _keep_units(lstm: nn.LSTM, keep: torch.Tensor) -> None:
    h = lstm.hidden_size
    gates = torch.cat([keep + g * h for g in range(4)])
    for name, index in (("weight_ih_l0", [(gates, 0)]), ("weight_hh_l0", [(gates, 0), (keep, 1)]),
                        ("bias_ih_l0", [(gates, 0)]), ("bias_hh_l0", [(gates, 0)])):
        data = getattr(lstm, name).data
        for idx, dim in index:
            data = data.index_select(dim, idx)
        setattr(lstm, name, nn.Parameter(data.contiguous()))  # nn.LSTM refreshes its flat weights on set
    lstm.hidden_size = len(keep)


def prune_bilstm(model: TextBiLSTM, ratio: float, importance: str, loss_fn=None, round_to: int | None = None,
                 min_units: int = 1, max_layer_ratio: float = 0.9) -> list[int]:
    """Remove `ratio` of each direction's hidden units in place (kept counts in multiples of `round_to`, at least
    `min_units` and at least 1 - max_layer_ratio of the units); returns the kept widths."""
    step = round_to if round_to and round_to > 1 else 1
    scores = unit_scores(model, importance, loss_fn)
    keeps = []
    for (lstm, _), s in zip(_directions(model), scores):
        h = lstm.hidden_size
        floor = max(min_units, int(round(h * (1 - max_layer_ratio))), 1)
        n = max(int(h * (1 - ratio)), floor)
        n = min(h, max(-(-floor // step) * step, n // step * step))
        keeps.append(torch.sort(s.argsort(descending=True)[:n]).values)
    columns = torch.cat([k + cols.start for k, (_, cols) in zip(keeps, _directions(model))])
    for (lstm, _), keep in zip(_directions(model), keeps):
        _keep_units(lstm, keep)
    c = model.classifier
    c.weight = nn.Parameter(c.weight.data.index_select(1, columns).contiguous())
    c.in_features = len(columns)
    return [len(k) for k in keeps]
