"""How pruning ranks what to remove: `PruneConfig.importance` names -> torch-pruning `Importance` objects.

An `Importance` scores the channels of a dependency group (`imp(group) -> scores`, the lowest go).
Some scores read gradients: for those the caller's loss is run backward (`score_on`) before the pruner
scores. A new criterion is one entry in IMPORTANCES (and its name in `PruneConfig.importance`).

- magnitude: torch-pruning's group L2 norm of the weights.
- taylor: torch-pruning's first-order Taylor on the weights, |w x dL/dw|.
- loss: the first-order estimate of how much the loss changes when a head or channel is removed, read on its
  activation: |sum over positions of a x dL/da| per example, averaged over examples. For a head, the sum runs
  over the head's slice of the attention output projection's input (Michel et al. 2019, "Are Sixteen Heads
  Really Better than One?"); for an FFN or conv channel, over that channel of the next layer's input
  (Molchanov et al. 2017); for a channel of the residual stream (hidden width), over every layer that reads it,
  summed before the absolute value. torch-pruning has activation hooks only for its Hessian/OBD criteria, so this one
  is written here: forward hooks store each Linear/Conv input, tensor hooks its gradient.

`Protected` wraps any of them to keep a minimum width per layer (`prune.min_heads`, `prune.min_channels`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn


class ActivationLossImportance(tp.importance.Importance):
    """|sum a x dL/da| per example, averaged: the loss a head or channel carries (module doc)."""

    def __init__(self, num_heads: dict[nn.Module, int]):
        self.num_heads = num_heads
        self.per_example: dict[nn.Module, torch.Tensor] = {}  # consumer layer -> [examples, input channels]

    def score_on(self, model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]) -> None:
        handles = []

        def keep(module, args):
            x = args[0]
            if not x.requires_grad:
                return

            def on_grad(g, module=module, x=x.detach()):
                dims = [d for d in range(x.ndim) if d not in (0, _channel_dim(module, x))]
                self.per_example[module] = (x * g).sum(dim=dims) if dims else x * g

            x.register_hook(on_grad)
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                handles.append(m.register_forward_pre_hook(keep))
        try:
            loss_fn(model).backward()
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        heads = _heads_of(group, self.num_heads)
        total = None  # [examples, root channels]: a·dL/da summed over every layer that reads the channel
        for i, (dep, idxs) in enumerate(group):
            module = dep.target.module
            if module not in self.per_example or not _prunes_inputs(dep):
                continue
            root = group[i].root_idxs
            if any(r is None for r in root):
                continue
            per = self.per_example[module]  # [examples, channels]
            if total is None:
                total = torch.zeros(per.shape[0], len(group[0].idxs), dtype=torch.float32)
            total[:, torch.tensor(root)] += per[:, torch.tensor(idxs)].float().cpu()
            if heads:  # a head's channels have one reader: the attention output projection
                break
        if total is None:
            return None  # a group no recorded layer consumes: not ranked (torch-pruning skips it)
        if heads:  # one score per head: the head's channels summed before the absolute value
            size = total.shape[1] // heads
            return total.view(total.shape[0], heads, size).sum(-1).abs().mean(0).repeat_interleave(size)
        # a channel of the residual stream is read by every layer: removing it removes it from all of them
        return total.abs().mean(0)


def _heads_of(group, num_heads: dict[nn.Module, int]) -> int | None:
    """The head count of an attention group (one of its Q/K/V projections is listed), else None."""
    return next((num_heads[dep.target.module] for dep, _ in group if dep.target.module in num_heads), None)


def _channel_dim(module: nn.Module, x: torch.Tensor) -> int:
    return x.ndim - 1 if isinstance(module, nn.Linear) else 1


def _prunes_inputs(dep) -> bool:
    return dep.handler in (tp.prune_linear_in_channels, tp.prune_conv_in_channels)


class Protected(tp.importance.Importance):
    """Another importance, with each layer's best `min_heads` heads and `min_channels` channels put above every
    other score, so that pruning reaches them last. They still go if a ratio asks for more than the unprotected
    rest: the caller checks the widths afterwards (`below_minimum`)."""

    BIG = 1e20  # above any score; protected scores are BIG x (1 + rank / 100): distinct in float32

    def __init__(self, inner: tp.importance.Importance, num_heads: dict[nn.Module, int], min_heads: int,
                 min_channels: int):
        self.inner, self.num_heads, self.min_heads, self.min_channels = inner, num_heads, min_heads, min_channels

    def score_on(self, model, loss_fn) -> None:
        score_on(self.inner, model, loss_fn)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        imp = self.inner(group)
        if imp is None:
            return None
        imp = imp.clone().float()
        heads = _heads_of(group, self.num_heads)
        if heads and self.min_heads > 0:
            per_head = imp.view(heads, -1)
            keep = per_head.mean(1).argsort()[-min(self.min_heads, heads):]  # ascending: the best are last
            per_head[keep] = self.BIG * (1 + torch.arange(len(keep), dtype=imp.dtype)[:, None] / 100)
        elif not heads and self.min_channels > 0:
            keep = imp.argsort()[-min(self.min_channels, len(imp)):]
            imp[keep] = self.BIG * (1 + torch.arange(len(keep), dtype=imp.dtype) / 100)
        return imp


@dataclass(frozen=True)
class ImportanceStrategy:
    make: Callable[[dict], tp.importance.Importance]  # num_heads -> a fresh object per pruning run
    needs_gradients: bool  # True: scored after a backward pass of the caller's loss (`score_on`)


IMPORTANCES: dict[str, ImportanceStrategy] = {
    "magnitude": ImportanceStrategy(lambda heads: tp.importance.GroupMagnitudeImportance(p=2), needs_gradients=False),
    "taylor": ImportanceStrategy(lambda heads: tp.importance.GroupTaylorImportance(), needs_gradients=True),
    "loss": ImportanceStrategy(ActivationLossImportance, needs_gradients=True),
}


def importance_strategy(name: str) -> ImportanceStrategy:
    if name not in IMPORTANCES:
        raise ValueError(f"unknown pruning importance {name!r}; known: {', '.join(sorted(IMPORTANCES))}")
    return IMPORTANCES[name]


def make_importance(name: str, num_heads: dict[nn.Module, int], min_heads: int, min_channels: int):
    """The importance object for one pruning run, with the minimum widths protected."""
    return Protected(importance_strategy(name).make(num_heads), num_heads, min_heads, min_channels)


class ReadScores:
    """What a gradient importance read on one model — its parameters' gradients, and the loss criterion's recorded
    a x dL/da — by parameter and module name, for copies of that model: the pruning bisection prunes a dozen copies
    of the same weights, whose loss backward would give the same gradients every time."""

    def __init__(self, name: str, model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]):
        recorder = importance_strategy(name).make({})
        model.zero_grad()
        score_on(recorder, model, loss_fn)
        names = {m: n for n, m in model.named_modules()}
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        self.per_example = {names[m]: v for m, v in getattr(recorder, "per_example", {}).items()}
        model.zero_grad(set_to_none=True)

    def replay(self, imp, model: nn.Module) -> None:
        """Leave on `model` (a copy of the scored one, unpruned) and in `imp` what `score_on` would have."""
        params = dict(model.named_parameters())
        for n, g in self.grads.items():
            params[n].grad = g.clone()
        recorder = getattr(imp, "inner", imp)
        if isinstance(recorder, ActivationLossImportance):
            modules = dict(model.named_modules())
            recorder.per_example.update({modules[n]: v for n, v in self.per_example.items()})


def read_once(name: str, model: nn.Module, loss_fn):
    """For pruning several copies of `model`: what importance `name` reads on it (ReadScores), where that is a loss
    backward; `loss_fn` itself where the criterion reads only weights."""
    return ReadScores(name, model, loss_fn) if importance_strategy(name).needs_gradients else loss_fn


def score_before_pruning(name: str, imp, model, loss_fn) -> None:
    """What importance `name` reads before it scores: for a gradient criterion, the caller's loss backward (with
    `imp`'s hooks in place, if it has any) or, given ReadScores of an identical model, what that backward read;
    nothing for magnitude."""
    if not importance_strategy(name).needs_gradients:
        return
    if loss_fn is None:
        raise ValueError(f"{name} importance needs a loss")
    if isinstance(loss_fn, ReadScores):
        loss_fn.replay(imp, model)
        return
    model.zero_grad()
    score_on(imp, model, loss_fn)


def score_on(imp, model, loss_fn) -> None:
    """Run what a gradient importance reads: the caller's loss backward, with its hooks in place."""
    if hasattr(imp, "score_on"):
        imp.score_on(model, loss_fn)
    else:  # torch-pruning's gradient importances read the parameters' .grad
        loss_fn(model).backward()
