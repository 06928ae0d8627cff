"""Shared statistics of the benchmarks: paired-bootstrap intervals of accuracy differences on one test set.

test.tsv has 872 sentences: one is 0.11 points, and two models that agree on 91% of them differ by about a point
from sampling alone. So a target such as "pruning loses <= 0.5 points" is judged with the 95% interval of the
difference, resampling the sentences (paired: both models answer the same resampled sentences; scipy's bootstrap,
percentile method, 10,000 resamples).
"""
from __future__ import annotations

import numpy as np

# (name, from, to): the difference `to` - `from` in accuracy points, as benchmark targets are stated
DIFFERENCES = (
    ("pruning", "edgekd-student-fp32", "edgekd-pruned-fp32"),
    ("INT8 against its own FP32 export", "edgekd-qat-fp32", "edgekd-int8"),
    ("shipped model against the teacher", "teacher-fp32", "edgekd-int8"),
    ("shipped model against the distilled student", "edgekd-student-fp32", "edgekd-int8"),
    # the NPU builds against onnxruntime's QNN PTQ recipe of the same pruned student, both as the HTP computes them
    ("NPU build w8a8 against the QNN PTQ baseline", "peer-npu-qnn-ptq-w8a8", "edgekd-npu-w8a8"),
    ("NPU build w8a16 against the QNN PTQ baseline", "peer-npu-qnn-ptq-w8a16", "edgekd-npu-w8a16"),
    # the text CNN on the teacher's token embeddings reduced by SVD against the same CNN on them copied
    ("text CNN, SVD table against the copied one", "edgekd-cnn-wide-int8", "edgekd-cnn-svd640-int8"),
)


def paired_intervals(correct: dict[str, np.ndarray], seed: int = 0) -> dict[str, dict]:
    """{difference: {"points", "ci95", "from", "to"}} for each of DIFFERENCES whose systems are in `correct`
    ({system: per-sentence 0/1 correctness on the same sentences})."""
    from scipy.stats import bootstrap

    out = {}
    for name, a, b in DIFFERENCES:
        if a not in correct or b not in correct:
            continue
        d = 100.0 * (correct[b].astype(np.float64) - correct[a].astype(np.float64))
        res = bootstrap((d,), np.mean, n_resamples=10_000, confidence_level=0.95, method="percentile",
                        random_state=np.random.default_rng(seed))
        ci = res.confidence_interval
        out[name] = {"from": a, "to": b, "points": float(d.mean()), "ci95": [float(ci.low), float(ci.high)],
                     "sentences": int(d.size), "disagreeing": int(np.count_nonzero(d))}
    return out


def describe(intervals: dict[str, dict]) -> list[str]:
    return [f"{name}: {v['points']:+.2f} points (95% interval {v['ci95'][0]:+.2f} to {v['ci95'][1]:+.2f}; "
            f"{v['disagreeing']} of {v['sentences']} sentences right in one and wrong in the other)"
            for name, v in intervals.items()]
