"""What edgekd knows of each transformers family's module names: the one place that knows them.

Spec, students, pruning, vocabulary trimming, relation KD and export ask here rather than matching names of their
own. Each table says which families it covers; a family missing from one is a part edgekd cannot yet do for it.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

# The ModuleList of transformer blocks: bert.encoder.layer, vit.layers (transformers 5), distilbert.transformer.layer,
# modernbert.layers, …
LAYER_LIST_SUFFIXES = ("encoder.layer", "encoder.layers", "transformer.layer", ".layers")

# Self-attention projections (q, k, v) whose output channels group by head: BERT-style (BERT, RoBERTa, XLM-RoBERTa,
# ELECTRA; ViT/DeiT in transformers 5 use q_proj…), DistilBERT, DeBERTa-v2/v3, MPNet. Not yet: ModernBERT (one fused
# Wqkv).
QKV_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"),
             ("query_proj", "key_proj", "value_proj"), ("q", "k", "v"))

# Further projections of an attention module whose output channels group by the same heads (DeBERTa-v2 without
# share_att_key: the relative-position embeddings' own key and query projections): pruned with q, k and v.
PER_HEAD_EXTRAS = ("pos_key_proj", "pos_query_proj")

# Attention modules handed a per-head score bias computed once for all layers, by class name: (argument, position).
# MPNet's relative-position bias has one column per head of the unpruned model; a pruned layer keeps its heads'.
SHARED_HEAD_BIAS = {"MPNetSelfAttention": ("position_bias", 2)}

# The FFN's first Linear (its output channels are what FFN pruning removes): BERT-style and DeBERTa-v2 and MPNet
# (intermediate.dense), ViT in transformers 5 (mlp.fc1), DistilBERT (ffn.lin1). ModernBERT's is fused: GATED_FFN.
FFN_SUFFIXES = ("intermediate.dense", "mlp.fc1", "ffn.lin1")

# Fused layouts (ModernBERT), as (module attributes): one Linear for q, k and v whose outputs are [3, heads, head
# size] then the output projection; a gated FFN whose first Linear's outputs are [2 (input, gate), channels].
FUSED_QKV = ("Wqkv", "Wo")
GATED_FFN = ("Wi", "Wo")

# The absolute position table of the families that have one (DeBERTa-v3 and ModernBERT have none)
POSITION_TABLE = "embeddings.position_embeddings"

# Absolute position tables whose row for token i is i + offset (RoBERTa-style padding offset), by model_type.
POSITION_OFFSET = {"bert": lambda c: 0, "distilbert": lambda c: 0, "electra": lambda c: 0,
                   "mpnet": lambda c: 2,  # transformers' MPNet counts from padding_idx 1 + 1 whatever pad_token_id is
                   "roberta": lambda c: c.pad_token_id + 1, "xlm-roberta": lambda c: c.pad_token_id + 1}

# Embedding tables a family reads as a tensor, never by calling the module (DeBERTa-v2/v3's relative position
# embeddings): torch-pruning's graph does not see them.
TABLES_READ_AS_TENSORS = ("rel_embeddings",)

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


def attention_projections(m: nn.Module) -> tuple[list[nn.Linear], int] | None:
    """(q, k, v) projections and head size if `m` is a self-attention module, else None."""
    head = getattr(m, "attention_head_size", None) or getattr(m, "head_dim", None)
    for names in QKV_NAMES:
        projs = [getattr(m, n, None) for n in names]
        if head and all(isinstance(p, nn.Linear) for p in projs):
            return projs, int(head)
    return None


def per_head_extras(attention: nn.Module) -> list[nn.Linear]:
    """The attention module's projections besides q, k and v whose outputs group by head (PER_HEAD_EXTRAS)."""
    return [m for name in PER_HEAD_EXTRAS if isinstance(m := getattr(attention, name, None), nn.Linear)]


def has_shared_head_bias(attention: nn.Module) -> bool:
    return type(attention).__name__ in SHARED_HEAD_BIAS


def _bias_of_kept_heads(module: nn.Module, args: tuple, kwargs: dict):
    name, position = SHARED_HEAD_BIAS[type(module).__name__]
    if kwargs.get(name) is not None:
        kwargs[name] = kwargs[name].index_select(1, module.bias_heads)
    elif len(args) > position and args[position] is not None:
        args = (*args[:position], args[position].index_select(1, module.bias_heads), *args[position + 1:])
    return args, kwargs


