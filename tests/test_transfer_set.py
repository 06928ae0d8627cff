"""The transfer set: unlabelled text and augmented copies labelled by the teacher (issue 11, item 4)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_text_recipe
from edgekd.configs import AugmentConfig
from edgekd.data.loading import read_texts
from edgekd.errors import DataError
from edgekd.pipeline import Pipeline
from edgekd.recipe import validate_recipe
from edgekd.train.losses import HardLabelCE, Outputs
from edgekd.train.transfer_set import (augment_ids, embedding_neighbours, single_piece_words, word_pieces)

TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "un", "##bearable", "good", "great", "bad", "awful", "7"]
SPECIAL = {0, 1, 2, 3}


def test_wordpiece_words_split_in_pieces_and_specials_are_never_replaced():
    start, cont = word_pieces(TOKENS, SPECIAL)
    ids = [1, 4, 6, 7, 5, 8, 12, 2]  # [CLS] the un ##bearable film good 7 [SEP]
    # "un" starts a two-piece word, "7" is not alphabetic, [CLS]/[SEP] are special
    assert single_piece_words(ids, start, cont) == [1, 4, 5]
    bpe_start, bpe_cont = word_pieces(["<s>", "Ġthe", "Ġun", "bear", "Ġgood"], {0}, scheme="BPE")
    assert single_piece_words([0, 1, 2, 3, 4], bpe_start, bpe_cont) == [1, 4]


def test_embedding_neighbours_are_the_nearest_by_cosine_and_never_the_word_itself():
    table = torch.zeros(len(TOKENS), 3)
    table[8] = torch.tensor([1.0, 0.1, 0])   # good
    table[9] = torch.tensor([1.0, 0.2, 0])   # great: closest to good
    table[10] = torch.tensor([-1.0, 0, 0.1])  # bad
    table[11] = torch.tensor([-1.0, 0, 0.3])  # awful: closest to bad
    cand = np.array([8, 9, 10, 11])
    nb = embedding_neighbours(table, np.array([8, 10]), cand, k=1)
    assert nb[8].tolist() == [9] and nb[10].tolist() == [11]


def test_augmentation_replaces_only_single_piece_words_with_their_neighbours_and_drops_unchanged_copies():
    start, cont = word_pieces(TOKENS, SPECIAL)
    seqs = [[1, 4, 6, 7, 5, 8, 2], [1, 12, 2]]  # the second has no replaceable word: never copied
    nb = {4: np.array([5]), 5: np.array([4]), 8: np.array([9, 10])}
    out = augment_ids(seqs, AugmentConfig(copies=20, replace_prob=0.5), start, cont, nb, mask_id=3, seed=0)
    assert out and all(len(s) == 7 for s in out)  # only the first sequence yields copies
    for s in out:
        assert s != seqs[0] and s[:1] + s[2:4] + s[-1:] == [1, 6, 7, 2]  # [CLS], "un ##bearable", [SEP] kept
        assert s[1] in (4, 5) and s[4] in (5, 4) and s[5] in (8, 9, 10)
    masked = augment_ids(seqs, AugmentConfig(copies=5, replace_prob=0.0, mask_prob=1.0), start, cont, nb, 3, 0)
    assert all(s[1] == s[4] == s[5] == 3 for s in masked) and len(masked) == 5


def test_hard_label_ce_skips_teacher_labelled_examples():
    logits = torch.tensor([[2.0, 0.0], [0.0, 5.0]], requires_grad=True)
    both = HardLabelCE()(Outputs(logits), None, torch.tensor([0, -100]))
    assert both.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0])).item())
    none = HardLabelCE()(Outputs(logits), None, torch.tensor([-100, -100]))
    assert none.item() == 0.0
    none.backward()  # still part of the graph (a distributed step needs every parameter used)


def test_read_texts_names_the_file_and_column(tmp_path):
    (tmp_path / "a.txt").write_text("one text\n\nanother text\n", encoding="utf-8")
    assert read_texts(tmp_path / "a.txt", "sentence") == ["one text", "another text"]
    (tmp_path / "b.tsv").write_text("text\tlabel\nhello there\t1\n", encoding="utf-8")
    assert read_texts(tmp_path / "b.tsv", "text") == ["hello there"]
    with pytest.raises(DataError, match=r"b\.tsv.*no text column 'sentence'.*transfer\.text_column"):
        read_texts(tmp_path / "b.tsv", "sentence")
    with pytest.raises(DataError, match="does not exist"):
        read_texts(tmp_path / "missing.txt", "sentence")


@pytest.mark.slow
def test_a_run_distils_on_unlabelled_and_augmented_text_and_caches_the_teacher_labels(
        tmp_path, tiny_bert_dir, text_data_dir):
    unlabelled = tmp_path / "traffic.txt"
    unlabelled.write_text("the film was superb\nvery dull plot\nit is a lovely story\n", encoding="utf-8")
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    transfer = {"unlabelled": [str(unlabelled)], "augment": {"copies": 2, "replace_prob": 0.3, "neighbours": 3},
                "min_confidence": 0.6}
    r["stages"] = [{"distill": {**r["stages"][0]["distill"], "epochs": 1, "transfer": transfer}}]
    pipe = Pipeline(validate_recipe(r))
    result = pipe.run()["distill"]
    report = result["train"]["transfer_set"]
    assert report["train_examples"] == 240 and report["unlabelled_texts"] == 3
    assert 0 < report["augmented"] <= 2 * 240
    labelled = report["teacher_labelled"]
    assert labelled == 3 + report["augmented"]
    assert report["kept"] + report["discarded_low_confidence"] == labelled
    assert report["discarded_share"] == pytest.approx(report["discarded_low_confidence"] / labelled)
    assert result["train"]["examples"] == 240 + report["kept"]
    cache = list((tmp_path / "run" / "cache").glob("transfer-set-*.safetensors"))
    assert len(cache) == 1
    stamp = cache[0].stat().st_mtime_ns
    # longer training on the same transfer set: the teacher's labels come from the cache, not a second labelling
    r2 = json.loads(json.dumps(r))
    r2["stages"][0]["distill"]["epochs"] = 2
    again = Pipeline(validate_recipe(r2)).run()["distill"]["train"]["transfer_set"]
    assert again == report and cache[0].stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_every_teacher_labels_the_transfer_set_through_its_own_tokenizer(tmp_path, tiny_bert_dir, text_data_dir):
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    r["teachers"] = [{**r["teacher"], "seed": 3, "weight": 1.0}]
    r["stages"] = [{"distill": {**r["stages"][0]["distill"], "epochs": 1,
                                "transfer": {"augment": {"copies": 1, "replace_prob": 0.5, "neighbours": 2}}}}]
    result = Pipeline(validate_recipe(r)).run()["distill"]
    report = result["train"]["transfer_set"]
    assert report["augmented"] > 0 and result["train"]["examples"] == 240 + report["kept"]
    labels = list((tmp_path / "run" / "cache").glob("transfer-labels-*.safetensors"))
    assert len(labels) == 1  # the further teacher's labels of the augmented texts, cached
    from safetensors.numpy import load_file
    assert load_file(str(labels[0]))["logits"].shape == (report["augmented"], 2)


@pytest.mark.slow
def test_hard_inputs_from_shadow_mode_are_oversampled_without_labelling_them_again(tmp_path, tiny_bert_dir,
                                                                                  text_data_dir):
    traffic, hard = tmp_path / "traffic.txt", tmp_path / "shadow-hard.txt"
    traffic.write_text("the film was superb\nvery dull plot\n", encoding="utf-8")
    hard.write_text("not bad at all\nhardly a triumph\nit is fine i guess\n", encoding="utf-8")
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    transfer = {"unlabelled": [str(traffic), str(hard)]}
    r["stages"] = [{"distill": {**r["stages"][0]["distill"], "epochs": 1, "transfer": transfer}}]
    once = Pipeline(validate_recipe(r)).run()["distill"]["train"]["transfer_set"]
    assert once["kept"] == 5 and once["examples"] == 240 + 5
    cache = list((tmp_path / "run" / "cache").glob("transfer-set-*.safetensors"))
    stamp = cache[0].stat().st_mtime_ns
    r["stages"][0]["distill"]["transfer"]["repeat"] = {str(hard): 3}
    again = Pipeline(validate_recipe(r)).run()["distill"]["train"]["transfer_set"]
    # the three hard inputs three times, the rest once; their teacher labels come from the cache
    assert again["kept"] == 2 + 3 * 3 and again["examples"] == 240 + 11 and again["repeat"] == {str(hard): 3}
    assert list((tmp_path / "run" / "cache").glob("transfer-set-*.safetensors")) == cache
    assert cache[0].stat().st_mtime_ns == stamp
    with pytest.raises(Exception, match=r"transfer.repeat names .*not in transfer.unlabelled"):
        r["stages"][0]["distill"]["transfer"] = {"unlabelled": [str(traffic)], "repeat": {str(hard): 3}}
        validate_recipe(r)
