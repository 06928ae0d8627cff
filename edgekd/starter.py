"""A starter recipe for a user's own model and data: what `edgekd init` writes and `edgekd compress` runs.

The defaults are the ones the docs recommend for a text classifier: a student of every other teacher layer,
distillation, half the non-embedding parameters pruned in two steps (heads and FFN channels, ranked by the loss they
carry), QAT INT8, and the target profile beside the measured host. The recipe is written as commented YAML so that a
run can be read, edited and run again with `edgekd run`.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from .data.loading import FORMATS
from .errors import DataError, RecipeError
from .recipe import validate_recipe
from .yamlio import safe_load

TEXT_COLUMNS = ("sentence", "text", "review", "content", "document", "question", "utterance")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "verdict", "sentiment")
STUDENTS = "layers | layers:I,J,… | pretrained:PATH-OR-HUB-ID | cnn | bilstm"


def data_columns(data: Path, text_column: str | None, label_column: str | None) -> tuple[str, str]:
    """The text and label columns of a data folder's train file: the given ones, else the usual names."""
    files = sorted(p for p in data.glob("train.*") if p.suffix in FORMATS) if data.is_dir() else []
    if not files:
        raise DataError(f"{str(data)!r} has no train.tsv, train.csv or train.jsonl: a data folder holds train, dev and "
                        "test files with a text column and a label column.")
    path = files[0]
    with path.open(encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            first = f.readline()
            try:
                columns = list(json.loads(first))
            except (ValueError, TypeError):
                raise DataError(f"{str(path)!r} line 1 is not a JSON object: {first[:80]!r}.") from None
        else:
            columns = next(csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ","), [])

    def pick(given: str | None, usual: tuple[str, ...], what: str, flag: str) -> str:
        if given is not None:
            if given not in columns:
                raise DataError(f"{str(path)!r} has no column {given!r} (its columns: {columns}); fix {flag}.")
            return given
        found = [c for c in columns if c.strip().lower() in usual]
        if not found:
            raise DataError(f"Cannot tell the {what} column of {str(path)!r} (its columns: {columns}); name it with "
                            f"{flag}.")
        return found[0]

    return pick(text_column, TEXT_COLUMNS, "text", "--text-column"), pick(label_column, LABEL_COLUMNS, "label",
                                                                             "--label-column")


def dev_lines(data: Path) -> str:
    """The recipe's data lines for dev: none where the folder has a dev file, its name where the folder calls it
    validation (as Hugging Face data sets do), else a tenth of train held out as dev (data.dev_holdout): many data
    sets come as train and test only, and epochs and pruning steps are chosen on dev, never on test."""
    def has(split: str) -> bool:
        return any((data / f"{split}{suffix}").is_file() for suffix in FORMATS)

    if not has("test"):
        raise DataError(f"{str(data)!r} has no test.tsv, test.csv or test.jsonl: edgekd reports every accuracy on a "
                        "test split, labelled texts held out of training; add one beside the train file.")
    if has("dev"):
        return ""
    if has("validation"):
        return '  dev_split: "validation"\n'
    return "  dev_holdout: 0.1                # no dev file: a tenth of train's texts is held out as dev\n"


def model_facts(model: str, trust_remote_code: bool = False) -> dict:
    """What the recipe's defaults depend on: where the model is and whether it has a trained head."""
    from .models.hf import check_model_folder, has_trained_head, read_config, resolve_model_path

    folder = resolve_model_path(model) if not _is_hub_id(model) else None
    if folder is not None:
        check_model_folder(folder)
    config = read_config(str(folder or model), trust_remote_code=trust_remote_code)
    depth = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None)
    return {"source": "path" if folder is not None else "hub", "head": has_trained_head(config), "depth": depth}


def _is_hub_id(model: str) -> bool:
    return not Path(model).exists() and not model.startswith("pkg://") and bool(re.fullmatch(r"[\w.-]+/[\w.-]+", model))


# From this depth on, the default layers student keeps a third of the teacher's layers (12 -> 4, TinyBERT-4's depth):
# a deep teacher has more layers to spare than a 6-layer one, whose half is the default below it.
DEEP_TEACHER = 12


