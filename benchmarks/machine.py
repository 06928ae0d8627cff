"""What every benchmark result records beside its numbers: the machine, the package versions and the commit."""
from __future__ import annotations

import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def host_facts() -> dict:
    from edgekd.devices.profiles import detect_host

    host = detect_host()
    return {**host, "python": platform.python_version(), "os": platform.platform()}


def versions() -> dict:
    import edgekd

    return {p: version(p) for p in ("torch", "onnxruntime", "onnx", "transformers", "torch-pruning", "numpy")} | \
        {"edgekd": edgekd.__version__}


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"
