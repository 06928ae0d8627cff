"""What the stages of one run share: the recipe, the data, the teacher, caches and folders.

The engine owns paths: a stage writes only into the output folder it is given and keeps
resumable state only in `ctx.work_dir(key)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifact import Artifact, stable_hash, write_safetensors_atomic
from ..data import TaskData, load_data
from ..data.batching import Encoded, encode, warn_truncated
from ..recipe import Recipe
from .runtime import Runtime

@dataclass
class Context:
    recipe: Recipe
    run_dir: Path
    _data: TaskData | None = None
    teacher: Artifact | None = None
    _tokenizer: object = None
    _tokenizers: dict = field(default_factory=dict)  # folder -> tokenizer (an export's trimmed vocabulary)
    _encoded: dict = field(default_factory=dict)
    _teacher_logits: dict = field(default_factory=dict)
    runtime: Runtime = field(default_factory=Runtime.cpu)
    extra_teachers: list = field(default_factory=list)  # (artifact, weight) of the recipe's further `teachers:`
    _teacher_models: dict = field(default_factory=dict)  # artifact id -> model, loaded once per run
    _cross: bool | None = None  # cross_tokenizer, decided once

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def task(self) -> str:
        return self.recipe.task

    @property
    def data(self) -> TaskData:
        if self._data is None:
            self._data = load_data(self.recipe.data, self.recipe.task)
        return self._data

    def work_dir(self, key: str) -> Path:
        return self.run_dir / "work" / key

    def cache_dir(self) -> Path:
        d = self.run_dir / "cache"
        if self.runtime.is_main:
            d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def student_source(self) -> str | None:
        """Where a pretrained student (student.kind: pretrained) comes from, whose tokenizer the student reads
        with; None for a student built from the teacher."""
        s = self.recipe.student
        if s is None or s.kind != "pretrained":
            return None
        if s.path is not None:
            from ..models.hf import resolve_model_path

            return str(resolve_model_path(s.path))
        return s.hub

    @property
    def tokenizer(self):
        """The run's tokenizer: the student's (the teacher's unless a pretrained student brings its own). Every
        model after the teacher reads the texts with it; the teacher's outputs come from its own (teacher_encoded)."""
        if self._tokenizer is None and self.task == "text-classification":
            from transformers import AutoTokenizer

            source = self.student_source
            self._tokenizer = AutoTokenizer.from_pretrained(source or str(self.teacher.path),
                                                            revision=self.recipe.student.revision if source else None)
        return self._tokenizer

    @property
    def teacher_tokenizer(self):
        """The run's teacher's tokenizer (saved in its artifact)."""
        return self._tokenizer_at(str(self.teacher.path)) if self.cross_tokenizer else self.tokenizer

    @property
    def cross_tokenizer(self) -> bool:
        """Whether student and teacher read the texts differently (a pretrained student with its own tokenizer)."""
        if self._cross is None:
            self._cross = (self.task == "text-classification" and self.student_source is not None
                           and not same_tokenizer(self.tokenizer, self._tokenizer_at(str(self.teacher.path))))
        return self._cross

    def teacher_id_map(self, max_examples: int | None = None) -> tuple[np.ndarray | None, str | None]:
        """Where the student reads the texts with a tokenizer of its own: the map of its ids onto the teacher's,
        if the two cut the train split's first `max_examples` texts into the same pieces (the teacher can then read
        the student's batches, position by position: data/alignment.py); else None and the first text they cut
        differently."""
        from ..data.alignment import aligned_map

        texts = self.data.train.head(max_examples).texts
        return aligned_map(self.tokenizer, self.teacher_tokenizer, texts, self.encoded("train", max_examples).ids,
                           self.teacher_encoded("train", max_examples).ids)

    def teacher_encoded(self, split: str, max_examples: int | None = None) -> Encoded:
        """A split as the run's teacher reads it (with its own tokenizer where the student's differs)."""
        return self.encoded(split, max_examples, tokenizer_dir=self.teacher.path if self.cross_tokenizer else None)

    def encoded(self, split: str, max_examples: int | None = None, tokenizer_dir: str | Path | None = None) -> Encoded:
        """A split tokenized once per run; `tokenizer_dir`: with the tokenizer saved there instead of the run's
        (an export folder whose trimmed vocabulary renumbers the ids)."""
        key = (split, max_examples, None if tokenizer_dir is None else str(tokenizer_dir))
        if key not in self._encoded:
            s = getattr(self.data, split).head(max_examples)
            enc = encode(s, self._tokenizer_at(key[2]), self.recipe.data.max_length, warn=False)
            # said once for a split, not again for every subset a stage reads: again only where more were truncated
            # than any read of it so far (the most that was said)
            said = max((e.truncated for k, e in self._encoded.items() if k[0] == split and k[2] == key[2]), default=0)
            if enc.truncated > said:
                warn_truncated(enc.truncated, len(enc), s.name, self.recipe.data.max_length)
            self._encoded[key] = enc
        return self._encoded[key]

    def _tokenizer_at(self, folder: str | None):
        if folder is None:
            return self.tokenizer
        if folder not in self._tokenizers:
            from transformers import AutoTokenizer

            self._tokenizers[folder] = AutoTokenizer.from_pretrained(folder)
        return self._tokenizers[folder]

    def teacher_model(self, teacher: Artifact | None = None):
        """A teacher's model (default: the run's), loaded once per run."""
        teacher = teacher or self.teacher
        if teacher.id not in self._teacher_models:
            from ..models.spec import load_model_from_artifact

            self._teacher_models[teacher.id] = load_model_from_artifact(teacher)
        return self._teacher_models[teacher.id]

    def teacher_logits(self, split: str, max_examples: int | None = None, teacher: Artifact | None = None) -> np.ndarray:
        """A teacher's logits on a split (default: the run's teacher; a further teacher reads the texts with its own
        tokenizer), computed once per run and cached on disk (safetensors)."""
        teacher = teacher or self.teacher
        primary = teacher.id == self.teacher.id
        key = (split, max_examples) if primary else (teacher.id, split, max_examples)
        if key in self._teacher_logits:
            return self._teacher_logits[key]
        from safetensors.numpy import load_file

        path = self._teacher_logits_path(teacher.id, split, max_examples)
        if path.is_file():
            logits = load_file(str(path))["logits"]
        else:
            from .predict import predict_logits

            own_tokenizer = (not primary or self.cross_tokenizer) and self.task == "text-classification"
            data = self.encoded(split, max_examples, tokenizer_dir=teacher.path if own_tokenizer else None)
            model = self.teacher_model(teacher)
            # every process computes a shard and receives the whole array; rank 0 writes the cache
            logits = predict_logits(model, data, desc=f"teacher outputs ({split})", runtime=self.runtime)
            self.keep_teacher_logits(teacher.id, split, logits, max_examples)
        self._teacher_logits[key] = logits
        return logits

    def keep_teacher_logits(self, teacher_id: str, split: str, logits: np.ndarray, max_examples: int | None = None
                            ) -> None:
        """Cache a teacher's logits on a split's first `max_examples` (default: all) where `teacher_logits` reads
        them. The teacher stage hands in those of its own evaluation on dev and test (its artifact's id is known
        before it is written), so the stages after it read them instead of running the teacher again; only rank 0
        writes."""
        if self.runtime.is_main:
            write_safetensors_atomic(self._teacher_logits_path(teacher_id, split, max_examples), {"logits": logits})

    def _teacher_logits_path(self, teacher_id: str, split: str, max_examples: int | None) -> Path:
        name = stable_hash({"teacher": teacher_id, "data": self.data.fingerprint, "split": split,
                            "n": max_examples, "max_length": self.recipe.data.max_length})
        return self.cache_dir() / f"teacher-logits-{split}-{name}.safetensors"


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers turn every text into the same ids: the same class and the same vocabulary, normaliser
    and pre-tokeniser (a fast tokenizer's whole serialised pipeline)."""
    if type(a) is not type(b):
        return False
    fa, fb = getattr(a, "backend_tokenizer", None), getattr(b, "backend_tokenizer", None)
    if fa is not None and fb is not None:
        return fa.to_str() == fb.to_str()
    return a.get_vocab() == b.get_vocab()
