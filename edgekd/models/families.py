"""What edgekd knows of each transformers family's module names: the one place that knows them.

Spec, students, pruning, vocabulary trimming, relation KD and export ask here rather than matching names of their
own. Each table says which families it covers; a family missing from one is a part edgekd cannot yet do for it.
"""
from __future__ import annotations

from torch import nn

# The ModuleList of transformer blocks: bert.encoder.layer, vit.layers (transformers 5), distilbert.transformer.layer,
# modernbert.layers, …
LAYER_LIST_SUFFIXES = ("encoder.layer", "encoder.layers", "transformer.layer", ".layers")

# Self-attention projections (q, k, v) whose output channels group by head: BERT-style (BERT, RoBERTa, XLM-RoBERTa,
# ELECTRA; ViT/DeiT in transformers 5 use q_proj…), DistilBERT. Not yet: MPNet (q/k/v, whose relative-position bias
# has a column per head), DeBERTa-v2 (query_proj…, with relative-position projections), ModernBERT (one fused Wqkv).
QKV_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"))

# The FFN's first Linear (its output channels are what FFN pruning removes): BERT-style and DeBERTa-v2 and MPNet
# (intermediate.dense), ViT in transformers 5 (mlp.fc1), DistilBERT (ffn.lin1). Not yet: ModernBERT (mlp.Wi, gated).
FFN_SUFFIXES = ("intermediate.dense", "mlp.fc1", "ffn.lin1")

# Absolute position tables whose row for token i is i + offset (RoBERTa-style padding offset), by model_type.
POSITION_OFFSET = {"bert": lambda c: 0, "distilbert": lambda c: 0,
                   "roberta": lambda c: c.pad_token_id + 1, "xlm-roberta": lambda c: c.pad_token_id + 1}

# Config keys that hold one entry per layer and must be cut with the layers a student keeps (ModernBERT's
# layer_types: which layers attend globally).
PER_LAYER_CONFIG_KEYS = ("layer_types",)


def layer_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList] | None:
    """(parent, attribute, the ModuleList of transformer blocks), or None for a model without one."""
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and name.endswith(LAYER_LIST_SUFFIXES):
            parent_name, _, attr = name.rpartition(".")
            return (model.get_submodule(parent_name) if parent_name else model), attr, m
    return None


def embedding_projection(model: nn.Module) -> nn.Linear | None:
    """ELECTRA's Linear from its (narrower) embedding width up to the hidden width, where a family has one."""
    return next((m for name, m in model.named_modules()
                 if name.endswith("embeddings_project") and isinstance(m, nn.Linear)), None)


def keep_per_layer_config(config, keep: list[int]) -> None:
    """Cut the config's per-layer lists to the layers a student keeps, in their order."""
    for key in PER_LAYER_CONFIG_KEYS:
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)) and len(values) > max(keep, default=-1):
            setattr(config, key, [values[i] for i in keep])
