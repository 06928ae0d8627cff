"""The stage registry: the one place a stage is declared.

A descriptor gives a stage's name, strict config class, legal predecessors, the recipe fields
besides its own config that change its output and its code revision (both part of its cache key),
whether every process of a distributed run takes part (it trains) or rank 0 alone runs it, and its
run function. The recipe's `stages:` schema and order rules are derived from here; the engine runs
descriptors.

Every run function has the signature `run(cfg, parent: Artifact | None, ctx: Context, out: Path, key: str) -> dict`
and returns {"metrics": ..., "spec": ..., optional "extra": ...}; it writes its files into `out`
(a temporary folder the engine renames into place) and resumable state into ctx.work_dir(key).

Run functions are named as "module:function" and imported when a stage runs, like plugin entry
points: the recipe is validated from this table without importing torch, and this module sits
below the recipe, importing only the config classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Callable

from .configs import DistillConfig, ExportConfig, ProfileStageConfig, PruneConfig, QATConfig, TeacherConfig


def _nothing(recipe) -> dict:
    return {}


def _teachers(recipe) -> dict:
    """The further teachers a training stage distils from (absent when there are none: cache keys stay as they were)."""
    return {"teachers": [t.model_dump(mode="json") for t in recipe.teachers]} if recipe.teachers else {}


@dataclass(frozen=True)
class StageDescriptor:
    name: str
    config_cls: type
    target: str  # "module:function", relative to this package
    after: frozenset[str] = frozenset()  # legal predecessors; empty: the run's first stage (no parent)
    trains: bool = False  # every process runs it (DDP); otherwise rank 0 runs it while the others wait
    key_inputs: Callable[[Any], dict] = field(default=_nothing)  # recipe -> what else goes into the cache key
    in_stage_list: bool = True  # listed under `stages:` (the teacher has its own `teacher:` section)
    # Bump by hand when a change to the stage's code changes what it writes for the same config (a new INT8
    # layout rule, a different recovery schedule): the cache key then moves, so no run reuses an artifact the
    # current code would not build. 0 leaves it out of the key, so the keys of existing runs stay valid.
    revision: int = 0

    @property
    def run(self) -> Callable:
        module, func = self.target.split(":")
        return getattr(import_module(module, __package__), func)


def _qat_attention(r) -> dict:
    """QAT also quantizes attention's products when a profile is an integer NPU (qat.attention_matmuls unset)."""
    from .devices.profiles import any_full_int8

    return {"full_int8_target": True} if any_full_int8(r.profiles) else {}


STAGES: dict[str, StageDescriptor] = {d.name: d for d in (
    StageDescriptor("teacher", TeacherConfig, ".teacher.stage:run_teacher", trains=True, in_stage_list=False),
    StageDescriptor("distill", DistillConfig, ".distill.stage:run_distill", frozenset({"teacher"}), trains=True,
                    key_inputs=lambda r: {"student": r.student.model_dump(mode="json"), **_teachers(r)}),
    StageDescriptor("prune", PruneConfig, ".prune.stage:run_prune", frozenset({"teacher", "distill"}), trains=True,
                    key_inputs=_teachers),
    # the quantization scheme (int7/int8 weights) follows the first target profile
    StageDescriptor("qat", QATConfig, ".quantize.stage:run_qat", frozenset({"teacher", "distill", "prune"}),
                    trains=True, key_inputs=lambda r: {"target": r.profiles[:1], **_qat_attention(r), **_teachers(r)}),
    StageDescriptor("export", ExportConfig, ".export.stage:run_export",
                    frozenset({"teacher", "distill", "prune", "qat"}), key_inputs=lambda r: {"profiles": r.profiles},
                    # 1: a wider-activation device build starts from the pre-QAT weights; 2: a text CNN's device build
                    # (its padding mask, its embedding rows converted to 16 bits, its static length data.max_length);
                    # 3: a trimmed text CNN's row map read as int32 on an integer NPU
                    revision=3),
    StageDescriptor("profile", ProfileStageConfig, ".profile.stage:run_profile", frozenset({"export"}),
                    key_inputs=lambda r: {"profiles": r.profiles}),
)}

# The stages a recipe lists under `stages:`, in pipeline order.
LISTED = {name: d for name, d in STAGES.items() if d.in_stage_list}
FIRST = next(name for name, d in STAGES.items() if not d.after)
