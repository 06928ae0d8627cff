"""A dev split carved from the train split's phrases is found and named; one of unseen sentences is not."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekd.configs import DataConfig
from edgekd.data.loading import load_data
from edgekd.data.overlap import leak_warning, share_inside

TRAIN = [f"the {w} film is a quietly moving study of grief and {v} friendship" for w in ("first", "second", "third")
         for v in ("old", "new", "lost", "true")]


def test_share_inside_counts_held_out_texts_found_in_train_and_ignores_short_ones():
    phrases = ["quietly moving study", "A Quietly Moving Study of grief", "grief and lost friendship", "good"]
    unseen = ["an entirely different sentence about a dull thriller", "nothing here comes from the train split"]
    assert share_inside(phrases, TRAIN) == 1.0  # case-insensitive; "good" is too short to count either way
    assert share_inside(unseen, TRAIN) == 0.0
    assert share_inside(phrases[:3] + unseen[:1], TRAIN) == 0.75
    assert share_inside(["good", "bad"], TRAIN) is None
    assert leak_warning("dev", 0.1, 0.0) is None
    assert "75% of the dev split" in leak_warning("dev", 0.75, 0.0) and "(test: 0%)" in leak_warning("dev", 0.75, 0.0)


def _write(folder: Path, dev: list[str]) -> Path:
    folder.mkdir()
    for split, texts in (("train", TRAIN), ("dev", dev), ("test", ["a new sentence that train never saw at all"] * 2)):
        rows = ["sentence\tlabel"] + [f"{t}\t{i % 2}" for i, t in enumerate(texts)]
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.mark.parametrize("leaky", [True, False])
def test_loading_warns_when_dev_is_made_of_train_phrases(tmp_path, monkeypatch, leaky):
    import edgekd.progress

    said = []
    monkeypatch.setattr(edgekd.progress, "log", said.append)
    dev = (["quietly moving study of grief", "grief and new friendship"] if leaky else
           ["a wholly unseen review of a comedy", "another sentence train does not hold"])
    data = load_data(DataConfig(path=str(_write(tmp_path / "d", dev))), "text-classification")
    warned = [m for m in said if "occur verbatim inside train texts" in m]
    assert bool(warned) == leaky, said
    check = data.checks["overlap_with_train"]  # recorded for the run's manifest and report, warning or not
    assert (check["dev"], check["test"]) == ((1.0 if leaky else 0.0), 0.0)
    if leaky:
        assert "100% of the dev split" in warned[0] and "(test: 0%)" in warned[0]
        assert check["warning"] in warned[0]
    else:
        assert check["warning"] is None


def test_the_run_s_report_carries_the_data_warning_and_a_rebuilt_report_keeps_it(tmp_path):
    from edgekd.report.html import render_html
    from edgekd.report.run_summary import RUN_INDEX, write_run_outputs

    warning = leak_warning("dev", 0.87, 0.0)
    run = tmp_path / "run"
    run.mkdir()
    recipe = {"name": "leaky", "task": "text-classification"}
    summary = write_run_outputs(run, recipe, [], data={"overlap_with_train": {"dev": 0.87, "test": 0.0,
                                                                               "warning": warning}})
    assert f"> **Data:** {warning}" in (run / "report.md").read_text()
    assert "87% of the dev split" in render_html([summary], devices={})
    rebuilt = write_run_outputs(run, recipe, [])  # `edgekd report` loads no data: the run's record stands
    assert rebuilt["data"]["overlap_with_train"]["dev"] == 0.87
    assert json.loads((run / RUN_INDEX).read_text())["data"]["overlap_with_train"]["warning"] == warning
    clean = tmp_path / "clean"
    clean.mkdir()
    ok = write_run_outputs(clean, recipe, [], data={"overlap_with_train": {"dev": 0.0, "test": 0.0, "warning": None}})
    assert "**Data:**" not in (clean / "report.md").read_text() and "dev split" not in render_html([ok], devices={})
