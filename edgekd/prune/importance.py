"""How pruning ranks what to remove: `PruneConfig.importance` names -> torch-pruning `Importance` objects.

An `Importance` scores the channels of a dependency group (`imp(group) -> scores`, the lowest go).
Some scores read gradients (Taylor: |weight x grad|); for those the caller's loss is run backward
before the pruner scores. A new criterion is one entry here (and its name in `PruneConfig.importance`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch_pruning as tp


@dataclass(frozen=True)
class ImportanceStrategy:
    make: Callable[[], tp.importance.Importance]  # a fresh object per pruning run
    needs_gradients: bool  # True: scored after a backward pass of the caller's loss


IMPORTANCES: dict[str, ImportanceStrategy] = {
    "magnitude": ImportanceStrategy(lambda: tp.importance.GroupMagnitudeImportance(p=2), needs_gradients=False),
    "taylor": ImportanceStrategy(tp.importance.GroupTaylorImportance, needs_gradients=True),
}


def importance_strategy(name: str) -> ImportanceStrategy:
    if name not in IMPORTANCES:
        raise ValueError(f"unknown pruning importance {name!r}; known: {', '.join(sorted(IMPORTANCES))}")
    return IMPORTANCES[name]
