"""A dev split of inputs train has never seen, carved out of train: whole texts held out with their phrases.

GLUE SST-2's train split holds every labelled phrase of its treebank sentences, so a dev split drawn from the same
pool is mostly phrases of train sentences (overlap.py) and scores models on recall. `data.dev_holdout: N` builds
dev the way test was built instead: N whole texts that no other train text contains (for SST-2 the sentences, the
roots of its parse trees), and every train text of at least MIN_CHARS that occurs inside one of them leaves train
with it, so neither the sentence nor its labelled phrases are trained on. Shorter texts ("good", "the film") stay:
they sit inside many sentences by chance, as in test.

Hand-written because it is Python's own substring search behind a small index (`_Containers`): a text is looked
for only in the few longer texts that hold its rarest 4-character pieces, instead of in all of them joined (which
took most of a data load's time on SST-2's 60k texts).
"""
from __future__ import annotations

import numpy as np

from .overlap import MIN_CHARS


class _Containers:
    """Texts that a query may lie inside, indexed by their GRAM-character pieces: a query lies inside one of them
    only if every piece of it is in the index, and then only inside the texts holding its rarest piece (checked with
    `in`); a query shorter than a piece is looked for in the texts joined."""

    GRAM = 4

    def __init__(self, texts=()):
        self.texts: list[str] = []
        self.index: dict[str, list[int]] = {}
        self._joined: str | None = None
        for t in texts:
            self.add(t)

    def add(self, text: str) -> None:
        k = len(self.texts)
        self.texts.append(text)
        for piece in {text[i:i + self.GRAM] for i in range(len(text) - self.GRAM + 1)}:
            self.index.setdefault(piece, []).append(k)
        self._joined = None

    def hold(self, query: str) -> bool:
        """Whether `query` lies inside one of the texts."""
        n = self.GRAM
        if len(query) < n:
            if self._joined is None:
                self._joined = "\0".join(self.texts)
            return query in self._joined if "\0" not in query else any(query in t for t in self.texts)
        rarest = None  # pieces at every n-th position and the last: each must be in the index
        for i in (*range(0, len(query) - n + 1, n), len(query) - n):
            holders = self.index.get(query[i:i + n])
            if holders is None:
                return False
            if rarest is None or len(holders) < len(rarest):
                rarest = holders
        return any(query in self.texts[k] for k in rarest)


def roots(texts: list[str]) -> list[int]:
    """Indices of the texts that occur inside no other (longer) text, case-insensitive; of duplicates, the first."""
    norm = [t.strip().lower() for t in texts]
    first = {}
    for i, t in enumerate(norm):
        first.setdefault(t, i)
    unique = sorted(first, key=len, reverse=True)
    found = _Containers()
    k = 0
    while k < len(unique):
        length = len(unique[k])
        # every root found so far is longer than this length: a text of this length lies inside one of them or
        # is a root itself (a same-length container would be the same text, and duplicates are merged)
        new = []
        while k < len(unique) and len(unique[k]) == length:
            if not found.hold(unique[k]):
                new.append(unique[k])
            k += 1
        for t in new:
            found.add(t)
    return sorted(first[t] for t in found.texts)


def hold_out(texts: list[str], count: int | float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """(dev indices, train indices, facts): `count` roots (or, a float, that share of them, at least one) drawn at
    random (seeded), and train without them and without every text of at least MIN_CHARS inside one of them."""
    candidates = roots(texts)
    share = count if isinstance(count, float) else None
    if share is not None:
        count = max(1, round(share * len(candidates)))
    if count >= len(candidates):
        asked = f"{share:g} of its whole texts ({count})" if share is not None else f"{count} whole texts"
        raise ValueError(f"data.dev_holdout asks for {asked}, but train has {len(candidates)} texts that no other "
                         "train text contains; ask for fewer")
    rng = np.random.default_rng(seed)
    dev = np.sort(rng.choice(candidates, count, replace=False))
    dev_norm = {texts[i].strip().lower() for i in dev}
    containers = _Containers(sorted(dev_norm))
    train, removed = [], 0
    for i, t in enumerate(texts):
        t = t.strip().lower()
        if t in dev_norm or (len(t) >= MIN_CHARS and containers.hold(t)):
            removed += 1
            continue
        train.append(i)
    facts = {"dev": int(count), "roots": len(candidates), "removed_from_train": removed - int(count),
             "min_chars": MIN_CHARS, "seed": seed, **({"share": share} if share is not None else {})}
    return dev, np.asarray(train, dtype=np.int64), facts
