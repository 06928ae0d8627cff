"""Student builders: a subset of the teacher's layers, a smaller config, or a CNN."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..configs import StudentConfig
from ..errors import ModelError
from .cnn import build_cnn
from .hf import hf_base_spec


def _encoder_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The ModuleList of transformer blocks (`bert.encoder.layer`, `vit.layers` in transformers 5, …)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and name.endswith(("encoder.layer", "encoder.layers", "transformer.layer", ".layers")):
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name), attr, m
    raise ModelError(f"Cannot find the encoder layers of {type(model).__name__}; use student.kind=config or cnn.")


def build_student(cfg: StudentConfig, teacher: nn.Module, teacher_spec: dict, task: str, num_labels: int,
                  pad_id: int = 0) -> tuple[nn.Module, dict]:
    """Returns the student module and its base spec (how to rebuild the unpruned architecture)."""
    if cfg.kind == "layers":
        if teacher_spec["family"] != "hf":
            raise ModelError("student.kind=layers needs a transformers teacher.")
        student = copy.deepcopy(teacher)
        parent, attr, layers = _encoder_layers(student)
        n = len(layers)
        bad = [i for i in cfg.layers if i >= n]
        if bad:
            raise ModelError(f"student.layers {bad} do not exist: the teacher has {n} layers (0…{n - 1}).")
        setattr(parent, attr, nn.ModuleList([layers[i] for i in cfg.layers]))
        student.config.num_hidden_layers = len(cfg.layers)
        return student, hf_base_spec(student, task)
    if cfg.kind == "config":
        if teacher_spec["family"] != "hf":
            raise ModelError("student.kind=config needs a transformers teacher.")
        config = copy.deepcopy(teacher.config)
        for k, v in (cfg.overrides or {}).items():
            if not hasattr(config, k):
                raise ModelError(f"student.overrides.{k}: the teacher's config has no field {k!r}.")
            setattr(config, k, v)
        student = type(teacher)._from_config(config, attn_implementation="eager")
        _copy_matching(teacher, student)
        return student, hf_base_spec(student, task)
    # cnn: cross-architecture
    if task == "image-classification":
        in_ch = int(getattr(getattr(teacher, "config", None), "num_channels", 1))
        base = {"family": "cnn-image", "task": task, "cnn_config": {
            "in_channels": in_ch, "channels": cfg.channels, "kernel_size": cfg.kernel_size, "num_labels": num_labels}}
        return build_cnn(base), base
    emb = teacher.get_input_embeddings() if hasattr(teacher, "get_input_embeddings") else None
    vocab = emb.num_embeddings if emb is not None else None
    if vocab is None:
        raise ModelError("A text CNN student needs the teacher's vocabulary (its input embeddings).")
    dim = cfg.embedding_dim
    if cfg.init_embeddings_from_teacher and emb is not None:
        dim = emb.embedding_dim  # reuse the teacher's token embeddings: a large head start for a CNN
    base = {"family": "cnn-text", "task": task, "cnn_config": {
        "vocab_size": vocab, "embedding_dim": dim, "channels": cfg.channels, "kernel_size": cfg.kernel_size,
        "num_labels": num_labels, "pad_id": pad_id}}
    student = build_cnn(base)
    if cfg.init_embeddings_from_teacher and emb is not None:
        with torch.no_grad():
            student.embeddings.weight.copy_(emb.weight)
    return student, base


def _copy_matching(src: nn.Module, dst: nn.Module) -> None:
    """Initialise every parameter whose name and shape agree (e.g. embeddings of a shallower student)."""
    s = src.state_dict()
    with torch.no_grad():
        for k, v in dst.state_dict().items():
            if k in s and s[k].shape == v.shape:
                v.copy_(s[k])
