"""export.device_weights: a device build whose activations are wider than QAT trained takes the weights QAT started
from (found beside the QAT artifact), a build of QAT's own width the QAT weights; the choice is recorded."""
from __future__ import annotations

import pytest
from torch import nn

import edgekd.export.device_weights as dw
from edgekd.artifact import Artifact, parent_artifact, write_manifest
from edgekd.devices.profiles import load_profile
from edgekd.errors import EdgekdError


def _artifact(stages, name: str, id: str, parent: str | None, spec: dict) -> Artifact:
    folder = stages / name
    folder.mkdir(parents=True)
    write_manifest(folder, id=id, stage=name.split("-")[1], config={}, metrics={}, parent=parent, spec=spec)
    return Artifact.load(folder)


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A run's stages/ folder with a prune artifact and the QAT artifact made from it; loading a model returns a
    marker module naming the artifact."""
    stages = tmp_path / "stages"
    _artifact(stages, "01-prune-p1", "p1", "d1", {"family": "bert"})
    _artifact(stages, "01-prune-p2", "p2", "d1", {"family": "bert"})  # another student's: not the parent
    qat = _artifact(stages, "02-qat-q1", "q1", "p1", {"quant": {"scheme": {"activation_dtype": "uint8"}}})
    loads = []

    def load(artifact):
        loads.append(artifact.id)
        m = nn.Identity()
        m.source = artifact.id
        return m

    monkeypatch.setattr(dw, "load_model_from_artifact", load)
    return qat, loads


def test_the_parent_is_found_beside_the_artifact_by_its_id(run, tmp_path):
    qat, _ = run
    assert parent_artifact(qat).id == "p1" and parent_artifact(qat).stage == "prune"
    assert parent_artifact(Artifact.load(tmp_path / "stages" / "01-prune-p1")) is None  # d1 is not there


def test_a_w8a16_build_after_8_bit_qat_starts_from_the_pre_qat_weights_trimmed_alike(run):
    qat, loads = run
    qat_model, trimmed, loaded = nn.Identity(), [], {}
    model, facts = dw.device_weights(qat_model, qat, load_profile("hexagon-npu-w8a16"), None, trimmed.append, loaded)
    assert model.source == "p1" and trimmed == [model]
    assert facts["from"] == "pre-qat" and facts["artifact"] == "p1" and "16-bit, QAT trained for 8" in facts["reason"]
    again, _ = dw.device_weights(qat_model, qat, load_profile("hexagon-npu-w8a16"), "auto", trimmed.append, loaded)
    assert again is model and loads == ["p1"]  # loaded and trimmed once per export
    # the 8-bit build keeps the QAT weights: QAT trained for its width
    model, facts = dw.device_weights(qat_model, qat, load_profile("hexagon-npu"), None, trimmed.append, loaded)
    assert model is qat_model and facts["from"] == "qat" and "8-bit activations" in facts["reason"]


def test_the_choice_can_be_forced_and_qat_at_16_bits_keeps_its_weights(run, tmp_path):
    qat, _ = run
    m = nn.Identity()
    model, facts = dw.device_weights(m, qat, load_profile("hexagon-npu-w8a16"), "qat", lambda x: None, {})
    assert model is m and facts == {"from": "qat", "artifact": "q1", "reason": "export.device_weights: qat"}
    model, facts = dw.device_weights(m, qat, load_profile("hexagon-npu"), "pre-qat", lambda x: None, {})
    assert model.source == "p1" and facts["reason"] == "export.device_weights: pre-qat"
    qat16 = _artifact(tmp_path / "stages", "02-qat-q2", "q2", "p1", {"quant": {"scheme": {"activation_dtype": "uint16"}}})
    model, facts = dw.device_weights(m, qat16, load_profile("hexagon-npu-w8a16"), None, lambda x: None, {})
    assert model is m and facts["from"] == "qat"


def test_without_the_parent_beside_it_auto_says_so_and_pre_qat_is_refused(tmp_path, monkeypatch):
    qat = _artifact(tmp_path / "elsewhere", "02-qat-q1", "q1", "p1",
                    {"quant": {"scheme": {"activation_dtype": "uint8"}}})
    monkeypatch.setattr(dw, "load_model_from_artifact", lambda a: pytest.fail("nothing to load"))
    m = nn.Identity()
    model, facts = dw.device_weights(m, qat, load_profile("hexagon-npu-w8a16"), None, lambda x: None, {})
    assert model is m and facts["from"] == "qat" and "(p1) is not beside it" in facts["reason"]
    with pytest.raises(EdgekdError, match="export.device_weights is pre-qat, but the artifact it was made from "
                                          r"\(p1\) is not beside it"):
        dw.device_weights(m, qat, load_profile("hexagon-npu-w8a16"), "pre-qat", lambda x: None, {})


def test_a_float_model_is_built_from_its_own_weights(tmp_path):
    art = _artifact(tmp_path / "stages", "01-prune-p1", "p1", "d1", {"family": "bert"})
    m = nn.Identity()
    assert dw.device_weights(m, art, load_profile("hexagon-npu-w8a16"), None, lambda x: None, {}) == (
        m, {"from": "float", "artifact": "p1"})
