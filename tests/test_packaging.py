"""A built wheel carries the shipped device profiles and the host calibration, and an install of it finds them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # builds a wheel
SHIPPED = REPO / "profiles"  # where the profiles live in git; the wheel has them as edgekd/profiles/


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy: a build writes build/ and *.egg-info next to pyproject.toml.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ("edgekd", "profiles"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation and no index: build offline with this environment's setuptools (a dev extra).
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (built,) = out.glob("edgekd-*.whl")
    return built


def test_wheel_contains_every_shipped_profile_and_the_calibration(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    profiles = sorted(p.name for p in SHIPPED.glob("*.yaml"))
    assert "host-cpu.yaml" in profiles
    for name in profiles:
        assert f"edgekd/profiles/{name}" in names
    assert "edgekd/profiles/calibration/host-cpu.json" in names
    # every subpackage of the source tree is in the wheel (the package list is found, not written by hand)
    packages = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "edgekd").rglob("__init__.py")}
    assert packages and all(f"{pkg}/__init__.py" in names for pkg in packages), packages - {n.rsplit("/", 1)[0] for n in names}


def test_installed_wheel_finds_host_cpu_and_the_calibration(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip install puts in site-packages
    code = ("import sys, edgekd\n"
            "from edgekd.devices.profiles import list_profiles, load_profile\n"
            "from edgekd.devices.estimate import load_calibration\n"
            "assert edgekd.__file__.startswith(sys.argv[1]), edgekd.__file__\n"
            "assert load_profile('host-cpu').measured and 'params' in load_calibration()\n"
            "print(','.join(p.name for p in list_profiles()))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEKD_PROFILES_DIR", "EDGEKD_CALIBRATION")}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install of the checkout
    proc = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().split(",") == sorted(p.stem for p in SHIPPED.glob("*.yaml"))
