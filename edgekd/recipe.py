"""Recipes: YAML -> validated pydantic models, with errors that name the field path.

A recipe describes the whole run: teacher, data, student, the ordered stages and their configs,
the device profiles to target and the output folder. It is checked completely (including the
stage order) before any work starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from .configs import DataConfig, ExtraTeacherConfig, Strict, StudentConfig, TeacherConfig, type_hint
from .errors import RecipeError
from .stages import FIRST, LISTED
from .yamlio import safe_load

# Derived from the stage registry (stages.py), the one place a stage is declared.
STAGE_CONFIGS = {name: d.config_cls for name, d in LISTED.items()}
ALLOWED_AFTER = {name: set(d.after) for name, d in LISTED.items()}


class _StageEntryBase(Strict):
    """One item of `stages:` — a mapping with exactly one key, the stage name."""

    @model_validator(mode="before")
    @classmethod
    def _one_key(cls, value: Any):
        if isinstance(value, str):  # "- export" with default config
            value = {value: {}}
        if not isinstance(value, dict) or len(value) != 1:
            got = sorted(map(str, value)) if isinstance(value, dict) else repr(value)
            raise ValueError(f"each stage is a mapping with one key, one of {sorted(STAGE_CONFIGS)}; got {got}")
        (name, cfg), = value.items()
        if name not in STAGE_CONFIGS:
            raise ValueError(f"unknown stage {name!r}; known stages: {', '.join(sorted(STAGE_CONFIGS))}")
        return {name: {} if cfg is None else cfg}

    @property
    def name(self) -> str:
        return next(k for k in STAGE_CONFIGS if getattr(self, k) is not None)

    @property
    def config(self):
        return getattr(self, self.name)


StageEntry = create_model("StageEntry", __base__=_StageEntryBase,
                          **{name: (cfg | None, None) for name, cfg in STAGE_CONFIGS.items()})


class Recipe(Strict):
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    task: Literal["text-classification", "image-classification"]
    seed: int = 0
    output: str = Field(..., min_length=1, description="run folder; stage artifacts go under output/stages")
    data: DataConfig
    teacher: TeacherConfig
    teachers: list[ExtraTeacherConfig] = Field(default_factory=list, description="further teachers for the distillation "
                                               "(logit terms average them; hidden/attention/relation terms use `teacher`)")
    student: StudentConfig | None = None
    stages: list[StageEntry] = Field(default_factory=list)
    profiles: list[str] = Field(default_factory=lambda: ["host-cpu"])
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:[0-9]+)?)$",
                        description="where training and prediction run: auto (a GPU when present), cpu, cuda, cuda:N, mps")
    precision: Literal["no", "bf16", "fp16", "auto"] = Field(
        "no", description="mixed precision of training and prediction; auto: bf16 on a GPU that has it, else no")

    @field_validator("precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any):
        # YAML 1.1 reads a bare `no` as false: take it as the "no" it was written as
        return "no" if value is False else value

    @field_validator("stages")
    @classmethod
    def _order(cls, stages: list[StageEntry]):
        previous = FIRST
        seen = set()
        for i, entry in enumerate(stages):
            name = entry.name
            if name in seen:
                raise ValueError(f"stage {name!r} appears twice (stages[{i}])")
            if previous not in ALLOWED_AFTER[name]:
                allowed = " or ".join(sorted(ALLOWED_AFTER[name]))
                raise ValueError(f"stages[{i}] {name!r} cannot follow {previous!r}; it must come after {allowed}")
            seen.add(name)
            previous = name
        return stages

    @model_validator(mode="after")
    def _cross_fields(self):
        names = [s.name for s in self.stages]
        if "distill" in names and self.student is None:
            raise ValueError("the distill stage needs a `student:` section")
        for i, extra in enumerate(self.teachers):
            if extra.model_dump(exclude={"weight", "seed"}) == self.teacher.model_dump() and extra.seed in (None, self.seed):
                raise ValueError(f"teachers[{i}] is the same as `teacher` (same source and fine-tuning): a copy adds "
                                 "nothing; give it another source, seed or fine-tuning, or remove it")
        if self.student is not None and self.student.kind == "bilstm":
            if self.task != "text-classification":
                raise ValueError("student.kind=bilstm is a text student; use kind=cnn for an image task")
        if self.student is not None and self.student.init_embeddings_from_teacher == "svd" \
                and self.task != "text-classification":
            raise ValueError("student.init_embeddings_from_teacher: svd reduces a text student's token embeddings; an "
                             "image CNN has none: remove it")
        if self.task == "text-classification" and self.data.sklearn is not None:
            raise ValueError("data.sklearn=digits is an image data set; set task: image-classification")
        for i, entry in enumerate(self.stages):
            cfg = entry.config
            if entry.name == "profile" and cfg.compare_teacher and "export" in names:
                export = self.stages[names.index("export")].config
                if not export.teacher:
                    raise ValueError(f"stages[{i}].profile.compare_teacher needs the teacher's FP32 export: set "
                                     "export.teacher: true, or profile.compare_teacher: false")
            if (entry.name == "prune" and cfg is not None and self.student is not None
                    and self.student.kind in ("cnn", "bilstm") and cfg.transformer_only()):
                raise ValueError(f"stages[{i}].{cfg.transformer_only()[0]}; a {self.student.kind} student has none: "
                                 "set it to 0 (its channels are pruned by ratio or budget)")
            if entry.name == "export" and cfg is not None and cfg.devices:
                missing = [d for d in cfg.devices if d not in self.profiles]
                if missing:
                    raise ValueError(f"stages[{i}].export.devices: {missing} not in the recipe's profiles "
                                     f"{self.profiles}; add them to `profiles:` (a device build is profiled there)")
        return self

    def to_dict(self) -> dict:
        """Plain data that validates back to the same recipe (unused stage slots dropped)."""
        return self.model_dump(mode="json", exclude_none=True)

    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]


def format_validation_error(err: ValidationError, source: str) -> str:
    """One paragraph: every failing field as a path like `stages[2].prune.ratio`, its value and the rule."""
    lines = []
    for e in err.errors():
        path = ""
        for part in e["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += ("." if path else "") + str(part)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (misspelled?) — remove it or check the README's recipe reference"
        msg += type_hint(e)
        value = e.get("input")
        shown = "" if e["type"] in ("missing",) or isinstance(value, (dict, list)) else f" (got {value!r})"
        lines.append(f"{path}: {msg}{shown}" if path else f"{msg}{shown}")
    return f"Invalid recipe {source}: " + "; ".join(lines) + "."


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected key=value, e.g. --set data.path=../shared/data/sst2")
    key, raw = item.split("=", 1)
    if not key:
        raise RecipeError(f"--set {item!r}: empty key")
    try:
        value = safe_load(raw) if raw else ""
    except yaml.YAMLError:
        raise RecipeError(f"--set {item!r}: value {raw!r} is not valid YAML; quote it or fix the brackets.") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`--set a.b.c=value` (YAML-typed value); `stages.0.prune.ratio=0.5` indexes lists."""
    for item in overrides:
        path, value = parse_override(item)
        node: Any = raw
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(f"--set {item!r}: {'.'.join(path[:i + 1])} is not a valid list index")
                node = node[int(part)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise RecipeError(f"--set {item!r}: {'.'.join(path[:i])} is not a mapping")
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise RecipeError(f"--set {item!r}: {last} is not a valid list index")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise RecipeError(f"--set {item!r}: parent of {last!r} is not a mapping")
    return raw


def load_recipe_dict(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        raise RecipeError(f"Recipe {str(p)!r} is a folder; give the path of a YAML recipe file (see recipes/).")
    if not p.is_file():
        raise RecipeError(f"Recipe file {str(p)!r} does not exist; give the path of a YAML recipe (see recipes/).")
    try:
        raw = safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RecipeError(f"Recipe file {str(p)!r} is not UTF-8 text ({e.reason}); save it as UTF-8.") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"Recipe file {str(p)!r} is not valid YAML: {e}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise RecipeError(f"Recipe file {str(p)!r} must be a YAML mapping with keys name, task, data, teacher, stages, …")
    return raw


def validate_recipe(raw: dict, source: str = "<recipe>") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, source)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    raw = apply_overrides(load_recipe_dict(path), overrides or [])
    recipe = validate_recipe(raw, repr(str(path)))
    return recipe
