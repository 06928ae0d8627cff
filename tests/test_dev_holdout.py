"""data.dev_holdout: a dev split of whole train texts held out with their phrases, unseen by train as test is."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edgekd.configs import DataConfig
from edgekd.data.holdout import hold_out, roots
from edgekd.data.loading import load_data
from edgekd.data.overlap import MIN_CHARS, share_inside

# a small treebank in SST-2's shape: each sentence with the phrases of its parse tree, and a shared short phrase
SENTENCES = [f"the {w} film is a {a} study of {b} and friendship ." for w in ("first", "second", "third", "fourth")
             for a, b in (("quietly moving", "grief"), ("painfully dull", "nothing"))]


def _treebank() -> list[str]:
    texts = []
    for s in SENTENCES:
        words = s.split()
        texts += [s, " ".join(words[:3]), " ".join(words[3:8]), " ".join(words[5:8]), "film is"]
    return texts + [SENTENCES[0].upper()]  # a duplicate of a sentence, in other case


def test_roots_are_the_sentences_once_each():
    texts = _treebank()
    found = roots(texts)
    assert sorted(texts[i] for i in found) == sorted(SENTENCES)
    assert texts.index(SENTENCES[0]) in found  # of duplicates (case-insensitive), the first


def test_roots_are_exactly_the_texts_inside_no_other_text():
    """The indexed search against its definition, on texts of a small alphabet: many share pieces, many are shorter
    than the index's pieces, many lie inside others."""
    import random

    rng = random.Random(0)
    for _ in range(300):
        texts = ["".join(rng.choice("ab c") for _ in range(rng.randint(1, 14))) for _ in range(rng.randint(1, 30))]
        norm = [t.strip().lower() for t in texts]
        expected = sorted({norm.index(t) for t in norm if not any(t in o and len(o) > len(t) for o in norm)})
        assert roots(texts) == expected, texts


def test_hold_out_removes_the_held_out_sentences_and_their_phrases_from_train():
    texts = _treebank()
    dev, train, facts = hold_out(texts, 3, seed=1)
    held = [texts[i].lower() for i in dev]
    assert set(held) <= set(SENTENCES) and len(set(held)) == 3
    assert set(dev).isdisjoint(train) and len(dev) + len(train) + facts["removed_from_train"] == len(texts)
    train_texts = [texts[i].lower() for i in train]
    # no train text of MIN_CHARS or more lies inside a dev sentence: dev is unseen, as test is
    assert not [t for t in train_texts if len(t) >= MIN_CHARS and any(t in h for h in held)]
    assert share_inside(held, train_texts) == 0.0
    assert "film is" in train_texts  # short phrases stay: they sit in every sentence by chance
    assert facts == {"dev": 3, "roots": len(SENTENCES), "removed_from_train": facts["removed_from_train"],
                     "min_chars": MIN_CHARS, "seed": 1}
    assert facts["removed_from_train"] >= 3 * 2 + 1  # each sentence's two long phrases, and the upper-case copy
    again = hold_out(texts, 3, seed=1)
    assert np.array_equal(again[0], dev) and np.array_equal(again[1], train)
    with pytest.raises(ValueError, match="8 texts that no other train text contains"):
        hold_out(texts, 8)


