"""Whole-layer pruning: drop the transformer blocks whose removal changes the loss least.

Each block is scored by the loss of the model with that block skipped, on the importance batch — measured, not
a first-order estimate: a model has few blocks, and skipping one is far from a small change, where a Taylor
estimate would mislead. The blocks that raise the loss least go; the rest keep their order, and the spec's
config records the new depth (the saved weights are the remaining blocks, renumbered).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import EdgekdError
from ..models.students import encoder_layers


def layer_drop_losses(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]) -> list[float]:
    """The loss with each block skipped in turn (index i: without block i)."""
    parent, attr, layers = encoder_layers(model)
    losses = []
    try:
        with torch.no_grad():
            for i in range(len(layers)):
                setattr(parent, attr, nn.ModuleList([b for j, b in enumerate(layers) if j != i]))
                losses.append(float(loss_fn(model)))
    finally:
        setattr(parent, attr, layers)
    return losses


def drop_layers(model: nn.Module, n: int, loss_fn: Callable[[nn.Module], torch.Tensor]) -> dict:
    """Remove the `n` blocks whose removal raises the loss least; returns what was scored and dropped."""
    parent, attr, layers = encoder_layers(model)
    if n >= len(layers):
        raise EdgekdError(f"prune.drop_layers = {n}: the model has {len(layers)} layers, and at least one must stay. "
                          f"Give at most {len(layers) - 1}.")
    model.eval()
    losses = layer_drop_losses(model, loss_fn)
    dropped = sorted(sorted(range(len(layers)), key=lambda i: losses[i])[:n])
    setattr(parent, attr, nn.ModuleList([b for i, b in enumerate(layers) if i not in dropped]))
    model.config.num_hidden_layers = len(layers) - n  # DistilBERT's config maps it to n_layers
    return {"layers_before": len(layers), "dropped": dropped, "loss_without": losses}


def base_with_depth(base: dict, model: nn.Module) -> dict:
    """The base spec with the model's current depth (after drop_layers), under the config's own key."""
    if base.get("family") != "hf":
        return base
    cfg = dict(base["hf_config"])
    key = "n_layers" if "n_layers" in cfg else "num_hidden_layers"
    cfg[key] = len(encoder_layers(model)[2])
    return {**base, "hf_config": cfg}
