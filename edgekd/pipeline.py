"""Runs the stages of a recipe with caching, resume, and rank-0 writing.

Cache key of a stage = hash(stage name, normalised config, parent artifact id, data fingerprint,
seed, edgekd version, the stage's code revision (stages.py) and the recipe fields its descriptor
names). A stage whose artifact folder is complete is skipped; a killed stage left only a temporary
folder (ignored, removed) and its checkpoints in work/<key> (resumed).

Several processes (torchrun / accelerate launch): every process runs a stage that trains (each on
its shard of every batch); only rank 0 writes artifacts, manifests and reports — the others write
into a scratch folder that is thrown away — and a stage that does not train (export, profile) runs
on rank 0 while the others wait. After each stage every process loads the artifact rank 0 wrote.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from . import __version__
from .artifact import Artifact, copy_preprocessing, is_complete, stable_hash, write_manifest, writing
from .errors import EdgekdError
from .progress import log
from .recipe import Recipe, load_recipe
from .stages import STAGES, StageDescriptor
from .train.context import Context
from .train.runtime import Runtime


def stage_outcome(metrics: dict) -> str:
    """A trained stage's accuracies as its manifest records them ('' for a stage that has none): a long run says
    what each stage reached when it ends, not only in the report at the end."""
    said = [f"{name} {metrics[key]:.2%}" for key, name in (("dev_accuracy", "dev"), ("test_accuracy", "test"),
                                                             ("test_agreement", "agreement with the teacher on test"))
            if isinstance(metrics.get(key), float)]
    return ", ".join(said)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class Pipeline:
    def __init__(self, recipe: Recipe, run_dir: str | Path | None = None, runtime: Runtime | None = None):
        self.recipe = recipe
        self.run_dir = Path(run_dir or recipe.output)
        self.runtime = runtime
        self.ctx: Context | None = None
        self.artifacts: list[Artifact] = []

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None, out: str | Path | None = None) -> "Pipeline":
        return cls(load_recipe(path, overrides), out)

    # ------------------------------------------------------------------ checks before any work
    def preflight(self) -> None:
        """Everything that can be checked without training: profiles, data, teacher folder."""
        from .devices.profiles import load_profile

        for name in self.recipe.profiles:
            load_profile(name)
        _ = self.ctx.data  # reads and checks every split
        t = self.recipe.teacher
        if t.path is not None:
            from .models.hf import check_model_folder, resolve_model_path

            check_model_folder(resolve_model_path(t.path))
        self._check_family()
        _check_output_folder(self.run_dir)

    def _check_family(self) -> None:
        """What the recipe asks of the teacher's family (its layers student and the stages after) that edgekd
        cannot do for it: refused now, not found out after training."""
        from .models.support import recipe_refusals

        student = self.recipe.student
        if student is not None and student.kind == "pretrained":
            self._check_pretrained_student()
            return
        if student is not None and student.kind not in ("layers", "config"):
            # a CNN or BiLSTM student: no transformer part is asked of it, only (svd) a table narrower than the teacher's
            if student.init_embeddings_from_teacher == "svd":
                from .models.students import svd_refusal

                skeleton = self._teacher_skeleton()
                refusal = (svd_refusal(student, skeleton.get_input_embeddings().embedding_dim)
                           if skeleton is not None else None)
                if refusal:
                    raise EdgekdError(refusal)
            return
        skeleton = self._teacher_skeleton()
        if skeleton is None:
            return  # a hub teacher, or a model_type transformers does not know: its stages check the model they get
        refused = recipe_refusals(self.recipe, skeleton)
        if refused:
            raise EdgekdError(" ".join(refused))

    def _teacher_skeleton(self):
        """The teacher's model without weights, from its folder's config or the recipe's; None for a hub teacher."""
        from .models.hf import resolve_model_path
        from .models.support import skeleton_from_config

        t = self.recipe.teacher
        if t.path is not None:
            return skeleton_from_config(folder=resolve_model_path(t.path))
        if t.config is not None:
            return skeleton_from_config(config=t.config)
        return None

    def _check_pretrained_student(self) -> None:
        """The pretrained student's folder, what the stages ask of its family, and intermediate terms across
        tokenizers: refused before any work."""
        from .models.hf import check_model_folder, resolve_model_path
        from .models.support import cross_tokenizer_refusals, recipe_refusals, skeleton_from_config

        s, t = self.recipe.student, self.recipe.teacher
        if s.path is None:
            return  # a hub student: the distill stage checks the model it gets
        folder = resolve_model_path(s.path, key="student.path")
        check_model_folder(folder, key="student.path")
        skeleton = skeleton_from_config(folder=folder)
        refused = recipe_refusals(self.recipe, skeleton) if skeleton is not None else []
        keys = cross_tokenizer_refusals(self.recipe)
        if keys and self.recipe.task == "text-classification" and t.path is not None:
            refused += self._unaligned_tokenizer_refusals(keys, folder, resolve_model_path(t.path))
        if refused:
            raise EdgekdError(" ".join(refused))

    def _unaligned_tokenizer_refusals(self, keys: list[str], student_folder: Path, teacher_folder: Path) -> list[str]:
        """The stages (`keys`) whose intermediate terms need the teacher to read the student's pieces, where the
        student's tokenizer cuts a train text differently from the teacher's (each stage checks its own examples
        again when it trains)."""
        from transformers import AutoTokenizer

        from .data.alignment import aligned_map
        from .train.context import same_tokenizer
        from .train.distiller import cross_tokenizer_refusal

        student, teacher = (AutoTokenizer.from_pretrained(str(f)) for f in (student_folder, teacher_folder))
        if same_tokenizer(student, teacher):
            return []
        texts = self.ctx.data.train.texts
        _, difference = aligned_map(student, teacher, texts, student(texts)["input_ids"], teacher(texts)["input_ids"])
        return [] if difference is None else [cross_tokenizer_refusal(k, difference) for k in keys]

    def _remove_stale_temporaries(self) -> None:
        """Temporary artifact folders left by a killed run are never complete: drop them."""
        stages = self.run_dir / "stages"
        if stages.is_dir():
            for tmp in stages.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ running
    def _key(self, desc: StageDescriptor, cfg: dict, parent: str | None) -> str:
        revision = {"revision": desc.revision} if desc.revision else {}
        return stable_hash({"stage": desc.name, "config": cfg, "parent": parent, "data": self.ctx.data.fingerprint,
                            "seed": self.recipe.seed, "version": __version__, **revision,
                            **desc.key_inputs(self.recipe)})

    def _run_stage(self, desc: StageDescriptor, cfg, parent: Artifact | None) -> Artifact:
        rt = self.ctx.runtime
        cfg_dict = cfg.model_dump(mode="json")
        key = self._key(desc, cfg_dict, parent.id if parent else None)
        final = self.run_dir / "stages" / f"{len(self.artifacts):02d}-{desc.name}-{key}"
        started = time.monotonic()
        cached = is_complete(final)
        if cached:
            log(f"[green]✓ {desc.name}[/] cached ({final.name})")
        else:
            log(f"[bold cyan]▶ {desc.name}[/]" + (f" on {rt.world_size} processes" if rt.distributed and desc.trains
                                                  else ""))
            seed_everything(self.recipe.seed, desc.name)
            if rt.is_main:
                with writing(final) as tmp:
                    self._produce(desc, cfg, cfg_dict, parent, key, tmp)
            elif desc.trains:  # take part in training; what this process writes is thrown away
                with tempfile.TemporaryDirectory(prefix=f"edgekd-rank{rt.rank}-") as scratch:
                    self._produce(desc, cfg, cfg_dict, parent, key, Path(scratch))
            rt.barrier()  # the artifact is complete before any process reads it
            if rt.is_main:
                shutil.rmtree(self.ctx.work_dir(key), ignore_errors=True)  # checkpoints are no longer needed
            elif not is_complete(final):
                raise EdgekdError(
                    f"process {rt.rank} cannot see the {desc.name} artifact that rank 0 wrote at {str(final)!r}. On "
                    "several nodes the run's output folder must be on a filesystem every node shares (--out).")
        art = Artifact.load(final)
        self.artifacts.append(art)
        if rt.is_main and not cached and (said := stage_outcome(art.metrics)):
            log(f"[green]✓ {desc.name}[/] in {_duration(time.monotonic() - started)}: {said}")
        return art

    def _produce(self, desc: StageDescriptor, cfg, cfg_dict: dict, parent: Artifact | None, key: str, out: Path) -> None:
        if parent is not None:
            copy_preprocessing(parent.path, out)  # tokenizer / preprocessing travel with the model
        shared = self.ctx.runtime
        if not desc.trains:  # rank 0 alone runs it: its predictions must not wait for the other processes
            self.ctx.runtime = shared.local()
        try:
            result = desc.run(cfg, parent, self.ctx, out, key)
        finally:
            self.ctx.runtime = shared
        write_manifest(out, id=key, stage=desc.name, config=cfg_dict, metrics=result.get("metrics", {}),
                       parent=parent.id if parent else None, spec=result.get("spec"),
                       extra={"run": self._run_record(), **(result.get("extra") or {})})

    def _run_record(self) -> dict:
        """What `edgekd export ARTIFACT` needs to rebuild this run's context: the recipe, the run folder, the teacher."""
        teacher = next((a for a in self.artifacts if a.stage == "teacher"), None)
        return {"recipe": self.recipe.to_dict(), "run_dir": str(self.run_dir.resolve()),
                "teacher": teacher.path.name if teacher else None}

    def run(self) -> dict:
        """Run every stage (skipping cached ones); returns {stage name: metrics}."""
        rt = self.runtime or Runtime.from_settings(self.recipe.device, self.recipe.precision)
        self.ctx = Context(self.recipe, self.run_dir, runtime=rt)
        self.preflight()
        if rt.is_main:
            self._remove_stale_temporaries()
        rt.barrier()
        if rt.distributed or rt.device.type != "cpu":
            log(f"training on {rt.device} ({rt.world_size} process{'es' if rt.world_size > 1 else ''}, "
                f"precision {rt.precision})")
        self.artifacts = []
        parent = self._run_stage(STAGES["teacher"], self.recipe.teacher, None)
        self.ctx.teacher = parent
        # further teachers: one artifact each; the chain of stages continues from the primary teacher
        self.ctx.extra_teachers = [(self._run_stage(STAGES["teacher"], t.stage_config(), None), t.weight)
                                   for t in self.recipe.teachers]
        for entry in self.recipe.stages:
            parent = self._run_stage(STAGES[entry.name], entry.config, parent)
        summary = None
        if rt.is_main:
            from .report.run_summary import write_run_outputs

            summary = write_run_outputs(self.run_dir, self.recipe, self.artifacts, data=self.ctx.data.checks)
        rt.barrier()
        if summary is None:  # the other processes read what rank 0 wrote
            import json

            summary = json.loads((self.run_dir / "manifest.json").read_text(encoding="utf-8"))
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