def _folder(tmp: Path) -> Path:
    tmp.mkdir()
    texts = _treebank()
    for split, rows in (("train", [(t, i % 2) for i, t in enumerate(texts)]),
                        ("test", [("a new sentence that train never saw at all", 0), ("and another one , good", 1)])):
        (tmp / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    return tmp  # no dev.tsv: dev_holdout does not read it


def test_loading_builds_dev_from_train_without_a_dev_file_and_records_it(tmp_path):
    cfg = DataConfig(path=str(_folder(tmp_path / "d")), dev_holdout=4)
    data = load_data(cfg, "text-classification")
    assert len(data.dev) == 4 and {t.lower() for t in data.dev.texts} <= set(SENTENCES)
    assert len(data.train) == len(_treebank()) - 4 - data.checks["dev_holdout"]["removed_from_train"]
    assert data.checks["dev_holdout"]["dev"] == 4 and data.checks["overlap_with_train"]["dev"] == 0.0
    assert data.fingerprint != load_data(cfg.model_copy(update={"dev_holdout": 5}), "text-classification").fingerprint
    # unset, the key stays out of the config dump, so runs without it keep their cache keys
    assert "dev_holdout" not in DataConfig(path="x").model_dump() and DataConfig(path="x", dev_holdout=2).model_dump()[
        "dev_holdout"] == 2


def test_a_share_holds_out_that_share_of_the_whole_texts_whatever_the_data_sets_size(tmp_path):
    from edgekd.data.holdout import roots

    folder = _folder(tmp_path / "d")
    data = load_data(DataConfig(path=str(folder), dev_holdout=0.5), "text-classification")
    facts = data.checks["dev_holdout"]
    n_roots = len(roots(_treebank()))
    assert facts["roots"] == n_roots and facts["share"] == 0.5 and len(data.dev) == facts["dev"] == round(n_roots / 2)
    # the same texts as the count it comes to, so the share is only a way of writing the count
    count = load_data(DataConfig(path=str(folder), dev_holdout=round(n_roots / 2)), "text-classification")
    assert data.dev.texts == count.dev.texts
    with pytest.raises(ValidationError, match=r"1\.5 is neither a count of texts.*nor a share"):
        DataConfig(path="x", dev_holdout=1.5)


def test_dev_holdout_errors_name_the_file_or_key(tmp_path):
    from edgekd.errors import DataError

    with pytest.raises(DataError, match=r"train\.tsv.*\(the train split\).*ask for fewer"):
        load_data(DataConfig(path=str(_folder(tmp_path / "d")), dev_holdout=50), "text-classification")
    with pytest.raises(ValidationError, match="dev_holdout"):
        DataConfig(sklearn="digits", dev_holdout=10)


def test_the_report_says_how_dev_was_built():
    from edgekd.report.markdown import dev_holdout_text

    facts = {"dev": 872, "roots": 7065, "removed_from_train": 6437, "min_chars": MIN_CHARS, "seed": 0}
    text = dev_holdout_text({"data": {"dev_holdout": facts}})
    assert text.startswith("dev is 872 whole train texts held out (of 7,065") and "6,437 train texts" in text
    assert dev_holdout_text({"data": {}}) is None
    assert "(of 7,065 that no other train text contains, 12.5% of them)" in dev_holdout_text(
        {"data": {"dev_holdout": {**facts, "dev": 883, "share": 0.125}}})


SST2 = Path(os.environ.get("EDGEKD_SST2_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"))


@pytest.mark.slow
@pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason=f"needs the SST-2 data at {SST2} (EDGEKD_SST2_DIR)")
def test_on_sst2_the_held_out_dev_looks_like_test_not_like_train_phrases():
    data = load_data(DataConfig(path=str(SST2), dev_holdout=872), "text-classification")
    words = lambda split: np.mean([len(t.split()) for t in split.texts])  # noqa: E731
    assert abs(words(data.dev) - words(data.test)) < 0.15 * words(data.test)  # sentences: ~19 words, as test
    assert words(data.train) < 0.6 * words(data.test)  # train is mostly phrases
    assert data.checks["overlap_with_train"]["dev"] == 0.0 and data.checks["overlap_with_train"]["warning"] is None
    assert data.checks["dev_holdout"]["roots"] > 5000 and data.checks["dev_holdout"]["removed_from_train"] > 872
    assert abs(data.dev.labels.mean() - data.test.labels.mean()) < 0.05  # the classes as balanced as in test


def test_a_split_grouped_by_class_is_shuffled_once_so_its_first_examples_hold_every_class(tmp_path, text_data_dir,
                                                                                         monkeypatch):
    """A train file sorted by label: the first max_train_examples of it would be one class. It is shuffled on loading
    (the same order every time, its fingerprint changed, the run's report saying so); splits in another order are
    left as they are."""
    from edgekd.report.markdown import grouped_text

    rows = (text_data_dir / "train.tsv").read_text().splitlines()
    grouped = tmp_path / "grouped"
    grouped.mkdir()
    (grouped / "train.tsv").write_text("\n".join([rows[0], *sorted(rows[1:], key=lambda r: r.rsplit("\t", 1)[1])]) + "\n")
    for split in ("dev", "test"):
        (grouped / f"{split}.tsv").write_text((text_data_dir / f"{split}.tsv").read_text())
    as_given = load_data(DataConfig(path=str(text_data_dir)), "text-classification")
    data = load_data(DataConfig(path=str(grouped)), "text-classification")
    assert "grouped_by_class" not in as_given.checks
    assert set(data.checks["grouped_by_class"]) == {"train"}
    assert data.checks["grouped_by_class"]["train"]["neighbours_of_another_class"] < 0.01
    assert len(np.unique(data.train.labels[:20])) == 2 and sorted(data.train.texts) == sorted(as_given.train.texts)
    assert data.test.texts == as_given.test.texts  # a split in another order is left as it is
    again = load_data(DataConfig(path=str(grouped)), "text-classification")
    assert again.train.texts == data.train.texts and again.fingerprint == data.fingerprint
    import edgekd.data.loading as loading

    monkeypatch.setattr(loading, "GROUPED_BELOW", 0.0)  # read as it was before: every cached stage must run again
    unshuffled = load_data(DataConfig(path=str(grouped)), "text-classification")
    assert unshuffled.train.texts != data.train.texts and unshuffled.fingerprint != data.fingerprint
    assert grouped_text({"data": data.checks}).startswith("the train split came grouped by class; edgekd shuffled it")
