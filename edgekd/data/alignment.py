"""Whether a student's tokenizer cuts texts into the teacher's pieces, and the map from its ids to the teacher's.

A pretrained student may read the texts with a tokenizer of its own. The intermediate distillation terms (hidden
states, attentions, relations) compare student and teacher position by position, so they need both to cut every text
into the same pieces. Tokenizers of one lineage often do while their ids differ: MPNet's WordPiece is BERT-uncased's
vocabulary with other special tokens (<s> and </s> where BERT has [CLS] and [SEP], at other ids). Then the teacher
reads the student's batches through an id map, and the positions line up by construction.
"""
from __future__ import annotations

import itertools

import numpy as np

# Special tokens map by their role, not their text: MPNet's vocabulary holds BERT's "[CLS]" as a piece, but MPNet's
# own tokenizer starts a text with "<s>".
ROLES = ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token", "bos_token", "eos_token")


def piece_map(student, teacher) -> np.ndarray:
    """For each student id, the teacher's id of the same piece (a special token: the teacher's token of the same
    role); -1 where the teacher has none."""
    s_vocab, t_vocab = student.get_vocab(), teacher.get_vocab()
    mapping = np.full(max(s_vocab.values()) + 1, -1, dtype=np.int64)
    for piece, i in s_vocab.items():
        mapping[i] = t_vocab.get(piece, -1)
    s_roles, t_roles = student.special_tokens_map, teacher.special_tokens_map
    for role in ROLES:
        if role in s_roles:
            mapping[s_vocab[s_roles[role]]] = t_vocab[t_roles[role]] if role in t_roles else -1
    return mapping


def first_misaligned(student_ids: list[list[int]], teacher_ids: list[list[int]], mapping: np.ndarray) -> int | None:
    """The index of the first text whose student pieces, mapped, are not what the teacher's own tokenizer made of it
    (None: every text lines up)."""
    s_len = np.fromiter(map(len, student_ids), dtype=np.int64, count=len(student_ids))
    t_len = np.fromiter(map(len, teacher_ids), dtype=np.int64, count=len(teacher_ids))
    bad = s_len != t_len
    if not bad.any():  # one vectorised comparison of all the texts' ids, then counted back per text
        differs = np.r_[0, np.cumsum(mapping[_flat(student_ids)] != _flat(teacher_ids))]
        ends = np.cumsum(s_len)
        bad = differs[ends] - differs[ends - s_len] > 0
    hit = np.flatnonzero(bad)
    return int(hit[0]) if len(hit) else None


def lacks_a_piece(mapping: np.ndarray, student_ids: list[list[int]]) -> bool:
    """Whether a text (in student ids) holds a piece the teacher has no counterpart of (a transfer-set text read back
    from the teacher's pieces may: the map would send it to a wrong row)."""
    return bool((mapping[_flat(student_ids)] < 0).any())


def _flat(seqs: list[list[int]]) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64)


def describe_difference(text: str, student, teacher, limit: int = 12) -> str:
    """How the two tokenizers cut one text, for an error message: the first `limit` pieces of each."""
    def pieces(tok) -> str:
        got = tok.convert_ids_to_tokens(tok(text)["input_ids"])
        return str(got[:limit])[:-1] + (", …]" if len(got) > limit else "]")
    shown = text if len(text) <= 80 else text[:77] + "..."
    return f"{shown!r} is {pieces(student)} to the student and {pieces(teacher)} to the teacher"


def aligned_map(student, teacher, texts: list[str], student_ids: list[list[int]], teacher_ids: list[list[int]]
                ) -> tuple[np.ndarray | None, str | None]:
    """The student-to-teacher id map where the two tokenizers cut every one of `texts` (already read by each:
    `student_ids`, `teacher_ids`) into the same pieces; else None and how they cut the first text they differ on."""
    mapping = piece_map(student, teacher)
    i = first_misaligned(student_ids, teacher_ids, mapping)
    return (mapping, None) if i is None else (None, describe_difference(texts[i], student, teacher))
