"""Match a trained classification head to the data's labels by name.

The data numbers its classes in the sorted order of its label values (data/loading.py); a classifier fine-tuned
elsewhere numbers them as its `id2label` says. Reading one with the other's numbers silently swaps classes, so a
head that exists is matched by name (case and surrounding space ignored) and its output rows are reordered so that
class i means the data's label i. Integer data labels match a head only by index, and only when the head's names
are the defaults transformers gives (LABEL_0, LABEL_1, …) or the indices themselves. `labels` in a recipe
(data label -> the model's class index) says it outright where names cannot.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import ModelError

_DEFAULT_NAME = re.compile(r"label_?(\d+)")


def _norm(name) -> str:
    return str(name).strip().lower()


def _index_names(id2label: dict) -> dict[int, str]:
    return {int(i): str(n) for i, n in (id2label or {}).items()}


def class_order(id2label: dict, data_labels: list[str], given: dict[str, int] | None, where: str,
                key: str) -> tuple[list[int], dict]:
    """For each data label (in the data's order), the model class that means it; and a record of how they matched.

    `id2label`: the model's {index: name}; `given`: the recipe's {data label: model index}, or None; `key`: the
    recipe key that says it (named in every refusal)."""
    model = _index_names(id2label)
    n = len(model)
    if given is not None:
        unknown = [k for k in given if k not in data_labels]
        missing = [d for d in data_labels if d not in given]
        bad = {k: v for k, v in given.items() if not 0 <= v < n}
        if unknown or missing or bad or len(set(given.values())) != len(given):
            raise ModelError(
                f"{key} must give each of the data's labels {data_labels} a distinct class index of the model at "
                f"{where!r} (0…{n - 1}); got {given}" + (f" (not labels of the data: {unknown})" if unknown else "")
                + (f" (missing: {missing})" if missing else "") + (f" (no such class: {bad})" if bad else "") + ".")
        order = [given[d] for d in data_labels]
        return order, {"matched_by": key, "order": order, "dropped": _dropped(model, order)}
    defaults = all(_DEFAULT_NAME.fullmatch(_norm(name)) and int(_DEFAULT_NAME.fullmatch(_norm(name))[1]) == i
                   or _norm(name) == str(i) for i, name in model.items())
    integer_data = all(d.lstrip("-").isdigit() for d in data_labels)
    if integer_data and defaults:
        order = [int(d) for d in data_labels]
        if all(0 <= i < n for i in order):
            return order, {"matched_by": "index", "order": order, "dropped": _dropped(model, order)}
    by_name = {}
    for i, name in model.items():
        by_name.setdefault(_norm(name), []).append(i)
    if not integer_data and all(len(by_name.get(_norm(d), [])) == 1 for d in data_labels):
        order = [by_name[_norm(d)][0] for d in data_labels]
        return order, {"matched_by": "name", "order": order, "dropped": _dropped(model, order)}
    names = [model[i] for i in sorted(model)]
    example = ", ".join(f"{d}: {i}" for i, d in enumerate(data_labels))
    raise ModelError(
        f"The classifier at {where!r} names its classes {names} (in its order), which do not match the data's labels "
        f"{data_labels}" + (" (integers, which match a classifier only by index when its classes have the default "
                            "names LABEL_0, LABEL_1, …)" if integer_data else "")
        + f". Say which class of the model each data label is with {key}, e.g. {key}: {{{example}}}, or fine-tune "
        "a fresh head on the data (teacher.finetune, without a trained head).")


def _dropped(model: dict[int, str], order: list[int]) -> list[str]:
    """The model's classes that no data label takes (the teacher knows a class the data never shows)."""
    return [model[i] for i in sorted(model) if i not in order]


def output_layer(model: nn.Module, num_classes: int) -> nn.Linear:
    """The Linear that writes a classifier's logits: the last one under its head whose outputs are the classes."""
    found = [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes
             and ("classifier" in name or "score" in name or name.endswith(("head", "out_proj")))]
    if not found:
        raise ModelError(f"Cannot find the classification layer of {type(model).__name__} ({num_classes} outputs) to "
                         "put its classes in the data's order.")
    return found[-1]


def reorder_classes(model: nn.Module, order: list[int], data_labels: list[str]) -> None:
    """Keep the head's rows in `order` (row i becomes the data's label i) and name the classes as the data does."""
    layer = output_layer(model, len(_index_names(model.config.id2label)))
    index = torch.tensor(order, dtype=torch.long)
    with torch.no_grad():
        weight = layer.weight[index].clone()
        bias = None if layer.bias is None else layer.bias[index].clone()
    layer.weight = nn.Parameter(weight)
    if bias is not None:
        layer.bias = nn.Parameter(bias)
    layer.out_features = len(order)
    name_labels(model, data_labels)


def name_labels(model: nn.Module, data_labels: list[str]) -> None:
    model.config.num_labels = len(data_labels)
    model.config.id2label = dict(enumerate(data_labels))
    model.config.label2id = {name: i for i, name in enumerate(data_labels)}
