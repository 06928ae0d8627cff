"""Architecture spec <-> module.

A spec is plain JSON: the model family and its base config, plus the shape of every
shape-carrying leaf module (Linear, Conv, norms, Embedding). Rebuilding = build the base model
from its config, swap in modules whose recorded shape differs (pruning leaves uneven heads and
FFN widths per layer), wrap the quantized ones, then load the safetensors weights. No module is
ever pickled; this is the "manifest replays, weights load" idea.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch import nn

from ..artifact import WEIGHTS
from ..errors import ModelError
# module names are the families' business; FFN_SUFFIXES is re-exported for the pruning code
from .families import (FFN_SUFFIXES, QKV_NAMES, attention_projections, bias_heads, embedding_projection,  # noqa: F401
                       fused_qkv, gated_ffn, keep_bias_heads)

SPEC_VERSION = 1
# Spec keys that extend a module (owned by other packages, which register their rebuilders).
KNOWN_EXTENSIONS = ("quant",)


def _shape_of(m: nn.Module) -> dict | None:
    if isinstance(m, nn.Linear):
        return {"type": "Linear", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        # isinstance, not type(): a quantized subclass (QuantConv2d) records the same shape
        return {"type": "Conv1d" if isinstance(m, nn.Conv1d) else "Conv2d",
                "in": m.in_channels, "out": m.out_channels, "kernel": list(m.kernel_size), "stride": list(m.stride),
                "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
                "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None}
    if isinstance(m, nn.LayerNorm):
        shape = {"type": "LayerNorm", "shape": list(m.normalized_shape), "eps": m.eps, "affine": m.elementwise_affine}
        if m.elementwise_affine and m.bias is None:  # ModernBERT's norms have no bias; recorded only then, so
            shape["bias"] = False                     # specs written before this key still match
        return shape
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return {"type": "BatchNorm1d" if isinstance(m, nn.BatchNorm1d) else "BatchNorm2d", "num": m.num_features, "eps": m.eps}
    if isinstance(m, nn.Embedding):
        return {"type": "Embedding", "num": m.num_embeddings, "dim": m.embedding_dim, "padding_idx": m.padding_idx}
    if isinstance(m, nn.LSTM):  # the BiLSTM student's directions (pruning narrows hidden_size)
        return {"type": "LSTM", "in": m.input_size, "hidden": m.hidden_size, "layers": m.num_layers, "bias": m.bias,
                "batch_first": m.batch_first, "bidirectional": m.bidirectional}
    if isinstance(m, nn.Identity):  # e.g. a BatchNorm folded into its conv before QAT
        return {"type": "Identity"}
    return None


def capture_shapes(model: nn.Module) -> dict[str, dict]:
    shapes: dict[str, dict] = {}
    for name, m in model.named_modules():
        shape = _shape_of(m)
        if shape is not None:
            shapes[name] = shape
        else:  # parameters held outside such modules (ViT's cls_token, position_embeddings): pruning the hidden
            # width changes their last dimension too
            shapes.update({f"{name}.{p_name}" if name else p_name: {"type": "Parameter", "shape": list(p.shape)}
                           for p_name, p in m.named_parameters(recurse=False)})
    return shapes


def _make(shape: dict) -> nn.Module:
    t = shape["type"]
    if t == "Linear":
        return nn.Linear(shape["in"], shape["out"], bias=shape["bias"])
    if t in ("Conv1d", "Conv2d"):
        cls = nn.Conv1d if t == "Conv1d" else nn.Conv2d
        pad = shape["padding"] if isinstance(shape["padding"], str) else tuple(shape["padding"])
        return cls(shape["in"], shape["out"], tuple(shape["kernel"]), stride=tuple(shape["stride"]), padding=pad,
                   dilation=tuple(shape["dilation"]), groups=shape["groups"], bias=shape["bias"])
    if t == "LayerNorm":
        return nn.LayerNorm(shape["shape"], eps=shape["eps"], elementwise_affine=shape["affine"],
                            bias=shape.get("bias", True))
    if t == "BatchNorm1d":
        return nn.BatchNorm1d(shape["num"], eps=shape["eps"])
    if t == "BatchNorm2d":
        return nn.BatchNorm2d(shape["num"], eps=shape["eps"])
    if t == "Identity":
        return nn.Identity()
    if t == "LSTM":
        return nn.LSTM(shape["in"], shape["hidden"], num_layers=shape["layers"], bias=shape["bias"],
                       batch_first=shape["batch_first"], bidirectional=shape["bidirectional"])
    if t == "Embedding":
        return nn.Embedding(shape["num"], shape["dim"], padding_idx=shape["padding_idx"])
    raise ModelError(f"spec names an unknown module type {t!r}; the artifact was written by a newer edgekd?")


def apply_shapes(model: nn.Module, shapes: dict[str, dict]) -> None:
    """Replace every module whose shape differs from the recorded one (pruned layers)."""
    for name, shape in shapes.items():
        parent_name, _, child = name.rpartition(".")
        try:
            if shape["type"] == "Parameter":
                owner = model.get_submodule(parent_name) if parent_name else model
                if list(getattr(owner, child).shape) != shape["shape"]:
                    setattr(owner, child, nn.Parameter(torch.zeros(shape["shape"])))  # the weights load next
                continue
            current = model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"spec names module {name!r}, which the rebuilt model does not have.") from None
        if _shape_of(current) != shape:
            setattr(model.get_submodule(parent_name) if parent_name else model, child, _make(shape))
    sync_attention_heads(model)




def residual_input(model: nn.Module) -> nn.Module | None:
    """The layer whose output starts a transformer's residual stream (the token embedding table, or ViT's patch
    projection): its output width is the model's hidden width. None for models without one (CNN, BiLSTM)."""
    get = getattr(model, "get_input_embeddings", None)
    if get is None or not hasattr(model, "config"):
        return None
    emb = get()
    if isinstance(emb, nn.Embedding):
        return emb
    projection = getattr(emb, "projection", None)  # ViT's patch embeddings
    return projection if isinstance(projection, (nn.Conv2d, nn.Linear)) else None


