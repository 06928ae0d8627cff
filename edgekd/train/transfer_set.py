"""The transfer set: what the student is distilled on — the train split plus text labelled by the teacher.

A student learns the teacher's function from the teacher's soft targets, so any text the teacher
labels is training data (Hinton et al. 2015). Two sources, both offline:

- unlabelled files (production traffic, in-domain text; a labelled file's labels are ignored);
- augmented copies of the train texts (TinyBERT; Tang et al. 2019): single-piece words replaced,
  with probability `replace_prob`, by one of their `neighbours` nearest tokens by cosine in the
  teacher's own token-embedding table, or by the mask token with probability `mask_prob`. Words
  the tokenizer splits into several pieces are left alone (a piece of a word has no word-level
  neighbour). Working on token ids keeps the augmentation exact for the tokenizer and avoids
  decoding and re-tokenizing.

Teacher-labelled examples get the label IGNORE_LABEL: the hard-label CE skips them and the KD terms
use the teacher's logits. They are labelled once and cached on disk (keyed by teacher, data and
this config). A confidence filter drops those the teacher is unsure of; the share is reported.
"""
from __future__ import annotations

import numpy as np
import torch

from ..artifact import file_hash, stable_hash, write_safetensors_atomic
from ..configs import AugmentConfig, TransferConfig
from ..data.batching import Encoded, encode
from ..data.drift import confidences
from ..data.loading import Split, read_texts
from ..progress import log
from .context import Context

IGNORE_LABEL = -100  # torch's cross_entropy ignore_index: an example with no gold label


def word_pieces(tokens: list[str], special_ids: set[int], scheme: str = "WordPiece") -> tuple[np.ndarray, np.ndarray]:
    """(word_start, continuation) flags per id. WordPiece: `##x` continues a word; BPE (byte-level): `Ġx` starts
    one; Unigram (SentencePiece): `▁x` starts one. A replaceable word start is alphabetic and not special."""
    if scheme == "WordPiece":
        cont = np.array([t.startswith("##") for t in tokens])
        start = np.array([not t.startswith("##") and t.isalpha() for t in tokens])
    else:
        marker = "Ġ" if scheme == "BPE" else "▁"
        cont = np.array([not t.startswith(marker) for t in tokens])
        start = np.array([t.startswith(marker) and t[1:].isalpha() for t in tokens])
    for i in special_ids:
        if i < len(tokens):
            start[i] = cont[i] = False
    return start, cont


def single_piece_words(ids: list[int], start: np.ndarray, cont: np.ndarray) -> list[int]:
    """Positions holding a whole word in one piece (a word start not followed by a continuation)."""
    return [i for i, t in enumerate(ids) if start[t] and not (i + 1 < len(ids) and cont[ids[i + 1]])]


def embedding_neighbours(table: torch.Tensor, queries: np.ndarray, candidates: np.ndarray, k: int,
                         chunk: int = 2048) -> dict[int, np.ndarray]:
    """The k nearest candidates of each query id by cosine similarity of their embedding rows (itself excluded)."""
    emb = torch.nn.functional.normalize(table.detach().float(), dim=-1)
    cand = torch.from_numpy(candidates)
    k = min(k, len(candidates) - 1)
    out: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for i in range(0, len(queries), chunk):
            q = torch.from_numpy(queries[i: i + chunk])
            sim = emb[q] @ emb[cand].T
            sim[q[:, None] == cand[None, :]] = -2.0  # never a word's own neighbour
            top = sim.topk(k, dim=-1).indices
            for qid, row in zip(q.tolist(), cand[top].numpy()):
                out[qid] = row
    return out


def augment_ids(seqs: list[list[int]], cfg: AugmentConfig, start: np.ndarray, cont: np.ndarray,
                neighbours: dict[int, np.ndarray], mask_id: int | None, seed: int) -> list[list[int]]:
    """cfg.copies augmented copies of each sequence; copies identical to their original are left out."""
    rng = np.random.default_rng(seed)
    mask_prob = cfg.mask_prob if mask_id is not None else 0.0
    out = []
    for _ in range(cfg.copies):
        for ids in seqs:
            new = list(ids)
            for i in single_piece_words(ids, start, cont):
                u = rng.random()
                if u < mask_prob:
                    new[i] = mask_id
                elif u < mask_prob + cfg.replace_prob and ids[i] in neighbours:
                    new[i] = int(rng.choice(neighbours[ids[i]]))
            if new != ids:
                out.append(new)
    return out


