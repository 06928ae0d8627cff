"""What a distillation transferred, on a held-out split: calibration, per-class accuracy, disagreements.

Agreement alone hides where the student differs: `transfer_report` adds expected calibration error
(ECE, 15 equal-width confidence bins, as in Guo et al. 2017) of student and teacher, accuracy per
class, and the list of inputs where the two disagree with both predictions and confidences — the
shadow-comparison file a user reads before trusting the student.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.special import softmax

ECE_BINS = 15


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """The share-weighted gap between confidence and accuracy over equal-width confidence bins."""
    p = softmax(logits.astype(np.float64), axis=-1)
    conf, pred = p.max(-1), p.argmax(-1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.mean() * abs((pred[sel] == labels[sel]).mean() - conf[sel].mean())
    return float(total)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, float | None]:
    return {name: (float((pred[labels == c] == c).mean()) if (labels == c).any() else None)
            for c, name in enumerate(names)}


def transfer_report(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, label_names: list[str],
                    texts: list[str] | None, out_file: Path | None) -> dict:
    """Metrics of a student against its teacher on one split; writes the disagreements as JSON lines."""
    ps, pt = softmax(student.astype(np.float64), axis=-1), softmax(teacher.astype(np.float64), axis=-1)
    s_pred, t_pred = ps.argmax(-1), pt.argmax(-1)
    disagree = np.flatnonzero(s_pred != t_pred)
    if out_file is not None:
        with open(out_file, "w", encoding="utf-8") as f:
            for i in disagree:
                f.write(json.dumps({"index": int(i), **({"text": texts[i]} if texts is not None else {}),
                                    "label": label_names[int(labels[i])],
                                    "student": label_names[int(s_pred[i])], "student_confidence": round(float(ps[i].max()), 4),
                                    "teacher": label_names[int(t_pred[i])], "teacher_confidence": round(float(pt[i].max()), 4)},
                                   ensure_ascii=False) + "\n")
    return {"accuracy": float((s_pred == labels).mean()), "teacher_accuracy": float((t_pred == labels).mean()),
            "agreement": float((s_pred == t_pred).mean()),
            "ece": expected_calibration_error(student, labels), "teacher_ece": expected_calibration_error(teacher, labels),
            "per_class_accuracy": per_class_accuracy(s_pred, labels, label_names),
            "teacher_per_class_accuracy": per_class_accuracy(t_pred, labels, label_names),
            "disagreements": int(len(disagree)), **({"disagreements_file": out_file.name} if out_file else {})}