def hidden_width(model: nn.Module) -> int | None:
    """The width of a transformer's residual stream as the model is now (pruning may have narrowed it below
    config.hidden_size, which must keep the value the base model is rebuilt from)."""
    m = residual_input(model)
    if m is None:
        return None
    projection = embedding_projection(model)  # ELECTRA: narrower embeddings, projected up to the hidden width
    if projection is not None:
        return projection.out_features
    return m.embedding_dim if isinstance(m, nn.Embedding) else getattr(m, "out_channels", getattr(m, "out_features", None))


def sync_attention_heads(model: nn.Module) -> None:
    """Keep attention modules' head counts equal to their (possibly pruned) projection widths.

    HF BERT/ViT attention reshapes with -1 heads, but code that reads num_attention_heads or
    all_head_size (and our manifest) must see the pruned numbers.
    """
    for m in model.modules():
        found = attention_projections(m)
        if found:
            (q, _, _), head = found
            for attr in ("num_attention_heads", "n_heads"):  # BERT/ViT, DistilBERT
                if hasattr(m, attr):
                    setattr(m, attr, q.out_features // head)
            if hasattr(m, "all_head_size"):
                m.all_head_size = q.out_features


def architecture_summary(model: nn.Module) -> dict:
    """Per-layer heads and FFN widths (transformers), channel widths (CNNs) or LSTM widths for the manifest."""
    heads, ffn, channels, lstm = [], [], [], []
    for name, m in model.named_modules():
        if isinstance(m, nn.LSTM):
            lstm.append(m.hidden_size)
        found = attention_projections(m)
        if found:
            heads.append(found[0][0].out_features // found[1])
        elif fused := fused_qkv(m):
            heads.append(fused[0].out_features // (3 * fused[2]))
        if name.endswith(FFN_SUFFIXES) and isinstance(m, nn.Linear):
            ffn.append(m.out_features)
        elif gated := gated_ffn(m):
            ffn.append(gated[1].in_features)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            channels.append(m.out_channels)
    out = {"params": sum(p.numel() for p in model.parameters())}
    if heads and (hidden := hidden_width(model)) is not None:
        out["hidden"] = hidden
    if heads:
        out["heads_per_layer"] = heads
    if ffn:
        out["ffn_per_layer"] = ffn
    if channels:
        out["conv_channels"] = channels
    if lstm:
        out["lstm_hidden"] = lstm
    return out


# Extensions: what a later stage adds to a module (e.g. fake quantization) is recorded in the spec
# under a key of its own and rebuilt by the package that owns it, which registers a rebuilder here.
# The spec knows no stage; a spec entry nobody registered is an error, never silently dropped.
Rebuilder = Callable[[nn.Module, Any], None]
_REBUILDERS: dict[str, Rebuilder] = {}
# Attribute names a stage sets on a module to have its state recorded: {spec key: attribute}.
_EXTENSION_ATTRS: dict[str, str] = {}


def register_extension(key: str, attribute: str, rebuild: Rebuilder) -> None:
    """`key` in a spec holds `module.<attribute>` (plain data); `rebuild(module, data)` restores it."""
    _REBUILDERS[key] = rebuild
    _EXTENSION_ATTRS[key] = attribute


def make_spec(model: nn.Module, base: dict) -> dict:
    """`base` says how to build the unpruned model: {"family": ..., ...}; see build_base."""
    spec = {"spec_version": SPEC_VERSION, **base, "shapes": capture_shapes(model), "summary": architecture_summary(model)}
    if kept := bias_heads(model):  # MPNet's pruned layers: which columns of the shared position bias each keeps
        spec["bias_heads"] = kept
    for key, attribute in _EXTENSION_ATTRS.items():
        data = getattr(model, attribute, None)
        if data:
            spec[key] = data
    return spec


def base_of(spec: dict) -> dict:
    """How to build the unpruned, unextended model (what a stage that changes the module starts from)."""
    return {k: v for k, v in spec.items() if k not in ("shapes", "summary", "spec_version", "bias_heads", *KNOWN_EXTENSIONS)}


def build_base(spec: dict) -> nn.Module:
    family = spec.get("family")
    if family == "hf":
        from .hf import build_hf_from_spec

        return build_hf_from_spec(spec)
    if family in ("cnn-image", "cnn-text"):
        from .cnn import build_cnn

        return build_cnn(spec)
    if family == "bilstm-text":
        from .rnn import build_rnn

        return build_rnn(spec)
    raise ModelError(f"unknown model family {family!r} in the artifact's spec.")


def build_model(spec: dict) -> nn.Module:
    model = build_base(spec)
    apply_shapes(model, spec.get("shapes", {}))
    for name, heads in spec.get("bias_heads", {}).items():
        keep_bias_heads(model.get_submodule(name), heads)
    for key in KNOWN_EXTENSIONS:
        if spec.get(key):
            rebuild = _REBUILDERS.get(key)
            if rebuild is None:
                raise ModelError(
                    f"the artifact's spec has a {key!r} entry, and no loaded edgekd package rebuilds it; load it with "
                    "edgekd.load_model(ARTIFACT), which loads every package that extends models.")
            rebuild(model, spec[key])
    return model


def save_weights(model: nn.Module, folder: Path) -> Path:
    """Weights as safetensors, always from CPU copies (an artifact made on a GPU loads anywhere)."""
    path = Path(folder) / WEIGHTS
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if devices - {torch.device("cpu")}:
        model = copy.deepcopy(model).cpu()
    st_save_model(model, str(path))
    return path


def load_weights(model: nn.Module, folder: Path) -> nn.Module:
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise ModelError(f"{str(path)!r} is missing; edgekd loads weights only from safetensors.")
    missing, unexpected = st_load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise ModelError(f"weights in {str(path)!r} do not match the spec (missing {missing[:5]}, unexpected {unexpected[:5]}).")
    return model


def load_model_from_artifact(artifact) -> nn.Module:
    model = build_model(artifact.spec)
    load_weights(model, artifact.path)
    return model.eval()
