"""Does a held-out split leak the train split? The share of its texts found verbatim inside train texts.

Model selection (select_on_dev, the best distillation epoch, a pruning step's dev score) trusts dev to stand for
unseen inputs. In GLUE SST-2 it does not: its train split holds every labelled phrase of the treebank's parse
trees, so a dev set carved from the same pool is mostly phrases of train sentences (87% of
../shared/data/sst2/dev.tsv), while the test split's sentences appear nowhere in train (0%). Such a dev split
measures recall of training phrases: it can rank two models the other way round from test. The check is Python's
own substring search over the joined train text for a sample of dev texts: exact, and 0.25 s for SST-2, so no
library (a suffix automaton, MinHash) is worth its dependency here.
"""
from __future__ import annotations

import numpy as np

SAMPLE = 200  # held-out texts checked: enough to tell 5% from 50% (the binomial error at 50% is 3.5 points)
MIN_CHARS = 12  # shorter texts ("good", "a mess") sit inside some train text by chance, not by leakage
WARN_SHARE = 0.2


def share_inside(held_out: list[str], train: list[str] | str, sample: int = SAMPLE, seed: int = 0) -> float | None:
    """The share of (a sample of) held-out texts of at least MIN_CHARS that occur verbatim inside some train text,
    case-insensitive; None when there are none that long. `train` may be given already joined (_joined)."""
    candidates = [t.strip().lower() for t in held_out if len(t.strip()) >= MIN_CHARS]
    if not candidates:
        return None
    rng = np.random.default_rng(seed)
    picked = [candidates[i] for i in rng.choice(len(candidates), min(sample, len(candidates)), replace=False)]
    joined = train if isinstance(train, str) else _joined(train)
    return sum(text in joined for text in picked) / len(picked)


def _joined(train: list[str]) -> str:
    return "\n".join(t.lower() for t in train)  # no text spans a newline: a match lies inside one train text


def leak_check(dev: list[str], test: list[str], train: list[str]) -> dict | None:
    """Both held-out splits' shares inside train, and the warning dev's share calls for (None: none); None when dev
    has no text long enough to tell. For the run's manifest and report, and the warning printed at load time."""
    joined = _joined(train)
    dev_share = share_inside(dev, joined)
    if dev_share is None:
        return None
    test_share = share_inside(test, joined)
    return {"dev": dev_share, "test": test_share, "sample": SAMPLE, "min_chars": MIN_CHARS,
            "warning": leak_warning("dev", dev_share, test_share)}


def leak_warning(split: str, share: float, test_share: float | None) -> str | None:
    """A one-paragraph warning when a share of the held-out texts sits inside train texts, else None."""
    if share < WARN_SHARE:
        return None
    versus = f" (test: {test_share:.0%})" if test_share is not None else ""
    return (f"{share:.0%} of the {split} split's texts occur verbatim inside train texts{versus}: {split} measures "
            "recall of training phrases, not unseen inputs, so choices made on it (select_on_dev, pruning steps) may "
            f"not carry over to test. Set data.dev_holdout (e.g. 872) to hold out whole train texts with the phrases "
            f"inside them as dev, or give a {split} split of texts that train does not contain.")
