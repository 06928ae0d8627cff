"""YAML reading for recipes, `--set` values and device profiles.

PyYAML follows YAML 1.1, where a float needs a dot: `lr: 5e-5` loads as the *string* "5e-5".
The configs are strict (a number field refuses strings), so that everyday spelling would be an
error; this loader reads exponent floats as YAML 1.2 does. Everything else is `yaml.safe_load`.
"""
from __future__ import annotations

import re
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """SafeLoader plus YAML 1.2 exponent floats (`1e3`, `5e-5`, `-2.5E+4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 — _Loader is a SafeLoader
