"""Vocabulary trimming: ship only the embedding rows the task can reach.

BERT's WordPiece vocabulary has 30,522 pieces; SST-2's train split uses 11,545 of them. The
trimmed vocabulary keeps every piece the task's train split produces, the special tokens, and
every single-character piece (`a`, `##a`, ...). A word the trimmed vocabulary lacks then falls
back to smaller pieces, down to single characters, exactly as WordPiece itself does for a word
outside any vocabulary — so any text still tokenizes, and text made only of kept pieces gets the
same pieces as before (its ids renumbered).

The tokenizer is rewritten, not re-trained: tokenizer.json's WordPiece vocabulary and every id
it mentions (added tokens, post-processor, padding) are renumbered, so Hugging Face's
AutoTokenizer and `tokenizers` load it unchanged. Only WordPiece is trimmed: BPE merges and
Unigram scores tie pieces together, and a trimmed BPE vocabulary could leave merges that produce
a dropped piece; those tokenizers are shipped whole (with the reason recorded).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn


def _wordpiece(tokenizer_json: dict) -> dict | None:
    model = tokenizer_json.get("model") or {}
    return model if model.get("type") == "WordPiece" and isinstance(model.get("vocab"), dict) else None


def kept_ids(tokenizer_json: dict, used: set[int]) -> tuple[np.ndarray | None, str]:
    """Sorted ids of the pieces to keep, or (None, why not)."""
    wp = _wordpiece(tokenizer_json)
    if wp is None:
        kind = (tokenizer_json.get("model") or {}).get("type", "unknown")
        return None, f"the tokenizer is {kind}, not WordPiece: its vocabulary is shipped whole"
    prefix = wp.get("continuing_subword_prefix", "##")
    vocab: dict[str, int] = wp["vocab"]
    single = {i for t, i in vocab.items() if len(t) == 1 or (t.startswith(prefix) and len(t) == len(prefix) + 1)}
    special = {t["id"] for t in tokenizer_json.get("added_tokens", [])}
    special.add(vocab[wp["unk_token"]])
    keep = np.array(sorted(set(used) | single | special), dtype=np.int64)
    return keep, f"{len(used)} pieces of the train split, {len(single)} single characters, {len(special)} special tokens"


def _renumbered_tokenizer_json(tj: dict, keep: np.ndarray) -> dict:
    new_id = {int(old): new for new, old in enumerate(keep)}
    tj = json.loads(json.dumps(tj))  # a deep copy
    wp = tj["model"]
    wp["vocab"] = {t: new_id[i] for t, i in sorted(wp["vocab"].items(), key=lambda kv: kv[1]) if i in new_id}
    for tok in tj.get("added_tokens", []):
        tok["id"] = new_id[tok["id"]]
    post = tj.get("post_processor") or {}
    for p in post.get("processors", [post]):  # a Sequence of processors, or one
        for spec in (p.get("special_tokens") or {}).values():
            spec["ids"] = [new_id[i] for i in spec["ids"]]
        for key in ("sep", "cls"):  # BertProcessing / RobertaProcessing: [token, id]
            if isinstance(p.get(key), list):
                p[key][1] = new_id[p[key][1]]
    if tj.get("padding"):
        tj["padding"]["pad_id"] = new_id[tj["padding"]["pad_id"]]
    return tj


def write_trimmed_tokenizer(folder: Path, keep: np.ndarray) -> None:
    """Rewrite the tokenizer files in `folder` (a copy of the run's) for the kept ids."""
    folder = Path(folder)
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    (folder / "tokenizer.json").write_text(json.dumps(_renumbered_tokenizer_json(tj, keep), ensure_ascii=False),
                                           encoding="utf-8")
    new_id = {int(old): new for new, old in enumerate(keep)}
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if isinstance(cfg.get("added_tokens_decoder"), dict):
            cfg["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in cfg["added_tokens_decoder"].items()}
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    vocab_txt = folder / "vocab.txt"
    if vocab_txt.is_file():  # the slow tokenizer's vocabulary: one piece per line, line number = id
        lines = vocab_txt.read_text(encoding="utf-8").split("\n")
        vocab_txt.write_text("\n".join(lines[i] for i in keep) + "\n", encoding="utf-8")


def input_embeddings(model: nn.Module) -> nn.Embedding | None:
    """The token embedding table of a Hugging Face model or an edgekd text student."""
    if hasattr(model, "get_input_embeddings"):
        return model.get_input_embeddings()
    emb = getattr(model, "embeddings", None)
    return emb if isinstance(emb, nn.Embedding) else None


@torch.no_grad()
def trim_embeddings(model: nn.Module, keep: np.ndarray) -> int:
    """Keep only the rows `keep` of the token embedding table (in place); returns the old vocabulary size.

    The table keeps its class (a QAT QuantEmbedding keeps its per-row scales, sliced alike), so it
    exports as it would have untrimmed.
    """
    emb = input_embeddings(model)
    old = emb.num_embeddings
    idx = torch.as_tensor(keep, dtype=torch.long)
    emb.weight = nn.Parameter(emb.weight[idx].clone(), requires_grad=emb.weight.requires_grad)
    if hasattr(emb, "w_scale"):
        emb.w_scale = emb.w_scale[idx].clone()
    emb.num_embeddings = len(keep)
    if emb.padding_idx is not None:
        emb.padding_idx = int(np.searchsorted(keep, emb.padding_idx))
    config = getattr(model, "config", None)
    if config is not None:
        config.vocab_size = len(keep)
        for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
            old_id = getattr(config, key, None)
            if isinstance(old_id, int) and old_id in set(keep.tolist()):
                setattr(config, key, int(np.searchsorted(keep, old_id)))
    return old
