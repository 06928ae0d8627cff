"""How far new inputs have moved from the data the student was distilled on: the population stability index.

The reference (written at export, beside the model) holds the decile edges of the teacher's
confidence and of the token length on held-out task data (the dev split), and its share in each
bin. New inputs are binned on the same edges. PSI = sum((new - ref) * ln(new / ref)) over the
bins; the usual reading in production monitoring is < 0.1 stable, 0.1-0.25 moderate shift,
> 0.25 a shift worth acting on (here: re-distilling on fresh teacher outputs). Written by hand:
it is four lines of numpy, and scipy has no PSI.
"""
from __future__ import annotations

import numpy as np
from scipy.special import softmax

BINS = 10
_EPS = 1e-4  # an empty bin would make the logarithm infinite


def _edges(values: np.ndarray) -> list[float]:
    """Interior decile edges (repeated ones merged: lengths are integers)."""
    return sorted({float(q) for q in np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1])})


def _shares(values: np.ndarray, edges: list[float]) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(1, len(values))


def confidences(logits: np.ndarray) -> np.ndarray:
    """The top class probability of each row of logits."""
    return softmax(logits, axis=-1).max(-1)


def drift_reference(teacher_logits: np.ndarray, lengths: np.ndarray) -> dict:
    """Bins of teacher confidence and token length on the task's held-out data."""
    out = {"examples": int(len(lengths))}
    for name, values in (("teacher_confidence", confidences(teacher_logits)), ("length", lengths.astype(float))):
        edges = _edges(values)
        out[name] = {"edges": edges, "shares": _shares(values, edges).tolist(), "mean": float(values.mean())}
    return out


def psi(reference: list[float], new: np.ndarray) -> float:
    ref = np.clip(np.asarray(reference, dtype=float), _EPS, None)
    cur = np.clip(new, _EPS, None)
    return float(((cur - ref) * np.log(cur / ref)).sum())


def drift(reference: dict, teacher_logits: np.ndarray, lengths: np.ndarray) -> dict:
    """PSI and means of the new inputs against the reference, per quantity."""
    out = {}
    for name, values in (("teacher_confidence", confidences(teacher_logits)), ("length", lengths.astype(float))):
        ref = reference[name]
        shares = _shares(values, ref["edges"])
        value = psi(ref["shares"], shares)
        out[name] = {"psi": value, "reading": "stable" if value < 0.1 else "moderate shift" if value < 0.25 else
                     "large shift", "mean": float(values.mean()), "reference_mean": ref["mean"]}
    return out