def keep_bias_heads(attention: nn.Module, heads: list[int]) -> None:
    """Give a pruned attention module (SHARED_HEAD_BIAS) the shared bias of its remaining heads only: `heads` are
    their indices among the unpruned model's heads, in the module's order."""
    index = torch.tensor(heads, dtype=torch.long)
    if hasattr(attention, "bias_heads"):
        attention.bias_heads = index.to(attention.bias_heads.device)
        return
    attention.register_buffer("bias_heads", index, persistent=False)  # the spec records it, not the weights
    attention.register_forward_pre_hook(_bias_of_kept_heads, with_kwargs=True)


def bias_heads(model: nn.Module) -> dict[str, list[int]]:
    """{attention module name: the unpruned heads it keeps} of the modules keep_bias_heads changed."""
    return {name: m.bias_heads.tolist() for name, m in model.named_modules() if hasattr(m, "bias_heads")}


@contextmanager
def shared_head_bias_hidden(model: nn.Module):
    """Inside: attention modules run without their shared bias. For graph tracing only: the bias is one tensor added
    to every layer's scores, which would tie all layers' heads into one group that cannot be pruned."""
    def drop(module, args, kwargs):
        name, position = SHARED_HEAD_BIAS[type(module).__name__]
        if name in kwargs:
            kwargs[name] = None
        elif len(args) > position:
            args = (*args[:position], None, *args[position + 1:])
        return args, kwargs

    handles = [m.register_forward_pre_hook(drop, with_kwargs=True, prepend=True)
               for m in model.modules() if has_shared_head_bias(m)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def fused_qkv(attention: nn.Module) -> tuple[nn.Linear, nn.Linear, int] | None:
    """(fused q/k/v Linear, output projection, head size) of a FUSED_QKV attention module, else None."""
    qkv, out = (getattr(attention, name, None) for name in FUSED_QKV)
    head = getattr(attention, "head_dim", None)
    if isinstance(qkv, nn.Linear) and isinstance(out, nn.Linear) and head and qkv.out_features % (3 * head) == 0:
        return qkv, out, int(head)
    return None


def gated_ffn(mlp: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    """(input-and-gate Linear, output Linear) of a GATED_FFN module, else None."""
    wi, wo = (getattr(mlp, name, None) for name in GATED_FFN)
    if isinstance(wi, nn.Linear) and isinstance(wo, nn.Linear) and wi.out_features == 2 * wo.in_features:
        return wi, wo
    return None


def family_gaps(model: nn.Module) -> dict[str, str]:
    """What edgekd cannot do for this transformers model, by part: {"layers" | "heads" | "ffn" | "relation" |
    "hidden": why}. Empty for a model whose every part the tables above know."""
    name = f"{type(model).__name__} ({getattr(getattr(model, 'config', None), 'model_type', '?')})"
    modules = list(model.modules())
    gaps = {}
    if layer_list(model) is None:
        gaps["layers"] = f"edgekd finds no list of transformer layers in {name}"
    separate = any(attention_projections(m) for m in modules)
    if not separate and not any(fused_qkv(m) for m in modules):
        gaps["heads"] = f"edgekd does not know the attention projections of {name}"
    if not any(n.endswith(FFN_SUFFIXES) and isinstance(m, nn.Linear) for n, m in model.named_modules()) \
            and not any(gated_ffn(m) for m in modules):
        gaps["ffn"] = f"edgekd does not know the feed-forward layers of {name}"
    if not separate:
        gaps["relation"] = (f"{name} has no separate query/key/value projections (fused or unknown) whose outputs "
                            "MiniLM's relation terms read")
    if embedding_projection(model) is not None:
        gaps["hidden"] = (f"{name} projects its narrower embeddings up to its hidden width; narrowing that width "
                          "would also need the projection cut, which edgekd does not do")
    elif getattr(getattr(model, "config", None), "norm_rel_ebd", "none") != "none" and any(
            n.endswith(TABLES_READ_AS_TENSORS) for n, _ in model.named_modules()):
        gaps["hidden"] = (f"{name} normalises its relative position table, which it reads as a tensor: the "
                          "dependency graph cannot narrow the table with its LayerNorm")
    return gaps
