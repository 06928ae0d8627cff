"""Vocabulary trimming: ship only the embedding rows the task can reach.

BERT's WordPiece vocabulary has 30,522 pieces; SST-2's train split uses 11,545 of them. Two ways to
drop the other rows (export.vocabulary):

- `nearest` (the default): the table keeps the rows of the train split's pieces and the special
  tokens; every other piece reads the row of its nearest kept piece (cosine in the model's own
  embedding table), through an id -> row map inside the model (RemappedEmbedding: one int16 Gather
  before the table's). The tokenizer is the original one, untouched — any tokenizer kind, ids and
  segmentation identical, files that survive `save_pretrained` — and text made of kept pieces gives
  the same logits as before. Measured on the SST-2 flagship's shipped INT8 model: 88.42% on
  test.tsv against 88.30% for `fallback`, with 1,911 fewer rows (0.7 MB).
- `fallback`: the table also keeps every single-character piece (`a`, `##a`, ...) and the tokenizer
  is renumbered, so a word the trimmed vocabulary lacks falls back to smaller pieces, down to single
  characters, exactly as WordPiece does for a word outside any vocabulary. tokenizer.json's
  WordPiece vocabulary and every id it mentions (added tokens, post-processor, padding) are
  renumbered, so Hugging Face's AutoTokenizer and `tokenizers` load it unchanged. Only WordPiece
  is renumbered: BPE merges and Unigram scores tie pieces together, and a trimmed BPE vocabulary
  could leave merges that produce a dropped piece; those tokenizers are shipped whole.

Why the map sits in the model and not in the tokenizer: a WordPiece vocabulary may give several
pieces one id, and `tokenizers` encodes with it, but its files keep one piece per id — a tokenizer
re-saved by the user would silently lose the map — and `len(tokenizer)` would exceed the table.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.families import POSITION_OFFSET, POSITION_TABLE


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
    emb = getattr(model, "embeddings", None)  # a text CNN or BiLSTM: trimmed by `nearest`, a RemappedEmbedding
    return emb if isinstance(emb, (nn.Embedding, RemappedEmbedding)) else None


def _slice_rows(emb: nn.Embedding, keep: np.ndarray) -> None:
    """Keep only the rows `keep` of `emb`, in place. The table keeps its class (a QAT QuantEmbedding keeps its
    per-row scales, sliced alike), so it exports as it would have untrimmed."""
    idx = torch.as_tensor(keep, dtype=torch.long)
    emb.weight = nn.Parameter(emb.weight[idx].clone(), requires_grad=emb.weight.requires_grad)
    if hasattr(emb, "w_scale"):
        emb.w_scale = emb.w_scale[idx].clone()
    emb.num_embeddings = len(keep)
    if emb.padding_idx is not None:
        emb.padding_idx = int(np.searchsorted(keep, emb.padding_idx))


@torch.no_grad()
def trim_embeddings(model: nn.Module, keep: np.ndarray) -> int:
    """`fallback`: keep only the rows `keep` of the token embedding table, renumbered 0..len(keep)-1 as the
    renumbered tokenizer's ids are (in place); returns the old vocabulary size."""
    emb = input_embeddings(model)
    old = emb.num_embeddings
    _slice_rows(emb, keep)
    config = getattr(model, "config", None)
    if config is not None:
        config.vocab_size = len(keep)
        for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
            old_id = getattr(config, key, None)
            if isinstance(old_id, int) and old_id in set(keep.tolist()):
                setattr(config, key, int(np.searchsorted(keep, old_id)))
    return old


# ------------------------------------------------------------------------------------------ nearest


class RemappedEmbedding(nn.Module):
    """A trimmed token table read through a fixed id -> row map: `table(row_of[ids])`.

    row_of is int16 where the kept rows fit (61 KB for BERT's 30,522 ids instead of 244 KB as int64); it
    exports as Gather -> Cast -> the table's own Gather, which the INT8 export turns into a Gather of int8
    rows as it does for any table.
    """

    def __init__(self, table: nn.Embedding, row_of: torch.Tensor):
        super().__init__()
        self.table = table
        self.register_buffer("row_of", row_of)

    @property
    def weight(self) -> torch.Tensor:  # the kept rows (what callers of get_input_embeddings().weight read)
        return self.table.weight

    @property
    def num_embeddings(self) -> int:  # the ids it accepts: the original vocabulary
        return int(self.row_of.numel())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(self.row_of[ids].long())


