"""Artifact directories: the contract between stages.

An artifact is a folder with `manifest.json` (stage, config, metrics, parent artifact id, edgekd
version, and the architecture spec needed to rebuild the module) plus weights in safetensors
(never pickle) and the tokenizer / preprocessing files. It is written into a temporary sibling
folder and renamed into place only when complete, so a half-written artifact is never mistaken
for a finished one, and a finished one is never rewritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .errors import EdgekdError

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
MANIFEST_VERSION = 1

# Files that travel with a model from artifact to artifact (tokenizer and preprocessing).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "merges.txt",
                   "vocab.json", "sentencepiece.bpe.model", "spiece.model")
PREPROCESSING_FILES = (*TOKENIZER_FILES, "preprocess.json")


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-able object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def file_hash(path: Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


@dataclass
class Artifact:
    """A committed (complete) artifact folder and its manifest."""

    path: Path
    manifest: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def stage(self) -> str:
        return self.manifest["stage"]

    @property
    def spec(self) -> dict:
        return self.manifest.get("spec", {})

    @property
    def metrics(self) -> dict:
        return self.manifest.setdefault("metrics", {})

    def file(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def load(cls, path: str | Path) -> "Artifact":
        p = Path(path)
        mf = p / MANIFEST
        if not mf.is_file():
            raise EdgekdError(
                f"{str(p)!r} is not an edgekd artifact: it has no {MANIFEST}. Point to a folder written by an "
                "edgekd stage (e.g. <run>/stages/qat-…)."
            )
        try:
            manifest = json.loads(mf.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EdgekdError(f"{str(mf)!r} is not valid JSON ({e}); the artifact is damaged — delete it and re-run.") from None
        for key in ("id", "stage", "edgekd_version"):
            if key not in manifest:
                raise EdgekdError(f"{str(mf)!r} lacks the field {key!r}; the artifact is damaged — delete it and re-run.")
        return cls(p, manifest)


def is_complete(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def parent_artifact(artifact: Artifact) -> Artifact | None:
    """The artifact `artifact` was made from, where it sits beside it (a run's stages/ folder names each
    NN-<stage>-<id>); None where it has no parent or the parent is elsewhere."""
    parent = artifact.manifest.get("parent")
    if not parent:
        return None
    for folder in sorted(artifact.path.parent.glob(f"*-{parent}")):
        if is_complete(folder):
            found = Artifact.load(folder)
            if found.id == parent:
                return found
    return None


@contextmanager
def writing(final_path: Path) -> Iterator[Path]:
    """Yield a temporary folder next to `final_path`; rename it into place on success.

    On failure the temporary folder is removed and nothing at `final_path` is touched. If
    `final_path` already exists (a complete artifact), it is never overwritten.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final_path.name}-", dir=final_path.parent))
    try:
        yield tmp
        if not (tmp / MANIFEST).is_file():
            raise RuntimeError(f"internal: stage wrote no {MANIFEST} into {tmp}")
        if final_path.exists():
            raise EdgekdError(f"{str(final_path)!r} already exists; edgekd never overwrites a completed artifact.")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private (0700); a finished artifact is an ordinary folder
        os.replace(tmp, final_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(folder: Path, *, id: str, stage: str, config: dict, metrics: dict, parent: str | None,
                   spec: dict | None = None, extra: dict | None = None) -> dict:
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "id": id,
        "stage": stage,
        "edgekd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parent": parent,
        "config": config,
        "metrics": metrics,
        "spec": spec or {},
        **(extra or {}),
    }
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest


def write_json_atomic(path: Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_safetensors_atomic(path: Path, arrays: dict) -> None:
    """numpy arrays into a safetensors cache file that a reader never sees half written."""
    from safetensors.numpy import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file(arrays, str(tmp))
    os.replace(tmp, path)


def _json_default(o: Any):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_preprocessing(folder: Path) -> dict:
    """A model folder's preprocess.json: what the teacher stage recorded from the data (input type, max_length, the
    class names under "labels"); {} where the folder has none."""
    path = Path(folder) / "preprocess.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def renumbered_vocabulary(manifest: dict) -> bool:
    """Whether an export's models take ids of its folder's renumbered tokenizer (export.vocabulary: fallback) rather
    than the run's; exports made before the `nearest` mode trimmed only that way and say just "trimmed"."""
    v = manifest.get("vocabulary") or {}
    return bool(v.get("renumbered", v.get("trimmed")))


def copy_preprocessing(src: Path, dst: Path) -> None:
    for name in PREPROCESSING_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
