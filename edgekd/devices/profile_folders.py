"""Where device profiles are found: the user's folder first, then the profiles shipped with edgekd.

The shipped profiles and the host's estimator calibration live in the repository's top-level `profiles/` folder; the
wheel carries them as package data (`edgekd/profiles/`, mapped there at build time by setup.py) and they are read
through importlib.resources, so a wheel install finds them just as a source checkout does. A user folder
(`--profiles-dir` or EDGEKD_PROFILES_DIR) adds profiles; one named like a shipped profile replaces it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ProfileError

if TYPE_CHECKING:  # importlib.resources.abc is Python 3.11+; annotations only
    from importlib.resources.abc import Traversable

ENV_VAR = "EDGEKD_PROFILES_DIR"
SHIPPED = "shipped"


@dataclass(frozen=True)
class ProfileFile:
    name: str
    path: Traversable  # a pathlib.Path for a user folder
    origin: str  # the user folder it came from, or SHIPPED
    overrides: bool = False  # a user profile hiding the shipped one of the same name


def shipped_dir() -> Traversable:
    packaged = files("edgekd").joinpath("profiles")  # an installed wheel
    if packaged.is_dir():
        return packaged
    # A source checkout (an editable install too): the top-level folder the build maps into the wheel.
    checkout = Path(__file__).resolve().parents[2] / "profiles"
    if checkout.is_dir():
        return checkout
    raise ProfileError(f"edgekd's device profiles are missing: neither {packaged} nor {checkout} exists. Reinstall "
                       "edgekd, or give a folder of profiles with --profiles-dir / EDGEKD_PROFILES_DIR.")


def shipped_calibration() -> Traversable:
    return shipped_dir().joinpath("calibration").joinpath("host-cpu.json")


def user_dir() -> Path | None:
    value = os.environ.get(ENV_VAR)
    if not value:
        return None
    path = Path(value)
    if not path.is_dir():
        # Falling back to the shipped profiles would silently measure with the wrong ones.
        raise ProfileError(f"{ENV_VAR}={value!r} is not a folder; point it (or --profiles-dir) at a folder of "
                           "<name>.yaml profiles, or unset it to use the shipped profiles.")
    return path


def use_user_dir(path: str | Path) -> None:
    """Search `path` before the shipped profiles, in this process and in the processes it starts."""
    # The environment variable is the one setting every loader reads, so the CLI option and
    # EDGEKD_PROFILES_DIR cannot disagree, and child processes inherit it.
    os.environ[ENV_VAR] = str(path)


def folders() -> list[tuple[str, Traversable]]:
    """(origin, folder) in search order."""
    user = user_dir()
    return ([(str(user), user)] if user is not None else []) + [(SHIPPED, shipped_dir())]


def _yaml_files(folder: Traversable) -> dict[str, Traversable]:
    return {f.name.removesuffix(".yaml"): f for f in folder.iterdir() if f.name.endswith(".yaml") and f.is_file()}


def profile_files() -> dict[str, ProfileFile]:
    """Every profile name -> its file, sorted by name; a user profile wins over a shipped one."""
    found: dict[str, ProfileFile] = {}
    for origin, folder in reversed(folders()):  # shipped first, so that user files replace them
        for name, path in _yaml_files(folder).items():
            found[name] = ProfileFile(name, path, origin, overrides=name in found)
    return dict(sorted(found.items()))


def searched() -> str:
    """The folders searched, for messages."""
    return " then ".join(repr(origin) if origin != SHIPPED else "the shipped profiles" for origin, _ in folders())
