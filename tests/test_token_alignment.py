"""A pretrained student whose tokenizer cuts texts into the teacher's pieces, under other ids and special tokens
(BERT-uncased's WordPiece under MPNet's): the live teacher reads the student's batches through an id map, so the
intermediate terms work; a tokenizer that cuts a train text differently is refused, naming the text."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FILL, NEG, POS, SPECIAL, tiny_text_recipe, write_text_data, write_tiny_bert
from edgekd.data.alignment import aligned_map, first_misaligned, piece_map
from edgekd.data.batching import Encoded
from edgekd.errors import EdgekdError
from edgekd.pipeline import Pipeline
from edgekd.recipe import validate_recipe

TEXTS = ["a good film", "the plot was dull and flat", "superb", "it is a very boring movie and the acting is weak"]


def write_tiny_mpnet(folder, without: tuple[str, ...] = (), extra: tuple[str, ...] = ()):
    """A tiny random MPNet with MPNet's own kind of tokenizer: the task's WordPiece pieces, with <s>, <pad>, </s> and
    <mask> in front and at the end (BERT's [CLS], [SEP] and [PAD] stay ordinary pieces of its vocabulary, as in
    all-mpnet-base-v2), so every id differs from the tiny BERT's; `without` and `extra`: pieces left out of its
    vocabulary and added to it."""
    from transformers import AutoConfig, AutoModel, MPNetTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = [w for w in SPECIAL + POS + NEG + FILL if w not in without] + list(extra)
    pieces = ["<s>", "<pad>", "</s>", "<unk>", *words, "<mask>"]
    tok = MPNetTokenizerFast(vocab={w: i for i, w in enumerate(pieces)}, do_lower_case=True, unk_token="[UNK]")
    torch.manual_seed(2)
    cfg = AutoConfig.for_model("mpnet", vocab_size=len(pieces), hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64, max_position_embeddings=160,
                               pad_token_id=tok.pad_token_id)
    AutoModel.from_config(cfg).save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    # narrower than the teacher (projections) with as many heads (attention maps)
    return write_tiny_mpnet(root / "mpnet"), write_tiny_bert(root / "bert", hidden_size=16, intermediate_size=32)


def _tokenizers(pair):
    from transformers import AutoTokenizer

    teacher_dir, student_dir = pair
    return AutoTokenizer.from_pretrained(str(student_dir)), AutoTokenizer.from_pretrained(str(teacher_dir))


def test_pieces_map_by_their_text_and_special_tokens_by_their_role(pair):
    student, teacher = _tokenizers(pair)
    mapping = piece_map(student, teacher)
    s_vocab, t_vocab = student.get_vocab(), teacher.get_vocab()
    assert mapping[s_vocab["good"]] == t_vocab["good"] != s_vocab["good"]
    # MPNet's vocabulary holds "[CLS]" as a piece, but its own tokenizer opens a text with <s>
    assert mapping[student.cls_token_id] == teacher.cls_token_id == t_vocab["<s>"] != t_vocab["[CLS]"]
    assert (mapping[student.sep_token_id], mapping[student.pad_token_id]) == (t_vocab["</s>"], t_vocab["<pad>"])
    s_ids, t_ids = student(TEXTS)["input_ids"], teacher(TEXTS)["input_ids"]
    assert s_ids != t_ids and first_misaligned(s_ids, t_ids, mapping) is None
    assert first_misaligned(s_ids, [t_ids[0], t_ids[1][:-1], *t_ids[2:]], mapping) == 1  # one piece short
    assert first_misaligned(s_ids, [*t_ids[:3], t_ids[3][:2] + t_ids[2][1:2] + t_ids[3][3:]], mapping) == 3


def test_the_live_teacher_reads_the_students_batch_as_it_reads_its_own(pair):
    from transformers import AutoModel, AutoModelForSequenceClassification

    from edgekd.configs import DistillConfig
    from edgekd.train.distiller import Distiller

    student_tok, teacher_tok = _tokenizers(pair)
    s_ids, t_ids = student_tok(TEXTS)["input_ids"], teacher_tok(TEXTS)["input_ids"]
    mapping, difference = aligned_map(student_tok, teacher_tok, TEXTS, s_ids, t_ids)
    assert difference is None
    teacher = AutoModel.from_pretrained(str(pair[0]), attn_implementation="eager").eval()
    student = AutoModelForSequenceClassification.from_pretrained(str(pair[1]), num_labels=2,
                                                                 attn_implementation="eager").eval()
    cfg = DistillConfig(epochs=1, hidden_weight=1.0, attention_weight=1.0, relation_weight=1.0)
    distiller = Distiller.from_config(cfg, np.zeros((len(TEXTS), 2), np.float32), teacher, student, mapping)
    idx, labels = np.arange(len(TEXTS)), np.zeros(len(TEXTS), dtype=np.int64)
    s_batch = Encoded(labels, ids=s_ids, pad_id=student_tok.pad_token_id).batch(idx)
    t_batch = Encoded(labels, ids=t_ids, pad_id=teacher_tok.pad_token_id).batch(idx)
    read = distiller.teacher_batch(s_batch)
    assert torch.equal(read["input_ids"], t_batch["input_ids"])  # padding included: MPNet counts positions past it
    assert torch.equal(read["attention_mask"], t_batch["attention_mask"])
    loss = distiller.loss(student, s_batch, idx, torch.from_numpy(labels))
    distiller.teacher_batch = lambda batch: t_batch  # the teacher reading its own tokenizer's batch instead
    assert torch.isfinite(loss) and torch.equal(loss, distiller.loss(student, s_batch, idx, torch.from_numpy(labels)))


def _recipe(pair, data, out):
    recipe = tiny_text_recipe(pair[0], data, out)
    recipe["student"] = {"kind": "pretrained", "path": str(pair[1])}
    terms = {"hidden_weight": 1.0, "relation_weight": 1.0}
    recipe["stages"][0]["distill"].update(terms, attention_weight=1.0, epochs=1)
    recipe["stages"][1]["prune"]["recovery"].update(terms)  # pruned heads: relations, not attention maps
    recipe["stages"] = recipe["stages"][:2]
    recipe["teacher"]["finetune"]["epochs"] = 1  # what it learns does not matter here
    return recipe


@pytest.mark.slow
def test_intermediate_terms_train_a_student_whose_tokenizer_cuts_texts_into_the_teachers_pieces(
        pair, text_data_dir, tmp_path):
    result = Pipeline(validate_recipe(_recipe(pair, text_data_dir, tmp_path / "run"))).run()
    assert "live_teacher" in result["distill"]["train"] and result["distill"]["train"]["steps"] > 0
    assert "live_teacher" in result["prune"]["recovery"]


def test_a_student_tokenizer_that_cuts_a_train_text_differently_is_refused_naming_it(pair, tmp_path):
    from transformers import AutoTokenizer

    data = write_text_data(tmp_path / "data")
    train = data / "train.tsv"
    rows = train.read_text(encoding="utf-8").splitlines()
    train.write_text("\n".join([rows[0], "A Superb film\t1", *rows[1:]]) + "\n", encoding="utf-8")
    student = write_tiny_bert(tmp_path / "cased", hidden_size=16, intermediate_size=32)
    # the same pieces, not lower-cased
    AutoTokenizer.from_pretrained(str(student), do_lower_case=False).save_pretrained(str(student))
    with pytest.raises(EdgekdError) as e:
        Pipeline(validate_recipe(_recipe((pair[0], student), data, tmp_path / "run"))).run()
    msg = str(e.value)
    assert "stages.0.distill: hidden_weight" in msg and "stages.1.prune.recovery: hidden_weight" in msg
    assert "'A Superb film' is ['[CLS]', '[UNK]', '[UNK]', 'film', '[SEP]'] to the student and " \
           "['<s>', 'a', 'superb', 'film', '</s>'] to the teacher" in msg
    assert not (tmp_path / "run" / "stages").exists()


@pytest.mark.slow
def test_a_transfer_set_text_with_a_piece_the_teacher_lacks_is_refused(pair, tmp_path):
    """The train texts line up, but an unlabelled text holds a word the student reads as one piece and the teacher as
    two ("mess", "##y"): read back from the teacher's pieces, it is a piece the teacher lacks, which its id map would
    send to a wrong row; the stage refuses instead of training on it."""
    data = write_text_data(tmp_path / "data")
    for split in data.glob("*.tsv"):  # no train text holds "messy"
        split.write_text(split.read_text(encoding="utf-8").replace("messy", "bad"), encoding="utf-8")
    (tmp_path / "more.txt").write_text("a messy film\n", encoding="utf-8")
    teacher = write_tiny_mpnet(tmp_path / "mpnet", without=("messy",), extra=("mess", "##y"))
    recipe = _recipe((teacher, pair[1]), data, tmp_path / "run")
    recipe["stages"][0]["distill"]["transfer"] = {"unlabelled": [str(tmp_path / "more.txt")]}
    with pytest.raises(EdgekdError, match="distill: the student's tokenizer cuts a transfer-set text into a piece "
                                          "the teacher's vocabulary lacks"):
        Pipeline(validate_recipe(recipe)).run()
