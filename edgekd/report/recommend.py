"""Which device and model to ship: candidates, the Pareto frontier and the recommendation.

Everything here is a pure function over run summaries (manifest.json dicts) except
`device_info`, which reads the profile files once so that the rest stays unit-testable.

The rule (also printed in every report, from RULE_TEXT):
- a candidate is (run, model, device profile) at the reference case (batch 1, 1 thread, 128
  tokens for text: `seq128_t1`, else `t1`, else the first `*_t1` case, else the first case);
- it qualifies when p50 latency <= --max-latency-ms, test accuracy >= --min-accuracy and the
  profile's compatibility check (when present) did not fail; an *estimated* latency must meet
  the limit with its error bar added, p50 x (1 + estimator_error), because an estimate that
  fits only by its central value is not something to ship on; the error bar is the profile's
  own, measured against published timings on that device (devices/anchors.py);
- among qualifying candidates, measured devices and anchored estimates come before unanchored
  estimates (no published measurement says how far off they are), then the cheapest wins:
  cheapest device first (by cost_usd when every
  candidate device states one, otherwise by device class, cost_usd breaking ties), then the
  smallest model (MB), then the lowest p50 latency;
- when nothing qualifies the closest candidate is shown: the smallest total relative shortfall
  (latency over the limit / limit + accuracy under the minimum / minimum), then cheapest;
- PTQ baselines (candidates with `baseline`) are rows for comparison, never the choice.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

# Device classes, cheapest first. The phone is the device the user already carries, a Pi is a
# small purchase, an NPU board costs more, an x86 server is the most expensive to run.
CLASSES = ["phone CPU", "Raspberry Pi / SBC", "NPU", "x86 server"]
_KEYWORDS = [  # whole words; checked in this order: a "phone-npu" is an NPU, not a phone CPU
    ("NPU", re.compile(r"npu|nnapi|qnn|hexagon|coreml|ane|edgetpu|tpu|coral|vitis\w*|rknn|rknpu|ethos\w*|dsp|hailo\w*")),
    ("Raspberry Pi / SBC", re.compile(r"raspberry|rpi\d*|pi\d?|sbc|orangepi\w*|rock\d\w*")),
    ("phone CPU", re.compile(r"\w*phone|android|ios|pixel\d*|snapdragon|mobile|galaxy|exynos|dimensity")),
    ("x86 server", re.compile(r"x86\w*|amd64|xeon|epyc|server|host|desktop|laptop|avx\w*")),
]
REFERENCE_CASES = ("seq128_t1", "t1")
MODEL_ORDER = ("teacher-fp32", "final-fp32", "final")

RULE_TEXT = (
    "Candidates are every (run, model, device) at the reference case (batch 1, 1 thread, 128 tokens: "
    "`seq128_t1`, or `t1` for images). A candidate qualifies when its p50 latency is at most the latency "
    "limit, its test accuracy is at least the accuracy minimum and the device's compatibility check did not "
    "fail; an estimated latency must fit with its error bar added (p50 × (1 + estimator error)), the error of "
    "the profile's estimates against published measurements on that device. Measured devices and anchored "
    "estimates rank before unanchored estimates (a device no published measurement checks), then the cheapest "
    "wins. \"Cheapest\" means: cheapest device first — by `cost_usd` when every candidate device states one, "
    "otherwise by device class (phone CPU < Raspberry Pi / SBC < NPU < x86 server, recognised from the "
    "profile's name, execution provider or description, or given by its `cost_rank` 0–3; a profile matching "
    "no class counts as an x86 server; `cost_usd` breaks ties) — then the smallest model file (MB), then "
    "the lowest p50 latency. When nothing qualifies, the closest candidate is shown: the smallest total "
    "relative shortfall (latency over the limit ÷ limit + accuracy under the minimum ÷ minimum). "
    "PTQ baselines (the final model's FP32 export quantized after training by onnxruntime's own tools) are "
    "measured for comparison and never recommended: the run does not ship them."
)


def baseline_label(model: dict | None) -> str | None:
    """"PTQ baseline (onnxruntime …)" for a post-training quantization baseline the profile stage built and
    measured next to the shipped models (not shipped itself), else None."""
    tool = (model or {}).get("baseline")
    if tool:
        return f"PTQ baseline ({tool})"
    why = (model or {}).get("not_shipped")  # the QAT INT8 model where it did not pay on the host
    return f"not shipped: {why}" if why else None


def device_class(name: str, info: dict | None = None) -> tuple[int, str]:
    """(rank, class) of a profile from an explicit `cost_rank`, else keywords in its name/description/provider."""
    info = info or {}
    if isinstance(info.get("cost_rank"), (int, float)):
        r = int(info["cost_rank"])
        return r, CLASSES[r] if 0 <= r < len(CLASSES) else f"cost rank {r}"
    provider = str(info.get("execution_provider") or "CPUExecutionProvider").lower().replace("executionprovider", "")
    # The name says most, then the execution provider, then the description. In a description an
    # NPU word ("unlike an NPU, …") counts only when the provider is not the plain CPU one.
    for source, text in (("name", name), ("provider", provider), ("description", str(info.get("description", "")))):
        words = set(re.split(r"[^a-z0-9]+", text.lower())) - {""}
        for cls, pattern in _KEYWORDS:
            if source == "description" and cls == "NPU" and provider == "cpu":
                continue
            if any(pattern.fullmatch(w) for w in words):
                return CLASSES.index(cls), cls
    return CLASSES.index("x86 server"), "x86 server"


def device_info(names) -> dict[str, dict]:
    """Profile fields the rule uses, read from the profile files; unknown profiles get {}."""
    import yaml

    from ..devices.profile_folders import profile_files

    files = profile_files()
    info = {}
    for name in names:
        # Read the YAML directly rather than via load_profile: a cost field the strict profile
        # model does not know yet must not make the report fail.
        found = files.get(name)
        path = Path(name) if name.endswith((".yaml", ".yml")) else found.path if found else None
        path = path if path is not None and path.is_file() else None
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path else None
        except (OSError, ValueError, yaml.YAMLError):
            raw = None
        raw = raw if isinstance(raw, dict) else {}
        cost = next((raw[k] for k in ("cost_usd", "price_usd", "cost") if isinstance(raw.get(k), (int, float))), None)
        info[name] = {"description": raw.get("description", ""), "execution_provider": raw.get("execution_provider", ""),
                      "measured": raw.get("measured"), "cost_usd": cost, "cost_rank": raw.get("cost_rank")}
    return info


def run_labels(summaries: list[dict]) -> list[str]:
    """A short unique label per run: its recipe name, numbered when two runs share one."""
    names = [str(s.get("name") or f"run{i + 1}") for i, s in enumerate(summaries)]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def reference_case(latency: dict) -> str | None:
    for c in REFERENCE_CASES:
        if c in latency:
            return c
    return next((c for c in latency if c.endswith("_t1")), next(iter(latency), None))


def _throughput(model: dict, profile: str) -> float | None:
    """Best measured items/s over the profile's batch sizes (throughput cases), else None."""
    cases = ((model.get("throughput") or {}).get(profile) or {}).values()
    rates = [c["items_per_s"] for c in cases if isinstance(c, dict) and isinstance(c.get("items_per_s"), (int, float))]
    return max(rates) if rates else None


