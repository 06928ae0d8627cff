"""What a recipe asks of a transformers model that its family cannot give (families.family_gaps), refused before any
work with the recipe key to change — and again by the stage, on the model it really gets, so that nothing is ever a
silent no-op (a hub teacher, say, whose config is not read before the run)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..configs import KDConfig, PruneConfig
from .families import family_gaps


def prune_refusals(gaps: dict[str, str], cfg: PruneConfig, key: str = "prune") -> list[str]:
    """What `cfg` asks that a model with these family_gaps cannot give."""
    out = []
    if "heads" in gaps and cfg.head_ratio != 0:
        out.append(f"{key}.head_ratio: {gaps['heads']}, so no head can be pruned; set {key}.head_ratio: 0 to prune "
                   "FFN channels only.")
    if "ffn" in gaps:
        out.append(f"{key}: {gaps['ffn']}, so no FFN channel can be pruned; remove the prune stage for this model.")
    if "hidden" in gaps and cfg.hidden_ratio > 0:
        out.append(f"{key}.hidden_ratio: {gaps['hidden']}; set {key}.hidden_ratio: 0.")
    if "layers" in gaps and cfg.drop_layers > 0:
        out.append(f"{key}.drop_layers: {gaps['layers']}; set {key}.drop_layers: 0.")
    return out


def kd_refusals(gaps: dict[str, str], cfg: KDConfig | None, key: str) -> list[str]:
    if cfg is None or not cfg.relation_weight:
        return []
    return [f"{key}.relation_weight: {gaps['relation']}; set {key}.relation_weight: 0 (logit and hidden-state terms "
            "still work)."] if "relation" in gaps else []


def recipe_refusals(recipe, model: nn.Module) -> list[str]:
    """Every refusal for a recipe whose student is `model`'s family (the teacher's layers or sliced config, or the
    pretrained student)."""
    out = []
    gaps = family_gaps(model)
    student = recipe.student
    if student is not None and "layers" in gaps:
        if student.kind == "layers":
            out.append(f"student.kind: layers: {gaps['layers']}; use student.kind: config, cnn or bilstm.")
        elif student.kind == "pretrained" and student.layers:
            out.append(f"student.layers: {gaps['layers']}; remove student.layers to keep them all.")
    for i, entry in enumerate(recipe.stages):
        cfg, key = entry.config, f"stages.{i}.{entry.name}"
        if isinstance(cfg, PruneConfig):
            out += prune_refusals(gaps, cfg, key) + kd_refusals(gaps, cfg.recovery, f"{key}.recovery")
        elif isinstance(cfg, KDConfig):
            out += kd_refusals(gaps, cfg, key)
    return out


def skeleton_from_config(folder: Path | None = None, config: dict | None = None) -> nn.Module | None:
    """The model a local folder's config.json (or a config dict) describes, without weights (on the meta device),
    or None where transformers does not know its model_type."""
    import torch
    import transformers
    from transformers import AutoConfig

    try:
        if folder is not None:
            cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        else:
            params = dict(config or {})
            cfg = AutoConfig.for_model(params.pop("model_type"), **params)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the loading stage says what is wrong with it
    if getattr(cfg, "architectures", None) is None:
        cfg.architectures = []
    with torch.device("meta"):
        for auto in (transformers.AutoModelForSequenceClassification, transformers.AutoModelForImageClassification,
                     transformers.AutoModel):
            try:
                return auto.from_config(cfg)
            except (ValueError, KeyError):
                continue
    return None


def cross_tokenizer_refusals(recipe) -> list[str]:
    """The intermediate terms a recipe weights that would match a pretrained student's tokens with a teacher's read
    by another tokenizer (prune recovery against the unpruned student reads the student's own tokens)."""
    out = []
    for i, entry in enumerate(recipe.stages):
        cfg, key = entry.config, f"stages.{i}.{entry.name}"
        if isinstance(cfg, PruneConfig):
            cfg, key = cfg.recovery, f"{key}.recovery"
            if cfg is None or cfg.layer_teacher == "unpruned":
                continue
        if isinstance(cfg, KDConfig) and (cfg.hidden_weight or cfg.attention_weight or cfg.relation_weight):
            out.append(key)
    return out