@torch.no_grad()
def nearest_rows(weight: torch.Tensor, keep: np.ndarray, exclude: set[int], chunk: int = 2048) -> np.ndarray:
    """For every id of `weight`'s rows, the index in `keep` of the row it reads: its own where kept, else the kept
    row (not in `exclude`: special tokens carry no word meaning) of highest cosine similarity. Chunked: BERT's
    19k dropped rows against 11.5k kept ones would be an 870 MB similarity matrix at once."""
    w = torch.nn.functional.normalize(weight.detach().float().cpu(), dim=1)
    position = np.full(w.shape[0], -1, dtype=np.int64)
    position[keep] = np.arange(len(keep))
    candidates = np.array([i for i in keep.tolist() if i not in exclude], dtype=np.int64)
    dropped = np.flatnonzero(position < 0)
    cand = w[torch.as_tensor(candidates)]
    for start in range(0, len(dropped), chunk):
        ids = dropped[start: start + chunk]
        best = (w[torch.as_tensor(ids)] @ cand.T).argmax(dim=1).numpy()
        position[ids] = position[candidates[best]]
    return position


@contextmanager
def int32_row_map(model: nn.Module):
    """Inside: a `nearest` row map read as int32. Qualcomm's HTP rejects a Gather of int16 data (QNN error 3110 on
    the word-embedding lookup), so an integer-NPU build takes the wider map; the host keeps the int16 one."""
    emb = input_embeddings(model)
    if not isinstance(emb, RemappedEmbedding) or emb.row_of.dtype != torch.int16:
        yield
        return
    narrow = emb.row_of
    emb.row_of = narrow.to(torch.int32)
    try:
        yield
    finally:
        emb.row_of = narrow


def set_input_embeddings(model: nn.Module, module: nn.Module) -> None:
    if hasattr(model, "set_input_embeddings"):
        model.set_input_embeddings(module)
    else:
        model.embeddings = module


@torch.no_grad()
def remap_embeddings(model: nn.Module, keep: np.ndarray, exclude: set[int]) -> np.ndarray:
    """`nearest`: keep the rows `keep` of the token table and send every other id to its nearest kept row (in
    place; the model still takes the original ids). Returns id -> row."""
    emb = input_embeddings(model)
    row_of = nearest_rows(emb.weight, keep, exclude)
    _slice_rows(emb, keep)
    dtype = torch.int16 if len(keep) <= torch.iinfo(torch.int16).max else torch.int32
    set_input_embeddings(model, RemappedEmbedding(emb, torch.as_tensor(row_of, dtype=dtype)))
    return row_of


# ------------------------------------------------------------------------------------------ positions

# Position ids a model type reaches for a sequence of n tokens (models/families.py): BERT and DistilBERT count
# 0..n-1; RoBERTa and its kin start after the padding id (fairseq's convention). Other types keep their whole table.


@torch.no_grad()
def trim_positions(model: nn.Module, length: int) -> dict | None:
    """Keep only the position rows a sequence of at most `length` tokens reaches (in place): the student was
    distilled at data.max_length and never trained the rest — MiniLM's 512 rows become 128 on SST-2 (147 KB of
    int8). Returns {"rows", "original_rows"}, or None where nothing was trimmed (no position table, an unknown
    model type, or nothing beyond `length`)."""
    config = getattr(model, "config", None)
    offset = POSITION_OFFSET.get(getattr(config, "model_type", None))
    table = next((m for name, m in model.named_modules()
                  if name.endswith(POSITION_TABLE) and isinstance(m, nn.Embedding)), None)
    if offset is None or table is None:
        return None
    rows, original = length + offset(config), table.num_embeddings
    if rows >= original:
        return None
    _slice_rows(table, np.arange(rows))
    config.max_position_embeddings = rows
    return {"rows": rows, "original_rows": original}
