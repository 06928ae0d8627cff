"""Dependency-aware structural pruning via torch-pruning.

What may be removed (the "root" layers torch-pruning ranks; everything coupled to them follows):
- transformers: whole attention heads (query/key/value outputs, in head-sized groups) and FFN
  channels (intermediate.dense outputs); and, only when asked (`prune_hidden`), the hidden width of
  the residual stream: one dependency group that holds the embedding tables, every LayerNorm, every
  layer's input and output channels and the pooler's input — it costs more accuracy per MAC saved
  than heads or FFN channels, but it is the only cut that also narrows the embedding table.
- CNNs: convolution output channels. The classifier is never a root.
- the BiLSTM student: hidden units of each direction (`recurrent.py`; torch-pruning cannot follow an LSTM).
"""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from ..configs import PruneConfig
from ..models.families import has_shared_head_bias, keep_bias_heads, per_head_extras, shared_head_bias_hidden
from ..models.spec import (FFN_SUFFIXES, architecture_summary, attention_projections, hidden_width, residual_input,
                           sync_attention_heads)
from .fused import prune_fused
from .importance import make_importance, score_before_pruning
from .recurrent import prune_bilstm


_WRAPPING = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.Embedding)


def _transformer_roots(model: nn.Module) -> tuple[dict, list[nn.Module]]:
    num_heads: dict[nn.Module, int] = {}
    roots: list[nn.Module] = []
    for name, m in model.named_modules():
        found = attention_projections(m)
        if found:
            projs, head = found
            for proj in [*projs, *per_head_extras(m)]:
                num_heads[proj] = proj.out_features // head
                roots.append(proj)
        elif name.endswith(FFN_SUFFIXES) and isinstance(m, nn.Linear):
            roots.append(m)
    return num_heads, roots


def _shared_bias_queries(model: nn.Module) -> dict[nn.Module, torch.Tensor]:
    """The query weights of attention modules with a shared head bias, before pruning (to tell which heads stayed)."""
    return {m: found[0][0].weight.detach().clone() for m in model.modules()
            if has_shared_head_bias(m) and (found := attention_projections(m))}


def _keep_shared_bias_heads(model: nn.Module, before: dict[nn.Module, torch.Tensor]) -> None:
    """Give each pruned attention module the shared-bias columns of the heads it kept.

    torch-pruning does not report which heads it removed; its kept rows are copies, so each remaining head is found
    by its query rows among those before pruning."""
    for m, old in before.items():
        (q, _, _), head = attention_projections(m)
        if q.out_features == old.shape[0]:
            continue
        previous = m.bias_heads.tolist() if hasattr(m, "bias_heads") else list(range(old.shape[0] // head))
        old_heads, used, kept = old.reshape(-1, head * old.shape[1]), set(), []
        for row in q.weight.detach().reshape(-1, head * q.in_features):
            i = next(i for i in range(len(old_heads)) if i not in used and torch.equal(old_heads[i], row))
            used.add(i)
            kept.append(previous[i])
        keep_bias_heads(m, kept)


def non_embedding_params(model: nn.Module) -> int:
    """Parameters outside embedding tables: what structured pruning can shrink (and what budgets count)."""
    emb = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False))
    return sum(p.numel() for p in model.parameters()) - emb


def below_minimum(model: nn.Module, cfg: PruneConfig) -> list[str]:
    """Layers left narrower than prune.min_heads / prune.min_channels (empty: none)."""
    s = architecture_summary(model)
    return ([f"layer {i}: {h} heads" for i, h in enumerate(s.get("heads_per_layer", [])) if h < cfg.min_heads]
            + [f"layer {i}: {c} channels" for key in ("ffn_per_layer", "conv_channels", "lstm_hidden")
               for i, c in enumerate(s.get(key, [])) if c < cfg.min_channels])


