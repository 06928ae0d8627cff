"""A pruned transformer as a plain Hugging Face folder, where a transformers config can describe it.

A Hugging Face config has one `num_attention_heads` and one `intermediate_size` for every layer,
and transformers 5 computes the head size as hidden_size / num_attention_heads (the per-layer
`pruned_heads` of transformers 4 is gone). So a pruned model round-trips through
`AutoModelForSequenceClassification.from_pretrained` when its FFN widths are equal across layers
and no attention head was removed; otherwise edgekd says why and what loads it instead.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

from torch import nn

from .hf import transformers_quiet
from .spec import architecture_summary

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def hf_folder_blocker(model: nn.Module) -> str | None:
    """Why `model` cannot be saved as a from_pretrained folder, or None when it can."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "save_pretrained"):
        return "it is not a Hugging Face model"
    summary = architecture_summary(model)
    heads, ffn = summary.get("heads_per_layer", []), summary.get("ffn_per_layer", [])
    hidden = summary.get("hidden", config.hidden_size)
    if hidden != config.hidden_size:
        return (f"the hidden width was pruned ({config.hidden_size} -> {hidden}): a transformers config derives the "
                "attention width and head size from hidden_size, which the kept heads no longer match")
    if any(h != config.num_attention_heads for h in heads):
        return (f"attention heads were pruned ({heads} of {config.num_attention_heads} per layer): transformers 5 "
                "derives the head size from hidden_size / num_attention_heads and no longer has pruned_heads")
    if len(set(ffn)) > 1:
        return f"FFN widths differ between layers ({ffn}): a Hugging Face config has one intermediate_size"
    return None


def save_hf_folder(model: nn.Module, folder: Path, tokenizer_from: Path | None = None) -> dict:
    """Save `model` (see hf_folder_blocker) with its config updated to the pruned widths, plus the tokenizer."""
    folder = Path(folder)
    twin = copy.deepcopy(model).cpu()
    ffn = architecture_summary(twin).get("ffn_per_layer")
    if ffn:
        twin.config.intermediate_size = ffn[0]
    with transformers_quiet():
        twin.save_pretrained(str(folder), safe_serialization=True)
    for name in TOKENIZER_FILES:
        if tokenizer_from is not None and (Path(tokenizer_from) / name).is_file():
            shutil.copy2(Path(tokenizer_from) / name, folder / name)
    return {"folder": folder.name, "intermediate_size": twin.config.intermediate_size,
            "loads_with": "transformers.AutoModelForSequenceClassification.from_pretrained"}
