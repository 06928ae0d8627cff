"""Heads and FFN channels of fused layouts (ModernBERT): one q/k/v Linear, a gated FFN.

Written here, not left to torch-pruning: its dependency graph follows a Linear's output channels one by one and
cannot see that the fused projection's outputs are [q | k | v] blocks of heads (split by a view and an unbind) or
that a gated FFN's outputs are [input | gate] halves (split by chunk). Here a unit is what must go together: a head
(its rows in each of the q, k and v blocks and its columns of the output projection) or an FFN channel (its input and
gate rows and its output column). torch-pruning still does the surgery on each Linear.

The units are ranked by the recipe's importance, computed over the unit's weights as torch-pruning's criteria compute
them over a group: magnitude (squared L2 norm), taylor (|w x dL/dw|), loss (a x dL/da on the output projection's
input, as `ActivationLossImportance` records it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from ..configs import PruneConfig
from ..models.families import fused_qkv, gated_ffn


@dataclass
class FusedUnits:
    """A fused layer's prunable units: `rows[u]` of `first`'s outputs and `cols[u]` of `last`'s inputs."""
    first: nn.Linear
    last: nn.Linear
    rows: torch.Tensor  # [units, rows per unit]
    cols: torch.Tensor  # [units, columns per unit]
    is_head: bool


def fused_layers(model: nn.Module) -> list[FusedUnits]:
    found = []
    for m in model.modules():
        if qkv := fused_qkv(m):
            first, last, size = qkv
            heads = first.out_features // (3 * size)
            per_head = torch.arange(size)
            rows = torch.stack([torch.cat([(block * heads + h) * size + per_head for block in range(3)])
                                for h in range(heads)])
            found.append(FusedUnits(first, last, rows, torch.arange(heads * size).view(heads, size), True))
        elif gated := gated_ffn(m):
            first, last = gated
            channels = last.in_features
            rows = torch.stack([torch.arange(channels), torch.arange(channels) + channels], dim=1)
            found.append(FusedUnits(first, last, rows, torch.arange(channels)[:, None], False))
    return found


def _weight_scores(layer: FusedUnits, criterion: str) -> torch.Tensor:
    def per_unit(linear: nn.Linear, idx: torch.Tensor, dim: int) -> torch.Tensor:
        total = torch.zeros(len(idx))
        for p, axis in ((linear.weight, dim), (linear.bias if dim == 0 else None, 0)):
            if p is None:
                continue
            if criterion == "taylor":
                if p.grad is None:
                    continue
                value = (p.detach() * p.grad).abs()
            else:
                value = p.detach() ** 2
            picked = value.index_select(axis, idx.reshape(-1)).float()
            picked = picked.reshape(*idx.shape, -1) if axis == 0 else picked.T.reshape(*idx.shape, -1)
            total += picked.sum(dim=(1, 2))
        return total

    return per_unit(layer.first, layer.rows, 0) + per_unit(layer.last, layer.cols, 1)


def _scores(layer: FusedUnits, criterion: str, importance) -> torch.Tensor:
    if criterion != "loss":
        return _weight_scores(layer, criterion)
    per_example = getattr(importance, "per_example", {}).get(layer.last)  # [examples, output projection inputs]
    if per_example is None:
        raise ValueError("loss importance: no gradient was recorded for a fused layer's output projection")
    return per_example.float()[:, layer.cols].sum(-1).abs().mean(0).cpu()


def _lower_bound(n: int, cfg: PruneConfig, is_head: bool, step: int) -> int:
    """The fewest units a layer may keep: its minimum (rounded up to the width multiple), max_layer_ratio."""
    minimum = cfg.min_heads if is_head else -(-cfg.min_channels // step) * step
    return min(n, max(minimum, n - int(n * cfg.max_layer_ratio), 1))


def _round_keep(keep: int, floor: int, step: int) -> int:
    return max(floor, keep // step * step) if step > 1 else keep


def _choose(layers: list[FusedUnits], scores: list[torch.Tensor], ratio: float, cfg: PruneConfig, step: int
            ) -> list[torch.Tensor]:
    """The units each layer removes: `ratio` of them, per layer or ranked across layers (prune.global_pruning, each
    layer's scores over their mean as torch-pruning normalises a group's), within each layer's bounds."""
    steps = [1 if layer.is_head else step for layer in layers]
    floors = [_lower_bound(len(s), cfg, layer.is_head, st) for layer, s, st in zip(layers, scores, steps)]
    if cfg.global_pruning:
        normalised = [s / s.mean().clamp_min(1e-12) for s in scores]
        order = sorted(((float(v), i, u) for i, s in enumerate(normalised) for u, v in enumerate(s)))
        budget, removed = int(sum(len(s) for s in scores) * ratio), [[] for _ in scores]
        for _, i, u in order:
            if budget <= 0:
                break
            if len(scores[i]) - len(removed[i]) > floors[i]:
                removed[i].append(u)
                budget -= 1
        keeps = [len(s) - len(r) for s, r in zip(scores, removed)]
    else:
        keeps = [max(floor, len(s) - int(len(s) * ratio)) for s, floor in zip(scores, floors)]
    out = []
    for s, keep, floor, st in zip(scores, keeps, floors, steps):
        keep = _round_keep(keep, floor, st)
        out.append(s.argsort()[: len(s) - keep].sort().values)
    return out


def prune_fused(model: nn.Module, cfg: PruneConfig, importance, ratio: float, head_ratio: float,
                round_to: int | None) -> bool:
    """Prune the fused layers of `model` in place (heads at `head_ratio`, FFN channels at `ratio`); False when it has
    none. Gradient criteria read what `score_before_pruning` left (parameter gradients, recorded activations)."""
    layers = fused_layers(model)
    if not layers:
        return False
    step = round_to if round_to and round_to > 1 else 1
    inner = getattr(importance, "inner", importance)
    scores = [_scores(layer, cfg.importance, inner) for layer in layers]
    for is_head, r in ((True, head_ratio), (False, ratio)):
        group = [i for i, layer in enumerate(layers) if layer.is_head == is_head]
        if r <= 0 or not group:
            continue
        chosen = _choose([layers[i] for i in group], [scores[i] for i in group], r, cfg, step)
        for i, units in zip(group, chosen):
            if len(units):
                tp.prune_linear_out_channels(layers[i].first, layers[i].rows[units].reshape(-1).tolist())
                tp.prune_linear_in_channels(layers[i].last, layers[i].cols[units].reshape(-1).tolist())
    return True
