"""Shared fixtures: tiny models built from configs (no downloads) and small local data sets."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("EDGEKD_QUIET", "1")

POS = ["good", "great", "fine", "lovely", "superb", "fun", "moving", "bright"]
NEG = ["bad", "awful", "poor", "dull", "boring", "weak", "messy", "flat"]
FILL = ["the", "film", "was", "a", "movie", "plot", "and", "very", "acting", "story", "it", "is"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _sentence(rng: random.Random, label: int) -> str:
    words = [rng.choice(FILL) for _ in range(rng.randint(2, 8))]
    for _ in range(rng.randint(1, 2)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(POS if label else NEG))
    return " ".join(words)


def write_text_data(folder: Path, n_train: int = 240, n_eval: int = 60, seed: int = 0) -> Path:
    """A small, learnable sentiment task in SST-2's TSV layout (sentence<TAB>label)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_eval), ("test", n_eval)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            rows.append(f"{_sentence(rng, label)}\t{label}")
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def write_tiny_bert(folder: Path, classifier: bool = False, num_labels: int = 2, **config) -> Path:
    """A tiny randomly initialised BERT (encoder or classifier) with a WordPiece tokenizer; `config` overrides."""
    return write_tiny_encoder(folder, "bert", classifier, num_labels=num_labels, **config)


def write_tiny_encoder(folder: Path, model_type: str, classifier: bool = False, **config) -> Path:
    """A tiny random encoder of a transformers family (`model_type`: bert, mpnet, roberta, …; encoder or classifier)
    with a WordPiece tokenizer over the tiny task's words: a model of the family a user brings, shrunk."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = SPECIAL + POS + NEG + FILL
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, **{
        "vocab_size": len(words), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 160, "pad_token_id": 0, "num_labels": 2, **config})
    model = (AutoModelForSequenceClassification if classifier else AutoModel).from_config(cfg)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def write_tiny_bpe_encoder(folder: Path, model_type: str = "roberta", **config) -> Path:
    """A tiny random encoder with a byte-level BPE tokenizer of its own (RoBERTa's kind: other pieces, other ids than
    the WordPiece models above), learned from the tiny task's sentences: a pretrained student that reads the texts
    differently from its teacher."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoConfig, AutoModel, RobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([_sentence(rng, i % 2) for i in range(400)], vocab_size=600, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    tok = RobertaTokenizerFast.from_pretrained(str(folder))  # reads the vocab.json and merges.txt just written
    torch.manual_seed(1)
    cfg = AutoConfig.for_model(model_type, **{
        "vocab_size": len(tok), "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 48, "max_position_embeddings": 160, "pad_token_id": tok.pad_token_id, **config})
    AutoModel.from_config(cfg).save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def text_data_dir(tmp_path_factory) -> Path:
    return write_text_data(tmp_path_factory.mktemp("text-data"))


def tiny_text_recipe(teacher: Path, data: Path, output: Path, **over) -> dict:
    train = {"epochs": 3, "batch_size": 16, "lr": 3e-3, "warmup_ratio": 0.0}
    kd = {**train, "temperature": 2.0, "alpha": 0.5}
    recipe = {
        "name": "tiny-text", "task": "text-classification", "seed": 0, "output": str(output),
        "data": {"path": str(data), "max_length": 32},
        "teacher": {"path": str(teacher), "finetune": {**train, "epochs": 6}},
        "student": {"kind": "layers", "layers": [1]},
        "stages": [
            {"distill": kd},
            {"prune": {"ratio": 0.3, "head_ratio": 0.25, "recovery": {**kd, "epochs": 1}}},
            {"qat": {**kd, "epochs": 1, "lr": 5e-4, "calibration_batches": 4}},
            # int8_min_speedup 0: a 32-wide BERT is too small for INT8 to pay; these tests check the INT8 path of
            # the QAT model (QDQ) and no other layout: the layout choice by measurement has its own test
            # (test_int8_layout.py)
            {"export": {"validation_examples": 60, "min_agreement": 0.95, "int8_min_speedup": 0,
                        "int8_dynamic": False, "int8_fused": False}},
            # the PTQ baselines have their own run of this profile (test_profile_baselines.py's ptq_run)
            {"profile": {"runs": 5, "rounds": 2, "warmup": 1, "natural_max_examples": 10, "ptq_baselines": False}},
        ],
        "profiles": ["host-cpu"],
    }
    recipe.update(over)
    return recipe


def tiny_image_recipe(output: Path) -> dict:
    train = {"epochs": 10, "batch_size": 64, "lr": 3e-3, "warmup_ratio": 0.0}
    kd = {**train, "temperature": 2.0, "alpha": 0.5}
    return {
        "name": "tiny-image", "task": "image-classification", "seed": 0, "output": str(output),
        "data": {"sklearn": "digits"},
        "teacher": {"config": {"model_type": "vit", "image_size": 8, "patch_size": 4, "num_channels": 1,
                               "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "intermediate_size": 32}, "finetune": train},
        "student": {"kind": "cnn", "channels": [8, 16]},
        "stages": [{"distill": kd}, {"prune": {"ratio": 0.25, "width_multiple": 4, "recovery": {**kd, "epochs": 2}}},
                   {"qat": {**kd, "epochs": 1, "calibration_batches": 2}},
                   {"export": {"validation_examples": 64, "min_agreement": 0.95}},
                   {"profile": {"runs": 5, "rounds": 1, "warmup": 1}}],
        "profiles": ["host-cpu"],
    }


def edgekd_cli(*args, quiet=True, **kwargs) -> subprocess.CompletedProcess:
    """The real entry point in a fresh process, as a user runs it."""
    env = {**os.environ, "EDGEKD_QUIET": "1" if quiet else "0"}
    return subprocess.run([sys.executable, "-m", "edgekd.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, **kwargs)


def reuse_stages(run_out: Path, out: Path, stages: tuple[str, ...]) -> None:
    """Copy a finished run's artifacts of these stages into another run folder: a recipe with the same teacher, data,
    seed and earlier stages finds them in its cache (the key never depends on the folder) and trains only the rest."""
    for art in (run_out / "stages").iterdir():
        if art.name.split("-")[1] in stages:
            shutil.copytree(art, out / "stages" / art.name)


@pytest.fixture(scope="session")
def text_run(tmp_path_factory, tiny_bert_dir, text_data_dir):
    """The tiny text recipe through every stage with the CLI, once per session: (folder, recipe.yaml, process).
    Many tests read it, or copy its artifacts to start their own runs from (reuse_stages)."""
    import yaml

    root = tmp_path_factory.mktemp("text-run")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_text_recipe(tiny_bert_dir, text_data_dir, root / "out")))
    proc = edgekd_cli("run", recipe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, recipe, proc


@pytest.fixture(scope="session")
def image_run(tmp_path_factory):
    """The tiny image recipe (ViT teacher -> CNN student) through every stage with the Python API, once per session."""
    from edgekd.pipeline import Pipeline
    from edgekd.recipe import validate_recipe

    out = tmp_path_factory.mktemp("image-run") / "img"
    pipe = Pipeline(validate_recipe(tiny_image_recipe(out)))
    return out, pipe, pipe.run()
