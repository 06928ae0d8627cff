"""Student builders: a subset of the teacher's layers, a smaller config, or a CNN."""
from __future__ import annotations

import copy
import re

import torch
from torch import nn

from ..configs import StudentConfig
from ..errors import ModelError
from .cnn import build_cnn
from .rnn import build_rnn
from .families import keep_per_layer_config, layer_list
from .hf import hf_base_spec


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (0-based) for each student layer: evenly spaced, the last on the last (TinyBERT's mapping)."""
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


def half_depth_layers(teacher_layers: int) -> list[int]:
    """The default layers student: every other teacher layer, ending with the last (the one the head was trained on);
    6 layers -> [1, 3, 5], 12 -> [1, 3, …, 11]."""
    return uniform_layer_map((teacher_layers + 1) // 2, teacher_layers)


def last_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """The teacher's last k layers for a k-layer student (DistilBERT-style "last-k")."""
    return list(range(teacher_layers - student_layers, teacher_layers))


def encoder_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The ModuleList of transformer blocks (`bert.encoder.layer`, `vit.layers` in transformers 5, …)."""
    found = layer_list(model)
    if found is None:
        raise ModelError(f"Cannot find the encoder layers of {type(model).__name__}; use student.kind=config or cnn.")
    return found


def keep_layers(model: nn.Module, keep: list[int], whose: str) -> None:
    """Keep only the transformer blocks `keep` of `model` (in place), in that order; the config follows."""
    parent, attr, layers = encoder_layers(model)
    n = len(layers)
    bad = [i for i in keep if i >= n]
    if bad:
        raise ModelError(f"student.layers {bad} do not exist: {whose} has {n} layers (0…{n - 1}).")
    setattr(parent, attr, nn.ModuleList([layers[i] for i in keep]))
    model.config.num_hidden_layers = len(keep)
    keep_per_layer_config(model.config, keep)


def build_pretrained_student(cfg: StudentConfig, task: str, label_names: list[str]) -> tuple[nn.Module, dict, dict]:
    """A pretrained model of any transformers family as the student: its own config, its weights, a fresh head sized
    to the data, `cfg.layers` of its own layers.
    Returns (model, base spec, what was loaded for the manifest)."""
    from .hf import check_model_folder, load_hf_classifier, resolve_model_path

    source = cfg.hub
    if cfg.path is not None:
        folder = resolve_model_path(cfg.path, key="student.path")
        check_model_folder(folder, key="student.path")
        source = str(folder)
    model, _, _ = load_hf_classifier(source, task, label_names, revision=cfg.revision, fresh_head=True)
    n = len(encoder_layers(model)[2])
    if cfg.layers:
        keep_layers(model, cfg.layers, f"the pretrained student {source!r}")
    return model, hf_base_spec(model, task), {"pretrained": cfg.path or cfg.hub, "layers_kept": cfg.layers or
                                              list(range(n)), "layers_of": n}


def build_student(cfg: StudentConfig, teacher: nn.Module, teacher_spec: dict, task: str, num_labels: int,
                  pad_id: int = 0) -> tuple[nn.Module, dict]:
    """Returns the student module and its base spec (how to rebuild the unpruned architecture)."""
    if cfg.kind == "layers":
        if teacher_spec["family"] != "hf":
            raise ModelError("student.kind=layers needs a transformers teacher.")
        student = copy.deepcopy(teacher)
        keep_layers(student, cfg.layers or half_depth_layers(len(encoder_layers(student)[2])), "the teacher")
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
        n_t = teacher.config.num_hidden_layers
        layer_map = cfg.layers or uniform_layer_map(config.num_hidden_layers, n_t)
        if len(layer_map) != config.num_hidden_layers or max(layer_map) >= n_t:
            raise ModelError(f"student.layers {layer_map}: a config student with {config.num_hidden_layers} layers needs "
                             f"that many teacher layers (0…{n_t - 1}) to initialise them from.")
        student.edgekd_init = slice_from_teacher(teacher, student, layer_map)
        return student, hf_base_spec(student, task)
    # cnn, bilstm: cross-architecture
    if cfg.kind == "bilstm":
        return _bilstm_student(cfg, teacher, task, num_labels, pad_id)
    if task == "image-classification":
        in_ch = int(getattr(getattr(teacher, "config", None), "num_channels", 1))
        base = {"family": "cnn-image", "task": task, "cnn_config": {
            "in_channels": in_ch, "channels": cfg.channels, "kernel_size": cfg.kernel_size, "num_labels": num_labels}}
        return build_cnn(base), base
    emb = teacher.get_input_embeddings() if hasattr(teacher, "get_input_embeddings") else None
    vocab = emb.num_embeddings if emb is not None else None
    if vocab is None:
        raise ModelError("A text CNN student needs the teacher's vocabulary (its input embeddings).")
    table = _teacher_table(cfg, emb)
    dim = table.shape[1] if table is not None else cfg.embedding_dim
    base = {"family": "cnn-text", "task": task, "cnn_config": {
        "vocab_size": vocab, "embedding_dim": dim, "channels": cfg.channels, "kernel_size": cfg.kernel_size,
        "num_labels": num_labels, "pad_id": pad_id}}
    student = build_cnn(base)
    if table is not None:
        with torch.no_grad():
            student.embeddings.weight.copy_(table)
    return student, base


def _teacher_table(cfg: StudentConfig, emb: nn.Embedding) -> torch.Tensor | None:
    """The token table a cross-architecture text student starts from: the teacher's own (`true`: at its width), or
    reduced to `embedding_dim` columns by truncated SVD (`svd`); None for a table of the student's own."""
    init = cfg.init_embeddings_from_teacher
    if init is False:
        return None
    weight = emb.weight.detach().float()
    if init is True:
        return weight  # reuse the teacher's token embeddings: a large head start
    refusal = svd_refusal(cfg, weight.shape[1])
    if refusal:
        raise ModelError(refusal)
    # The rank-k table nearest the teacher's (Eckart-Young): its rows projected on the top right singular vectors.
    # Not centred: a text student's first layer sees the rows as they are, their common offset included.
    _, _, vh = torch.linalg.svd(weight, full_matrices=False)
    return weight @ vh[:cfg.embedding_dim].T


def svd_refusal(cfg: StudentConfig, teacher_width: int) -> str | None:
    """Why `init_embeddings_from_teacher: svd` cannot reduce a table `teacher_width` wide to `embedding_dim`."""
    if cfg.init_embeddings_from_teacher != "svd" or cfg.embedding_dim < teacher_width:
        return None
    return (f"student.init_embeddings_from_teacher=svd reduces the teacher's {teacher_width}-wide token embeddings to "
            f"student.embedding_dim columns, but embedding_dim is {cfg.embedding_dim}: give a width under "
            f"{teacher_width}, or init_embeddings_from_teacher: true to copy them at their width.")


def _bilstm_student(cfg: StudentConfig, teacher: nn.Module, task: str, num_labels: int, pad_id: int):
    """A BiLSTM on the teacher's token embeddings (copied, then projected down to embedding_dim when that is
    narrower; or reduced to embedding_dim by SVD)."""
    emb = teacher.get_input_embeddings() if hasattr(teacher, "get_input_embeddings") else None
    if emb is None:
        raise ModelError("A BiLSTM student needs the teacher's vocabulary (its input embeddings).")
    table = _teacher_table(cfg, emb)
    dim = table.shape[1] if table is not None else cfg.embedding_dim
    base = {"family": "bilstm-text", "task": task, "rnn_config": {
        "vocab_size": emb.num_embeddings, "embedding_dim": dim, "hidden_size": cfg.lstm_hidden,
        "num_labels": num_labels, "pad_id": pad_id,
        "projection_dim": cfg.embedding_dim if table is not None and cfg.embedding_dim < dim else None}}
    student = build_rnn(base)
    if table is not None:
        with torch.no_grad():
            student.embeddings.weight.copy_(table)
    return student, base


_LAYER_INDEX = re.compile(r"(\.(?:layer|layers)\.)(\d+)(\.)")


def slice_from_teacher(teacher: nn.Module, student: nn.Module, layer_map: list[int]) -> dict:
    """Initialise a narrower, shallower student from the teacher: student layer i from teacher layer layer_map[i], each
    tensor the teacher's leading block (the first hidden / FFN / head dimensions).

    Taking the same leading indices of the hidden width in every tensor keeps the residual stream consistent from
    the embeddings through every layer and LayerNorm to the classifier; with the teacher's head size kept, the
    leading query/key/value columns are whole heads. A randomly initialised narrow transformer starts far behind
    (the field's students are all initialised from their teachers: DistilBERT, TinyBERT, MiniLM).
    """
    src = teacher.state_dict()
    copied, sliced, random = 0, 0, []
    with torch.no_grad():
        for name, dst in student.state_dict().items():
            t_name = _LAYER_INDEX.sub(lambda m: f"{m.group(1)}{layer_map[int(m.group(2))]}{m.group(3)}", name)
            t = src.get(t_name)
            if t is None or t.dim() != dst.dim() or any(d > e for d, e in zip(dst.shape, t.shape)):
                random.append(name)
                continue
            block = t[tuple(slice(0, d) for d in dst.shape)]
            dst.copy_(block)
            if block.shape == t.shape:
                copied += 1
            else:
                sliced += 1
    return {"layer_map": layer_map, "copied": copied, "sliced": sliced, "random": random}