def build_transfer_set(cfg: TransferConfig, ctx: Context, train: Encoded, train_logits: np.ndarray,
                       max_train_examples: int | None) -> tuple[Encoded, np.ndarray, dict]:
    """(examples, teacher logits, report): the train split first, then the teacher-labelled examples kept."""
    if train.ids is None:
        from ..errors import EdgekdError

        raise EdgekdError("distill.transfer: teacher-labelled transfer data (unlabelled text, augmentation) is for "
                          "text tasks; remove distill.transfer for an image task.")
    column = cfg.text_column or ctx.recipe.data.text_column
    # the transfer set is made and labelled in the teacher's tokens (augmentation reads its embedding table); a
    # pretrained student with its own tokenizer reads the same texts with that
    by_teacher = ctx.teacher_encoded("train", max_train_examples) if ctx.cross_tokenizer else train
    # repeat is applied after labelling: the labels do not depend on it
    key = stable_hash({"teacher": ctx.teacher.id, "data": ctx.data.fingerprint,
                       "transfer": cfg.model_dump(exclude={"repeat"}),
                       "n": max_train_examples, "max_length": ctx.recipe.data.max_length, "seed": ctx.seed,
                       "files": [file_hash(f) for f in cfg.unlabelled]})
    path = ctx.cache_dir() / f"transfer-set-{key}.safetensors"
    if path.is_file():
        from safetensors.numpy import load_file

        cached = load_file(str(path))
        offsets = cached["offsets"]
        seqs = [cached["ids"][a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
        logits, source = cached["logits"], cached["source"]
    else:
        seqs, source = [], []
        for f in cfg.unlabelled:
            texts = read_texts(f, column)
            enc = encode(Split("unlabelled", np.zeros(len(texts), dtype=np.int64), texts=texts), ctx.teacher_tokenizer,
                         ctx.recipe.data.max_length)
            seqs += enc.ids
            source += [0] * len(enc.ids)
        if cfg.augment is not None:
            made = _augmented(cfg.augment, ctx, by_teacher.ids)
            seqs += made
            source += [1] * len(made)
        source = np.array(source, dtype=np.int8)
        from .predict import predict_logits

        logits = predict_logits(ctx.teacher_model(), Encoded(np.zeros(len(seqs), dtype=np.int64), ids=seqs,
                                                             pad_id=by_teacher.pad_id),
                                desc="teacher labels the transfer set", runtime=ctx.runtime) if seqs else \
            np.zeros((0, train_logits.shape[1]), dtype=np.float32)
        if ctx.runtime.is_main:
            offsets = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
            flat = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(offsets[-1]))
            write_safetensors_atomic(path, {"ids": flat, "offsets": offsets, "logits": logits, "source": source})
    confidence = confidences(logits) if len(seqs) else np.zeros(0, dtype=np.float32)
    keep = np.flatnonzero(confidence >= cfg.min_confidence)
    if cfg.max_examples is not None and len(keep) > cfg.max_examples:
        keep = np.sort(np.random.default_rng(ctx.seed).choice(keep, cfg.max_examples, replace=False))
    if cfg.repeat:  # oversampled files: their kept examples again, (times - 1) more
        keep = np.sort(np.concatenate([keep] + [np.repeat(keep[np.isin(keep, rows)], n - 1)
                                                for rows, n in _file_rows(cfg, column, source)]))
    labelled = len(seqs)
    report = {"train_examples": len(train), "unlabelled_files": list(cfg.unlabelled),
              "unlabelled_texts": int((source == 0).sum()), "augmented": int((source == 1).sum()),
              "teacher_labelled": labelled, "min_confidence": cfg.min_confidence,
              "discarded_low_confidence": int((confidence < cfg.min_confidence).sum()),
              "discarded_share": float((confidence < cfg.min_confidence).mean()) if labelled else 0.0,
              "kept": int(len(keep)), "examples": len(train) + int(len(keep)),
              **({"repeat": dict(cfg.repeat)} if cfg.repeat else {}),
              **({"augment": cfg.augment.model_dump()} if cfg.augment else {})}
    log(f"transfer set: {len(train):,} train + {len(keep):,} teacher-labelled examples "
        f"({report['unlabelled_texts']:,} unlabelled, {report['augmented']:,} augmented; "
        f"{report['discarded_share']:.1%} below confidence {cfg.min_confidence:g} dropped)")
    kept = [seqs[i] for i in keep]
    if ctx.cross_tokenizer and kept:
        report["student_tokenizer"] = "the teacher-labelled texts decoded and read with the student's own tokenizer"
        texts = ctx.teacher_tokenizer.batch_decode(kept, skip_special_tokens=True)
        kept = encode(Split("transfer", np.zeros(len(texts), dtype=np.int64), texts=texts), ctx.tokenizer,
                      ctx.recipe.data.max_length).ids
    data = Encoded(np.concatenate([train.labels, np.full(len(keep), IGNORE_LABEL, dtype=np.int64)]),
                   ids=list(train.ids) + list(kept), pad_id=train.pad_id)
    return data, np.concatenate([train_logits, logits[keep]]).astype(np.float32), report


def _file_rows(cfg: TransferConfig, column: str, source: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """(rows of the labelled examples from the file, times) for each file in cfg.repeat: unlabelled files come first
    in the transfer set, in their order, one example per text (counted again: the cache keeps no file index)."""
    out, start = [], 0
    for f in cfg.unlabelled:
        n = len(read_texts(f, column))
        if f in cfg.repeat and cfg.repeat[f] > 1:
            out.append((np.arange(start, start + n), cfg.repeat[f]))
        start += n
    assert start == int((source == 0).sum()), "the unlabelled files changed since they were labelled"
    return out


def _augmented(cfg: AugmentConfig, ctx: Context, seqs: list[list[int]]) -> list[list[int]]:
    """Augmented copies of the train sequences (the teacher's ids), neighbours taken from its token embeddings."""
    tok = ctx.teacher_tokenizer
    table = ctx.teacher_model().get_input_embeddings().weight
    tokens = tok.convert_ids_to_tokens(list(range(min(table.shape[0], len(tok)))))
    backend = getattr(tok, "backend_tokenizer", None)  # a fast tokenizer names its model: WordPiece, BPE, Unigram
    start, cont = word_pieces(tokens, set(tok.all_special_ids),
                              type(backend.model).__name__ if backend is not None else "WordPiece")
    used = np.array(sorted({ids[i] for ids in seqs for i in single_piece_words(ids, start, cont)}), dtype=np.int64)
    candidates = np.flatnonzero(start).astype(np.int64)
    neighbours = embedding_neighbours(table, used, candidates, cfg.neighbours) if len(used) and len(candidates) > 1 \
        else {}
    return augment_ids(seqs, cfg, start, cont, neighbours, tok.mask_token_id, ctx.seed)


def relabel(ctx: Context, teacher, seqs: list[list[int]]) -> np.ndarray:
    """A further teacher's logits on transfer examples given in the run tokenizer's ids: decoded to text and read
    with that teacher's own tokenizer (it may split words differently), cached like the primary's labels."""
    from safetensors.numpy import load_file

    from .predict import predict_logits

    key = stable_hash({"teacher": teacher.id, "run_teacher": ctx.teacher.id, "ids": stable_hash(seqs),
                       "max_length": ctx.recipe.data.max_length})
    path = ctx.cache_dir() / f"transfer-labels-{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["logits"]
    texts = ctx.tokenizer.batch_decode(seqs, skip_special_tokens=True)
    from transformers import AutoTokenizer

    enc = encode(Split("transfer", np.zeros(len(texts), dtype=np.int64), texts=texts),
                 AutoTokenizer.from_pretrained(str(teacher.path)), ctx.recipe.data.max_length)
    logits = predict_logits(ctx.teacher_model(teacher), enc, desc="further teacher labels the transfer set",
                            runtime=ctx.runtime)
    if ctx.runtime.is_main:
        write_safetensors_atomic(path, {"logits": logits})
    return logits
