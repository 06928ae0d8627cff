"""The stage registry: each stage is a descriptor — name, strict config class, and run function.

Every run function has the signature `run(cfg, parent: Artifact, ctx: Context, out: Path, key: str) -> dict`
and returns {"metrics": ..., "spec": ..., optional "extra": ...}; it writes its files into `out`
(a temporary folder the engine renames into place) and resumable state into ctx.work_dir(key).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Callable

from .recipe import STAGE_CONFIGS


@dataclass(frozen=True)
class StageDescriptor:
    name: str
    config_cls: type
    target: str  # "module:function", imported lazily so `edgekd profiles` stays fast
    produces_torch_model: bool

    @property
    def run(self) -> Callable:
        module, func = self.target.split(":")
        return getattr(import_module(module, __package__), func)


STAGES = {
    "distill": StageDescriptor("distill", STAGE_CONFIGS["distill"], ".distill.stage:run_distill", True),
    "prune": StageDescriptor("prune", STAGE_CONFIGS["prune"], ".prune.stage:run_prune", True),
    "qat": StageDescriptor("qat", STAGE_CONFIGS["qat"], ".quantize.stage:run_qat", True),
    "export": StageDescriptor("export", STAGE_CONFIGS["export"], ".export.stage:run_export", False),
    "profile": StageDescriptor("profile", STAGE_CONFIGS["profile"], ".profile.stage:run_profile", False),
}
