"""How far the latency estimate of an absent device is from published measurements on that device: its anchors.

`python -m benchmarks.anchors` estimates public models (BERT-base, DistilBERT, MobileBERT) at the shapes and
precisions of published on-device measurements and writes profiles/calibration/anchors.json (package data) with each
anchor's error, |published - estimated| / estimated, and a profile's error, its largest anchor's. An estimate on a
profile is labelled with that error. It is not labelled with the host estimator's own error: that says how well the
cost model fits this host, not how well a phone's peak figures stand in for the phone.

An anchor holds only for what it was computed with: the shipped profile (a user's profile of the same name may
have other figures) and the shipped host calibration (checked by hash). Otherwise the estimate is unanchored.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .profile_folders import SHIPPED, profile_files, shipped_dir

SHIPPED_ANCHORS = Path(str(shipped_dir().joinpath("calibration").joinpath("anchors.json")))
UNANCHORED = "unanchored estimate"


def anchored_error(anchors: list[dict]) -> float:
    return max(float(a["error"]) for a in anchors)


def load_anchors() -> dict:
    try:
        data = json.loads(SHIPPED_ANCHORS.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def calibration_sha256(path: Path) -> str | None:
    """What the anchors were computed with (a calibration file's hash); None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def profile_anchor(name: str, calibration_file: Path) -> dict:
    """{"anchored": bool, "error": float | None, "anchors": [...], "why": str} for profile `name`."""
    data = load_anchors()
    entry = (data.get("profiles") or {}).get(name)
    if not entry:
        return {"anchored": False, "error": None, "anchors": [], "why": f"no published measurement anchors {name}"}
    found = profile_files().get(name)
    if found is None or found.origin != SHIPPED:
        return {"anchored": False, "error": None, "anchors": [],
                "why": f"{name} is a user profile; the anchors hold for the shipped one"}
    if calibration_sha256(calibration_file) != data.get("calibration_sha256"):
        return {"anchored": False, "error": None, "anchors": [],
                "why": f"the estimator calibration {calibration_file} is not the one the anchors were computed with "
                       "(rerun python -m benchmarks.anchors)"}
    return {"anchored": True, "error": float(entry["error"]), "anchors": entry["anchors"],
            "why": "; ".join(f"{a['model']} at seq {a['seq_len']} on {a['hardware'].split(' (')[0]}: published "
                             f"{a['published_ms']:g} ms, estimated {a['estimated_ms']:g} ms" for a in entry["anchors"])}


def estimate_trust(profile_name: str, calibration: dict) -> dict:
    """What an estimate on `profile_name` with the calibration in use carries: its anchored error (None when
    unanchored), whether it is anchored and why (or why not), and the host estimator's own error for reference."""
    from .estimate import calibration_path, estimator_error

    anchor = profile_anchor(profile_name, calibration_path())
    return {"estimator_error": anchor["error"], "anchored": anchor["anchored"], "anchor": anchor["why"],
            "host_estimator_error": estimator_error(calibration)}
