"""Estimates for absent devices carry their profile's error against published measurements, or say they have none."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekd.devices.anchors import SHIPPED_ANCHORS, UNANCHORED, estimate_trust, load_anchors, profile_anchor
from edgekd.devices.estimate import calibration_path, load_calibration
from edgekd.devices.profile_folders import profile_files

ROOT = Path(__file__).resolve().parents[1]


def test_every_shipped_estimated_profile_is_anchored_to_the_shipped_calibration():
    """The anchors were computed with the calibration that ships: change one without rerunning
    `python -m benchmarks.anchors` and this fails."""
    data = load_anchors()
    assert data, f"{SHIPPED_ANCHORS} is missing: run python -m benchmarks.anchors"
    from edgekd.devices.profiles import load_profile

    estimated = [n for n in profile_files() if not load_profile(n).measured]
    assert set(estimated) <= set(data["profiles"]), sorted(set(estimated) - set(data["profiles"]))
    cal = load_calibration()
    for name in estimated:
        trust = estimate_trust(name, cal)
        assert trust["anchored"], (name, trust["anchor"])
        anchors = data["profiles"][name]["anchors"]
        # the profile's error is its worst anchor's, each relative to the estimate
        errors = [abs(a["published_ms"] - a["estimated_ms"]) / a["estimated_ms"] for a in anchors]
        assert trust["estimator_error"] == pytest.approx(max(errors), abs=2e-3)
        assert all(a["source"] and a["hardware"] for a in anchors)
    # the benchmark's record says which machine, versions and commit computed them
    record = json.loads((ROOT / "benchmarks" / "results" / "anchors.json").read_text())
    assert {"machine", "versions", "commit"} <= set(record)


def test_an_estimate_is_unanchored_for_a_user_profile_another_calibration_or_no_anchor(tmp_path, monkeypatch):
    data = load_anchors()
    name = next(iter(data["profiles"]))
    other = tmp_path / "cal.json"
    other.write_text(calibration_path().read_text() + " ")
    assert not profile_anchor(name, other)["anchored"]
    assert "rerun python -m benchmarks.anchors" in profile_anchor(name, other)["why"]
    assert not profile_anchor("no-such-device", calibration_path())["anchored"]
    user = tmp_path / "profiles"
    user.mkdir()
    (user / f"{name}.yaml").write_text((Path(str(profile_files()[name].path))).read_text())
    monkeypatch.setenv("EDGEKD_PROFILES_DIR", str(user))
    mine = profile_anchor(name, calibration_path())
    assert not mine["anchored"] and "user profile" in mine["why"]
    assert UNANCHORED == "unanchored estimate"