def trusted_error(entry: dict) -> float | None:
    """An anchored estimate's error (its profile's, against published measurements); None for an unanchored one
    (a run from before anchors carried the host estimator's error, which says nothing about the device)."""
    err = entry.get("estimator_error")
    return float(err) if entry.get("anchored") and isinstance(err, (int, float)) else None


def estimate_label(estimated: bool, error: float | None) -> str:
    """How a latency was obtained, as every report writes it."""
    if not estimated:
        return "measured"
    return "unanchored estimate" if error is None else f"estimated ±{100 * error:.0f}%"


def candidates(summaries: list[dict], devices: dict[str, dict] | None = None) -> list[dict]:
    """One row per (run, model, profile) with a latency at the profile's reference case."""
    devices = devices or {}
    rows = []
    for label, s in zip(run_labels(summaries), summaries):
        systems = s.get("systems") or {}
        order = [m for m in MODEL_ORDER if m in systems] + [m for m in systems if m not in MODEL_ORDER]
        for model in order:
            m = systems[model] or {}
            for prof, lat in (m.get("latency_ms") or {}).items():
                case = reference_case(lat or {})
                entry = (lat or {}).get(case) or {}
                if not isinstance(entry.get("p50"), (int, float)):
                    continue
                estimated = bool(entry.get("estimated"))
                error = trusted_error(entry) if estimated else None
                rank, cls = device_class(prof, devices.get(prof))
                compat = (s.get("compat") or {}).get(prof)
                rows.append({
                    "run": label, "model": model, "label": f"{label}/{model}", "device": prof,
                    "device_class": cls, "cost_rank": rank, "cost_usd": (devices.get(prof) or {}).get("cost_usd"),
                    "case": case, "p50_ms": float(entry["p50"]), "p90_ms": entry.get("p90"),
                    "throughput": _throughput(m, prof),
                    "peak_memory_mb": entry.get("peak_memory_mb"), "size_mb": m.get("size_mb"),
                    "params": m.get("params"), "accuracy": m.get("accuracy"), "agreement": m.get("agreement"),
                    "baseline": baseline_label(m), "estimated": estimated,
                    "estimator_error": error, "unanchored": estimated and error is None,
                    "compat_ok": None if not isinstance(compat, dict) else compat.get("ok"),
                    "other_cases": {c: e.get("p50") for c, e in lat.items() if c != case and isinstance(e, dict)},
                })
    return rows


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both (lower, higher)."""
    keep = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            keep.append(i)
    return sorted(keep, key=lambda i: points[i][0])


def _latency_bound(c: dict) -> float:
    return c["p50_ms"] * (1 + (c["estimator_error"] or 0.0)) if c["estimated"] else c["p50_ms"]


def _failures(c: dict, max_latency_ms, min_accuracy) -> list[str]:
    why = []
    if max_latency_ms is not None and _latency_bound(c) > max_latency_ms:
        what = "estimated p50 with its error bar" if c["estimated"] else "p50"
        why.append(f"{what} {_latency_bound(c):.3g} ms > {max_latency_ms:g} ms")
    if min_accuracy is not None and (c["accuracy"] is None or c["accuracy"] < min_accuracy):
        acc = "unknown" if c["accuracy"] is None else f"{100 * c['accuracy']:.2f}%"
        why.append(f"accuracy {acc} < {100 * min_accuracy:.2f}%")
    if c["compat_ok"] is False:
        why.append("the model fails the device's compatibility check")
    return why


def _cost_key(rows: list[dict]):
    all_priced = rows and all(isinstance(r["cost_usd"], (int, float)) for r in rows)

    def key(c):
        usd = c["cost_usd"] if isinstance(c["cost_usd"], (int, float)) else math.inf
        device = (usd,) if all_priced else (c["cost_rank"], usd)
        return (c["unanchored"], *device, c["size_mb"] if c["size_mb"] is not None else math.inf, c["p50_ms"], c["device"], c["label"])
    return key


def _shortfall(c: dict, max_latency_ms, min_accuracy) -> float:
    s = 0.0
    if max_latency_ms:
        s += max(0.0, _latency_bound(c) / max_latency_ms - 1)
    if min_accuracy:
        s += max(0.0, (min_accuracy - (c["accuracy"] or 0.0)) / min_accuracy)
    return s + (1.0 if c["compat_ok"] is False else 0.0)  # an incompatible device is far away


def normalize_accuracy(min_accuracy: float | None) -> float | None:
    """Accept 0.9 or 90 for 90 %: summaries hold fractions."""
    return None if min_accuracy is None else (min_accuracy / 100 if min_accuracy > 1 else min_accuracy)


def recommend(summaries: list[dict], max_latency_ms: float | None = None, min_accuracy: float | None = None,
              devices: dict[str, dict] | None = None) -> dict:
    """The cheapest qualifying candidate, or (qualified=False) the closest one; see RULE_TEXT."""
    min_accuracy = normalize_accuracy(min_accuracy)
    rows = candidates(summaries, devices)
    for c in rows:
        c["failures"] = _failures(c, max_latency_ms, min_accuracy)
    eligible = [c for c in rows if not c.get("baseline")]  # PTQ baselines: for comparison, not shipped
    result = {"max_latency_ms": max_latency_ms, "min_accuracy": min_accuracy, "rule": RULE_TEXT,
              "candidates": rows, "eligible": len(eligible), "qualifying": sum(not c["failures"] for c in eligible),
              "choice": None}
    if not eligible:
        result.update(qualified=False, text="No candidate: no run has latency measurements or estimates.")
        return result
    key = _cost_key(eligible)
    ok = sorted((c for c in eligible if not c["failures"]), key=key)
    if ok:
        choice = ok[0]
        result.update(qualified=True, choice=choice, text=f"Recommended: {describe(choice)}.")
    else:
        choice = min(eligible, key=lambda c: (_shortfall(c, max_latency_ms, min_accuracy), key(c)))
        result.update(qualified=False, choice=choice,
                      text=f"No device and model meet the constraints. Closest candidate: {describe(choice)} — "
                           + "; ".join(choice["failures"]) + ".")
    return result


def describe(c: dict) -> str:
    acc = "accuracy unknown" if c["accuracy"] is None else f"accuracy {100 * c['accuracy']:.2f}%"
    size = "" if c["size_mb"] is None else f", {c['size_mb']:.3g} MB"
    how = estimate_label(c["estimated"], c["estimator_error"])
    lat = f"p50 {c['p50_ms']:.3g} ms ({how}, not measured)" if c["estimated"] else f"p50 {c['p50_ms']:.3g} ms (measured)"
    return f"model {c['label']} on {c['device']} ({c['device_class']}) — {lat} at {c['case']}, {acc}{size}"


def profile_names(summaries: list[dict]) -> list[str]:
    names = []
    for s in summaries:
        for m in (s.get("systems") or {}).values():
            for p in (m or {}).get("latency_ms") or {}:
                if p not in names:
                    names.append(p)
    return names
