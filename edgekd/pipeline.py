"""Runs the stages of a recipe with caching and resume.

Cache key of a stage = hash(stage name, normalised config, parent artifact id, data fingerprint,
seed, edgekd version). A stage whose artifact folder is complete is skipped; a killed stage left
only a temporary folder (ignored, removed) and its checkpoints in work/<key> (resumed).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from . import __version__
from .artifact import Artifact, is_complete, stable_hash, write_manifest, writing
from .context import Context, copy_preprocessing
from .errors import EdgekdError
from .progress import log
from .recipe import Recipe, load_recipe
from .stages import STAGES


class Pipeline:
    def __init__(self, recipe: Recipe, run_dir: str | Path | None = None):
        self.recipe = recipe
        self.run_dir = Path(run_dir or recipe.output)
        self.ctx = Context(recipe, self.run_dir)
        self.artifacts: list[Artifact] = []

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None, out: str | Path | None = None) -> "Pipeline":
        return cls(load_recipe(path, overrides), out)

    # ------------------------------------------------------------------ checks before any work
    def preflight(self) -> None:
        """Everything that can be checked without training: profiles, data, teacher folder."""
        from .profile.profiles import load_profile

        for name in self.recipe.profiles:
            load_profile(name)
        _ = self.ctx.data  # reads and checks every split
        t = self.recipe.teacher
        if t.path is not None:
            from .models.hf import check_model_folder, resolve_model_path

            check_model_folder(resolve_model_path(t.path))
        _check_output_folder(self.run_dir)

    def _remove_stale_temporaries(self) -> None:
        """Temporary artifact folders left by a killed run are never complete: drop them."""
        stages = self.run_dir / "stages"
        if stages.is_dir():
            for tmp in stages.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ running
    def _key(self, stage: str, cfg: dict, parent: str | None, extra: dict | None = None) -> str:
        return stable_hash({"stage": stage, "config": cfg, "parent": parent, "data": self.ctx.data.fingerprint,
                            "seed": self.recipe.seed, "version": __version__, **(extra or {})})

    def _run_stage(self, name: str, cfg, parent: Artifact | None, fn, extra_key: dict | None = None) -> Artifact:
        cfg_dict = cfg.model_dump(mode="json")
        key = self._key(name, cfg_dict, parent.id if parent else None, extra_key)
        final = self.run_dir / "stages" / f"{len(self.artifacts):02d}-{name}-{key}"
        if is_complete(final):
            log(f"[green]✓ {name}[/] cached ({final.name})")
            art = Artifact.load(final)
        else:
            log(f"[bold cyan]▶ {name}[/]")
            seed_everything(self.recipe.seed, name)
            with writing(final) as tmp:
                if parent is not None:
                    copy_preprocessing(parent.path, tmp)  # tokenizer / preprocessing travel with the model
                    result = fn(cfg, parent, self.ctx, tmp, key)
                else:
                    result = fn(cfg, self.ctx, tmp, key)
                write_manifest(tmp, id=key, stage=name, config=cfg_dict, metrics=result.get("metrics", {}),
                               parent=parent.id if parent else None, spec=result.get("spec"), extra=result.get("extra"))
            art = Artifact.load(final)
            shutil.rmtree(self.ctx.work_dir(key), ignore_errors=True)  # checkpoints are no longer needed
        self.artifacts.append(art)
        return art

    def run(self) -> dict:
        """Run every stage (skipping cached ones); returns {stage name: metrics}."""
        from .models.teacher_stage import run_teacher

        self.preflight()
        self._remove_stale_temporaries()
        self.artifacts = []
        teacher = self._run_stage("teacher", self.recipe.teacher, None, run_teacher)
        self.ctx.teacher = teacher
        parent = teacher
        for entry in self.recipe.stages:
            desc = STAGES[entry.name]
            extra = {}
            if entry.name == "distill":
                extra["student"] = self.recipe.student.model_dump(mode="json")
            if entry.name == "qat":  # the quantization scheme (int7/int8 weights) follows the first target
                extra["target"] = self.recipe.profiles[:1]
            if entry.name in ("export", "profile"):
                extra["profiles"] = self.recipe.profiles
            parent = self._run_stage(entry.name, entry.config, parent, desc.run, extra)
        from .report.run_summary import write_run_outputs

        summary = write_run_outputs(self.run_dir, self.recipe, self.artifacts)
        return {a.stage: a.metrics for a in self.artifacts} | {"summary": summary}


def seed_everything(seed: int, stage: str) -> None:
    """Seed every RNG at the start of a stage, from the recipe seed and the stage name.

    Per stage, not once per run: a stage then draws the same random numbers (weight init,
    dropout, shuffles) whether the stages before it ran now or were taken from the cache.
    """
    import random

    import numpy as np
    import torch

    s = int(stable_hash({"seed": seed, "stage": stage}, 8), 16)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def _check_output_folder(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise EdgekdError(f"output {str(run_dir)!r} exists and is not a folder; choose another output path.")