def student_section(spec: str | None, depth: int | None = None) -> str:
    spec = (spec or "layers").strip()
    if spec == "layers" and depth is not None and depth >= DEEP_TEACHER:
        from .models.students import uniform_layer_map

        layers = uniform_layer_map(depth // 3, depth)
        return (f"student:\n  kind: layers                    # a third of the teacher's {depth} layers, ending with the "
                f"last\n  layers: {layers}\n")
    if spec == "layers":
        return ("student:\n  kind: layers                    # the teacher's own layers: every other one, ending with "
                "the last\n  # layers: [1, 3, 5]             # or name the teacher layers to keep\n")
    if spec.startswith("layers:"):
        try:
            layers = [int(x) for x in spec.split(":", 1)[1].split(",") if x.strip()]
        except ValueError:
            layers = []
        if not layers:
            raise RecipeError(f"--student {spec!r}: write layers:I,J,… with teacher layer indices, e.g. layers:1,3,5.")
        return f"student:\n  kind: layers\n  layers: {layers}\n"
    if spec in ("cnn", "bilstm"):
        extra = "  channels: [256, 256]\n" if spec == "cnn" else "  lstm_hidden: 256\n"
        return f"student:\n  kind: {spec}                      # a cross-architecture student (docs/distillation.md)\n{extra}"
    if spec.startswith("pretrained:") and spec.split(":", 1)[1].strip():
        source = spec.split(":", 1)[1].strip()
        key = "hub" if _is_hub_id(source) else "path"
        return (f"student:\n  kind: pretrained                # a small pretrained model with its own tokenizer "
                f"(docs/distillation.md)\n  {key}: {source}\n  # layers: [0, 2, 4]             # or keep some "
                "of its own layers\n")
    raise RecipeError(f"--student {spec!r} is not a student edgekd builds; give one of {STUDENTS}.")


def starter_recipe(model: str, data: Path, profile: str, *, student: str | None = None, out: Path | None = None,
                   text_column: str | None = None, label_column: str | None = None, name: str | None = None,
                   trust_remote_code: bool = False, check: bool = True) -> str:
    """The recipe as commented YAML; validated before it is returned. `check`: read the model's config and the data's
    columns (without it, placeholders for a template the user fills in)."""
    from .devices.profiles import load_profile

    if check:
        facts = model_facts(model, trust_remote_code)
        text, label = data_columns(data, text_column, label_column)
        dev = dev_lines(data)
    else:
        facts = {"source": "path", "head": True, "depth": None}
        text, label = text_column or "sentence", label_column or "label"
        dev = ""
    target = load_profile(profile)
    name = name or re.sub(r"[^\w.-]+", "-", Path(model.rstrip("/")).name).strip("-.") or "my-model"
    out = out or Path("runs") / name
    profiles = ["host-cpu"] + ([target.name] if target.name != "host-cpu" else [])
    npu = target.quantization.scope == "full"
    q = json.dumps  # paths and ids as quoted YAML strings: any character a file name may hold
    source = (f"  path: {q(model)}" if facts["source"] == "path" else f"  hub: {q(model)}") + "\n"
    finetune = ("  # finetune: {epochs: 2}       # a model without a trained classification head needs this\n"
                if facts["head"] else
                "  # no trained classification head: a new one is trained on the data first\n"
                "  finetune: {epochs: 2, batch_size: 32, lr: 5.0e-5}\n")
    text_out = f"""# edgekd recipe for {model} on {data}: edit it, run it with `edgekd run FILE` (every key: docs/recipes.md)
name: {name}
task: text-classification
seed: 0
output: {q(str(out))}
data:
  path: {q(str(data))}
  text_column: {q(text)}
  label_column: {q(label)}
{dev}  max_length: 128                 # tokens per text; longer texts are truncated
teacher:
{source}{finetune}  trust_remote_code: {str(trust_remote_code).lower()}
{student_section(student, facts["depth"])}stages:
  - distill: {{epochs: 2, lr: 1.0e-4, temperature: 2.0, alpha: 0.9}}
  # at most half the non-embedding parameters (heads and FFN channels) in 2 prune -> recover steps (docs/pruning.md)
  - prune: {{budget: {{params: 0.5}}, steps: 2, importance: loss, recovery: {{epochs: 0.5}}}}
  - qat: {{epochs: 1, lr: 2.0e-5}}
  - export: {{min_agreement: 0.99{", devices: [" + target.name + "], device_min_agreement: 0.97" if npu else ""}}}
  - profile: {{rounds: 3}}
# host-cpu is measured (model.onnx is built for it); {"the target is estimated and checked" if target.name != "host-cpu"
                                                      else "add a device profile to estimate and check it"}
profiles: [{", ".join(profiles)}]
"""
    try:
        validate_recipe(safe_load(text_out), "the starter recipe")
    except RecipeError as e:  # a model or data name YAML cannot hold as written
        raise RecipeError(f"{e} Write the recipe with `edgekd init` and edit it.") from None
    return text_out


def with_overrides(text: str, overrides: list[str]) -> str:
    """The recipe with `--set` changes: as written when there are none, else dumped again (its comments are lost,
    so the file says so), so that `edgekd run` of the written file is the run that was made."""
    if not overrides:
        return text
    import yaml

    from .recipe import apply_overrides

    raw = apply_overrides(safe_load(text), overrides)
    validate_recipe(raw, "the starter recipe with --set")
    return (f"# edgekd starter recipe with {', '.join(overrides)} (comments dropped; every key: docs/recipes.md)\n"
            + yaml.safe_dump(raw, sort_keys=False))
