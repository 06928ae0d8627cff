"""A dev split of inputs train has never seen, carved out of train: whole texts held out with their phrases.

GLUE SST-2's train split holds every labelled phrase of its treebank sentences, so a dev split drawn from the same
pool is mostly phrases of train sentences (overlap.py) and scores models on recall. `data.dev_holdout: N` builds
dev the way test was built instead: N whole texts that no other train text contains (for SST-2 the sentences, the
roots of its parse trees), and every train text of at least MIN_CHARS that occurs inside one of them leaves train
with it, so neither the sentence nor its labelled phrases are trained on. Shorter texts ("good", "the film") stay:
they sit inside many sentences by chance, as in test.

Hand-written because it is a few lines of Python's own substring search: finding the roots scans texts from the
longest down against the joined longer roots (8 s for SST-2's 60k texts on a 2-core Zen 1, once per data load; an
n-gram index would cut it, at the cost of more code than the rest of this file).
"""
from __future__ import annotations

import numpy as np

from .overlap import MIN_CHARS


def roots(texts: list[str]) -> list[int]:
    """Indices of the texts that occur inside no other (longer) text, case-insensitive; of duplicates, the first."""
    norm = [t.strip().lower() for t in texts]
    first = {}
    for i, t in enumerate(norm):
        first.setdefault(t, i)
    unique = sorted(first, key=len, reverse=True)
    found: list[str] = []
    joined, k = "", 0
    while k < len(unique):
        length = len(unique[k])
        # every root found so far is longer than this length: a text of this length lies inside one of them or
        # is a root itself (a same-length container would be the same text, and duplicates are merged)
        joined = "\n".join(found)
        while k < len(unique) and len(unique[k]) == length:
            if unique[k] not in joined:
                found.append(unique[k])
            k += 1
    return sorted(first[t] for t in found)


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
    joined = "\n".join(dev_norm)
    train, removed = [], 0
    for i, t in enumerate(texts):
        t = t.strip().lower()
        if t in dev_norm or (len(t) >= MIN_CHARS and t in joined):
            removed += 1
            continue
        train.append(i)
    facts = {"dev": int(count), "roots": len(candidates), "removed_from_train": removed - int(count),
             "min_chars": MIN_CHARS, "seed": seed, **({"share": share} if share is not None else {})}
    return dev, np.asarray(train, dtype=np.int64), facts