def _unwrapped_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Parameters that live outside Linear/Conv/Norm/Embedding modules (ViT's cls_token and position_embeddings):
    their last dim is the hidden size — say so instead of letting torch-pruning guess."""
    return [(p, p.ndim - 1) for m in model.modules() if not isinstance(m, _WRAPPING) for p in m.parameters(recurse=False)]


def hidden_keep(width: int, ratio: float, round_to: int | None) -> int:
    """The hidden width left when `ratio` of `width` goes: rounded down to the width multiple, never below it."""
    step = round_to if round_to and round_to > 1 else 1
    return max(step, int(width * (1 - ratio)) // step * step)


def prune_hidden(model: nn.Module, example_inputs: dict, cfg: PruneConfig, keep: int, importance_loss=None) -> int:
    """Narrow a transformer's residual stream to `keep` channels in place; returns the channels removed.

    The channels are ranked by `cfg.importance` over the whole group (every table, LayerNorm and layer the stream
    passes through), the lowest removed; prune.min_channels of the best are never ranked below the rest."""
    root = residual_input(model)
    if root is None:
        raise ValueError("hidden-width pruning needs a transformer (a token embedding table or a patch projection)")
    width = hidden_width(model)
    if keep >= width:
        return 0
    handler = tp.prune_embedding_out_channels if isinstance(root, nn.Embedding) else (
        tp.prune_conv_out_channels if isinstance(root, (nn.Conv1d, nn.Conv2d)) else tp.prune_linear_out_channels)
    unwrapped = _unwrapped_parameters(model)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                  unwrapped_parameters=unwrapped or None)
    importance = make_importance(cfg.importance, {}, 0, cfg.min_channels)
    score_before_pruning(cfg.importance, importance, model, importance_loss)
    scores = importance(graph.get_pruning_group(root, handler, idxs=list(range(width))))
    model.zero_grad(set_to_none=True)
    drop = scores.argsort()[: width - keep].tolist()
    group = graph.get_pruning_group(root, handler, idxs=sorted(drop))
    if not graph.check_pruning_group(group):
        raise ValueError(f"torch-pruning refuses to remove {len(drop)} hidden channels of {width}")
    group.prune()
    return len(drop)


def prune_structured(model: nn.Module, example_inputs: dict, cfg: PruneConfig, family: str,
                     importance_loss=None, ratio: float | None = None, round_to: int | None = None) -> None:
    """Prune `model` in place: `ratio` (default cfg.ratio) of the channels and heads, kept widths in
    multiples of `round_to` (torch-pruning rounds each layer's channel count). `importance_loss`: the loss a
    gradient importance reads, or ReadScores read on an identical model (importance.read_once)."""
    ratio = cfg.ratio if ratio is None else ratio
    if family == "bilstm-text":  # hidden units of each direction: torch-pruning cannot follow an LSTM (recurrent.py)
        prune_bilstm(model, ratio, cfg.importance, importance_loss, round_to, cfg.min_channels, cfg.max_layer_ratio)
        return
    head_ratio = cfg.head_ratio if cfg.head_ratio is not None and (cfg.budget is None or cfg.head_ratio == 0) else ratio
    if family == "hf":
        num_heads, roots = _transformer_roots(model)
        if head_ratio == 0:  # every head stays: the attention projections are not roots at all
            roots = [m for m in roots if m not in num_heads]
            num_heads = {}
    else:
        num_heads, roots = {}, [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    root_ids = {id(m) for m in roots}
    # torch-pruning ranks every Linear/Conv not listed as ignored; ignore all but our roots.
    ignored = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and id(m) not in root_ids]
    ignored += [m for m in model.modules() if isinstance(m, nn.Embedding)]

    unwrapped = _unwrapped_parameters(model)

    # kept minimums rounded up to the width multiple: torch-pruning rounds a layer's kept channels down
    step = round_to if round_to and round_to > 1 else 1
    importance = make_importance(cfg.importance, num_heads, cfg.min_heads, -(-cfg.min_channels // step) * step)
    pruner = None
    if roots:
        with shared_head_bias_hidden(model):  # MPNet's one bias for all layers would tie every layer's heads together
            pruner = tp.pruner.MetaPruner(
                model, example_inputs, importance=importance, pruning_ratio=ratio, global_pruning=cfg.global_pruning,
                max_pruning_ratio=cfg.max_layer_ratio, ignored_layers=ignored,
                num_heads=num_heads, prune_num_heads=bool(num_heads), prune_head_dims=False,
                head_pruning_ratio=head_ratio,
                unwrapped_parameters=unwrapped or None, round_to=round_to if round_to and round_to > 1 else None,
            )
    score_before_pruning(cfg.importance, importance, model, importance_loss)  # the scores read these gradients
    if pruner is not None:
        before = _shared_bias_queries(model)
        pruner.step()
        _keep_shared_bias_heads(model, before)
    if family == "hf":  # ModernBERT's fused q/k/v and gated FFN, which torch-pruning cannot follow (fused.py)
        prune_fused(model, cfg, importance, ratio, head_ratio, round_to)
    model.zero_grad(set_to_none=True)
    sync_attention_heads(model)
