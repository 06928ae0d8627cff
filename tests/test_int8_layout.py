"""INT8 that is small and runs in integers: embedding tables, the integer-kernel check, vocabulary trimming."""
from __future__ import annotations

import pytest

import json
import shutil

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from edgekd.devices.kernels import integer_kernel_report
from edgekd.export.onnx_export import export_onnx
from edgekd.models.onnx_graph import example_inputs
from edgekd.export.vocab import (RemappedEmbedding, kept_ids, nearest_rows, remap_embeddings, trim_embeddings,
                                 trim_positions, write_trimmed_tokenizer)
from edgekd.quantize.fakequant import QuantEmbedding, convert, quantizable_modules, set_mode

from conftest import write_tiny_bert


def _host_weight_qmax() -> int:
    """The weight range QAT picks for this host (qat.weight_range: auto, target host-cpu): int7 on an x86 CPU without
    VNNI, where onnxruntime's u8s8 kernels saturate with full-range int8 weights and ONNX would not match PyTorch."""
    from edgekd.configs import QATConfig
    from edgekd.quantize.stage import resolve_weight_range

    return resolve_weight_range(QATConfig(), ["host-cpu"])[0]


def _qat_tiny_bert(folder):
    """A tiny BERT classifier with every Linear and embedding fake-quantized (with the host's weight range) and
    calibrated on random ids."""
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(str(write_tiny_bert(folder, classifier=True))).eval()
    names = quantizable_modules(model)
    convert(model, names, "uint8", weight_qmax=_host_weight_qmax())
    set_mode(model, "calibrate")
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(4):
            ids = torch.randint(0, model.config.vocab_size, (4, 12))
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    for n in names:
        model.get_submodule(n).freeze(n)
    return model, names


def test_int8_embedding_rows_match_float_within_half_a_step():
    emb = torch.nn.Embedding(50, 16)
    torch.nn.init.normal_(emb.weight)
    ref = emb.weight.detach().clone()
    parent = torch.nn.Sequential(emb)
    convert(parent, ["0"], "uint8")
    q = parent[0]
    assert isinstance(q, QuantEmbedding)
    q.freeze("0")
    ids = torch.arange(50)
    got = q(ids).detach()
    step = (ref.abs().amax(dim=1) / 127).unsqueeze(1)
    assert torch.all((got - ref).abs() <= step / 2 + 1e-7)
    assert torch.all(torch.round(got / step).abs() <= 127)  # on the int8 grid of its row
    set_mode(parent, "off")
    assert torch.equal(q(ids), ref)


def test_quantized_export_stores_int8_tables_gathers_rows_and_runs_every_layer_in_integers(tmp_path):
    import onnxruntime as ort

    model, names = _qat_tiny_bert(tmp_path / "bert")
    inputs = example_inputs("text-classification", {}, 12)
    facts = export_onnx(model, inputs, tmp_path / "model.onnx", 17)
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    assert facts["int8_tables"] == 3  # words, positions, token types
    for n in graph.node:
        if n.op_type == "Gather" and n.input[0] in inits and numpy_helper.to_array(inits[n.input[0]]).ndim == 2:
            assert inits[n.input[0]].data_type in (TensorProto.INT8, TensorProto.FLOAT), n.name
        if n.op_type == "Gather":  # never a dequantized whole table
            assert n.input[0] not in producers or producers[n.input[0]].op_type != "DequantizeLinear"
    word = next(i for i in graph.initializer if i.data_type == TensorProto.INT8
                and list(i.dims) == [model.config.vocab_size, model.config.hidden_size])
    assert word is not None
    # the same logits as PyTorch's fake quantization, on padded inputs
    ids = torch.randint(0, model.config.vocab_size, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits.numpy()
    got = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"input_ids": ids.numpy(),
                                                                         "attention_mask": mask.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-3)
    feed = {"input_ids": ids[:1].numpy(), "attention_mask": mask[:1].numpy()}
    report = integer_kernel_report(tmp_path / "model.onnx", tmp_path / "opt.onnx", feed)
    assert report["ok"], report["float_layers"]
    linear = [n for n in names if not isinstance(model.get_submodule(n), torch.nn.Embedding)]
    assert sum(report["integer_kernels"].values()) == len(linear)  # pooler and classifier too (QGemm)
    assert (tmp_path / "opt.onnx").is_file() and 0 < report["time_share"]["integer_kernels"] <= 1


def _unfused_qdq_matmul(path):
    """y = x @ DQ(int8 W): the activation is never quantized, so no integer kernel can take the layer."""
    w = np.random.default_rng(0).integers(-127, 128, (8, 4)).astype(np.int8)
    g = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w", "w_scale"], ["w_f"], name="dq"),
         helper.make_node("MatMul", ["x", "w_f"], ["y"], name="layer/MatMul")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.01, np.float32), "w_scale")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_integer_kernel_check_fires_on_a_quantized_layer_left_in_float(tmp_path):
    _unfused_qdq_matmul(tmp_path / "m.onnx")
    report = integer_kernel_report(tmp_path / "m.onnx", tmp_path / "opt.onnx",
                                   {"x": np.ones((1, 8), np.float32)})
    assert not report["ok"]
    assert [f["quantized_weight"] for f in report["float_layers"]] == [True]
    assert report["integer_kernels"] == {}


def test_integer_kernel_check_lists_float_layers_of_a_float_model_without_failing(tmp_path):
    model, _ = _qat_tiny_bert(tmp_path / "bert")
    set_mode(model, "off")
    export_onnx(model, example_inputs("text-classification", {}, 12), tmp_path / "fp32.onnx", 17)
    ids = np.ones((1, 12), np.int64)
    report = integer_kernel_report(tmp_path / "fp32.onnx", tmp_path / "opt.onnx",
                                   {"input_ids": ids, "attention_mask": ids})
    assert report["ok"]  # nothing was quantized, so nothing was left behind
    assert report["float_layers"] and not any(f["quantized_weight"] for f in report["float_layers"])
    assert report["time_share"]["integer_kernels"] == 0


def test_integer_time_share_counts_fused_kernels_of_unnamed_nodes(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgekd.devices.runtime import quiet_ort

    model, _ = _qat_tiny_bert(tmp_path / "bert")
    set_mode(model, "off")
    export_onnx(model, example_inputs("text-classification", {}, 12), tmp_path / "fp32.onnx", 17)
    with quiet_ort():  # dynamic activations: onnxruntime fuses them into DynamicQuantizeMatMul
        quantize_dynamic(str(tmp_path / "fp32.onnx"), str(tmp_path / "dyn.onnx"), weight_type=QuantType.QInt8)
    graph = onnx.load(str(tmp_path / "dyn.onnx"))
    for n in graph.graph.node:  # names are optional in ONNX: the fused kernels get none, the profiler its own
        n.name = ""
    onnx.save(graph, str(tmp_path / "dyn.onnx"))
    ids = np.ones((1, 12), np.int64)
    report = integer_kernel_report(tmp_path / "dyn.onnx", tmp_path / "opt.onnx", {"input_ids": ids, "attention_mask": ids})
    fused = [n for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node
             if n.op_type in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat")]
    assert fused and report["ok"]
    assert report["time_share"]["integer_kernels"] > 0.05, report["time_share"]


# ------------------------------------------------------------------------------------------ vocabulary
def _wordpiece_tokenizer(folder):
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "was", "good", "bad", "play", "##ing",
             "##ed", "un", "##known", "movie", "a", "b", "c", "d", "e", "f", "g", "i", "k", "l", "m", "n", "o", "p",
             "s", "t", "u", "w", "##a", "##d", "##e", "##g", "##i", "##n", "##o", "##s", "##t", "##w", "##k",
             "ok", "fine", "great", "awful"]
    folder.mkdir(parents=True, exist_ok=True)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True).save_pretrained(str(folder))
    return folder


def test_trimmed_tokenizer_gives_the_same_pieces_for_in_vocabulary_text_and_falls_back_to_smaller_ones(tmp_path):
    from transformers import AutoTokenizer

    src = _wordpiece_tokenizer(tmp_path / "full")
    full = AutoTokenizer.from_pretrained(str(src))
    train = ["the film was good", "the movie was bad", "playing"]
    used = {i for ids in full(train)["input_ids"] for i in ids}
    keep, why = kept_ids(json.loads((src / "tokenizer.json").read_text()), used)
    assert "single characters" in why
    vocab = full.get_vocab()
    assert vocab["great"] not in keep and vocab["##known"] not in keep  # unused multi-character pieces go
    assert all(vocab[t] in keep for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "##a", "##k"))
    dst = tmp_path / "trimmed"
    shutil.copytree(src, dst)
    write_trimmed_tokenizer(dst, keep)
    trimmed = AutoTokenizer.from_pretrained(str(dst))
    assert len(trimmed) == len(keep)
    for text in train + ["the film was playing", "bad bad film"]:  # in vocabulary: the same pieces
        a, b = full(text)["input_ids"], trimmed(text)["input_ids"]
        assert a == [int(keep[i]) for i in b]
        assert full.convert_ids_to_tokens(a) == trimmed.convert_ids_to_tokens(b)
    # a word whose piece was dropped splits into smaller pieces, exactly as WordPiece does
    assert full.tokenize("fine") == ["fine"]
    assert trimmed.tokenize("fine") == ["f", "##i", "##n", "##e"]
    assert trimmed.pad_token_id == 0 and trimmed.cls_token_id == int(np.searchsorted(keep, full.cls_token_id))
    # the slow tokenizer's vocab.txt is renumbered alike
    if (dst / "vocab.txt").is_file():
        lines = (dst / "vocab.txt").read_text().split("\n")
        assert lines[trimmed.cls_token_id] == "[CLS]"


def test_trimmed_embeddings_give_identical_logits_on_renumbered_ids(tmp_path):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(
        str(write_tiny_bert(tmp_path / "bert", classifier=True))).eval()
    keep = np.array([0, 1, 2, 3, 5, 8, 13, 21], dtype=np.int64)
    old_ids = torch.tensor([[2, 5, 13, 8, 21, 3, 0, 0]])
    mask = (old_ids != 0).long()
    with torch.no_grad():
        ref = model(input_ids=old_ids, attention_mask=mask).logits
        assert trim_embeddings(model, keep) == 33  # the tiny BERT's vocabulary
        new_ids = torch.as_tensor(np.searchsorted(keep, old_ids.numpy()))
        got = model(input_ids=new_ids, attention_mask=mask).logits
    assert model.config.vocab_size == 8 and model.get_input_embeddings().weight.shape[0] == 8
    torch.testing.assert_close(got, ref)


def test_trimming_refuses_a_non_wordpiece_tokenizer_with_the_reason():
    keep, why = kept_ids({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}, {0})
    assert keep is None and "BPE" in why


def test_quantized_table_keeps_its_row_scales_when_trimmed(tmp_path):
    model, _ = _qat_tiny_bert(tmp_path / "bert")
    emb = model.get_input_embeddings()
    scales = emb.w_scale.clone()
    keep = np.array([0, 2, 3, 7], dtype=np.int64)
    trim_embeddings(model, keep)
    torch.testing.assert_close(model.get_input_embeddings().w_scale, scales[torch.as_tensor(keep)])


def test_nearest_rows_keep_their_own_row_and_send_a_dropped_id_to_its_most_similar_kept_word():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0], [0.9, 0.0], [-1.0, 0.05]])
    keep = np.array([0, 2, 3], dtype=np.int64)  # 0 is a special token: kept, never a neighbour
    rows = nearest_rows(w, keep, exclude={0}, chunk=2)  # chunks smaller than the dropped ids: the loop is exercised
    assert rows[[0, 2, 3]].tolist() == [0, 1, 2]  # kept ids read their own (renumbered) rows
    assert rows[1] == 2 and rows[4] == 1  # id 1 ~ id 3, id 4 ~ id 2 (id 0 is nearer to both but special)
    assert rows[5] == 2  # (-1, 0.05): no kept word is close; still the best of them, never the special token


def test_nearest_vocabulary_keeps_the_ids_and_logits_of_kept_pieces_and_exports_an_int8_table_of_kept_rows(tmp_path):
    import onnxruntime as ort

    model, _ = _qat_tiny_bert(tmp_path / "bert")
    vocab = model.config.vocab_size
    keep = np.array([0, 1, 2, 3, 5, 8, 13, 21], dtype=np.int64)
    kept_ids_batch = torch.tensor([[2, 5, 13, 8, 21, 3, 0, 0]])
    mask = (kept_ids_batch != 0).long()
    with torch.no_grad():
        ref = model(input_ids=kept_ids_batch, attention_mask=mask).logits
        rows = remap_embeddings(model, keep, exclude={0, 1, 2, 3})
        emb = model.get_input_embeddings()
        assert isinstance(emb, RemappedEmbedding) and emb.weight.shape[0] == len(keep)
        assert emb.row_of.dtype == torch.int16 and emb.num_embeddings == vocab == model.config.vocab_size
        torch.testing.assert_close(model(input_ids=kept_ids_batch, attention_mask=mask).logits, ref)
        # a dropped id reads exactly the row of the kept id it was mapped to
        dropped = 7
        neighbour = int(keep[rows[dropped]])
        assert neighbour not in (0, 1, 2, 3) and dropped not in keep
        a = model(input_ids=torch.tensor([[2, dropped, 3]])).logits
        b = model(input_ids=torch.tensor([[2, neighbour, 3]])).logits
    torch.testing.assert_close(a, b)
    # the ONNX model: an int16 id -> row map, then the int8 rows of the kept pieces only
    export_onnx(model, example_inputs("text-classification", {}, 12), tmp_path / "model.onnx", 17)
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    assert any(i.data_type == TensorProto.INT16 and list(i.dims) == [vocab] for i in inits.values())
    assert any(i.data_type == TensorProto.INT8 and list(i.dims) == [len(keep), model.config.hidden_size]
               for i in inits.values())
    assert not any(list(i.dims) == [vocab, model.config.hidden_size] for i in inits.values())  # no full table left
    ids = torch.tensor([[2, dropped, 9, 13, 3]])
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
    got = ort.InferenceSession(str(tmp_path / "model.onnx")).run(
        None, {"input_ids": ids.numpy(), "attention_mask": np.ones((1, 5), np.int64)})[0]
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_position_table_is_trimmed_to_the_length_the_student_was_trained_at_with_identical_logits(tmp_path):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    model, _ = _qat_tiny_bert(tmp_path / "bert")  # BERT: positions 0..n-1, 160 rows
    ids = torch.randint(5, model.config.vocab_size, (2, 32))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        assert trim_positions(model, 32) == {"rows": 32, "original_rows": 160}
        torch.testing.assert_close(model(input_ids=ids).logits, ref)
    table = model.bert.embeddings.position_embeddings
    assert table.weight.shape[0] == table.w_scale.shape[0] == 32 and model.config.max_position_embeddings == 32
    assert trim_positions(model, 64) is None  # nothing beyond the length left to drop
    # RoBERTa counts positions from padding id + 1: a 32-token input reaches row 33
    roberta = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=66, pad_token_id=1)).eval()
    ids = torch.randint(3, 40, (1, 32))
    with torch.no_grad():
        ref = roberta(input_ids=ids).logits
        assert trim_positions(roberta, 32) == {"rows": 34, "original_rows": 66}
        torch.testing.assert_close(roberta(input_ids=ids).logits, ref)


def test_percentile_and_mse_observers_clip_outliers_that_minmax_keeps():
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((4096,))  # a heavy tail
    x[:4] = torch.tensor([40.0, -35.0, 38.0, 50.0])  # and rare outliers, as GELU / attention outputs have
    ranges, errors = {}, {}
    for observer in ("minmax", "percentile", "mse"):
        parent = torch.nn.Sequential(torch.nn.Linear(4096, 1))
        convert(parent, ["0"], "uint8", observer=observer, percentile=99.9)
        layer = parent[0]
        layer._observe(x)
        ranges[observer] = (float(layer.act_min), float(layer.act_max))
        scale, zp = layer.act_qparams()
        errors[observer] = float((torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255) - x).pow(2).mean())
    assert ranges["minmax"] == (-35.0, 50.0)
    assert ranges["percentile"][1] < 10 and ranges["percentile"][0] > -10
    assert errors["mse"] <= errors["minmax"]  # what it searches for, on the grid that includes minmax
    # on the same batch the mse observer's range never quantizes worse than the extremes
    y = torch.distributions.Laplace(0.0, 1.0).sample((50_000,))
    parent = torch.nn.Sequential(torch.nn.Linear(4096, 1))
    convert(parent, ["0"], "uint8", observer="mse")
    parent[0]._observe(y)
    lo, hi = float(parent[0].act_min), float(parent[0].act_max)

    def err(a, b):
        scale = (b - a) / 255
        return float((torch.fake_quantize_per_tensor_affine(y, scale, int(round(-a / scale)), 0, 255) - y).pow(2).mean())

    assert float(y.min()) <= lo < 0 < hi <= float(y.max())
    assert err(lo, hi) <= err(float(y.min()), float(y.max())) + 1e-9


def test_learned_ranges_lsq_train_the_step_size_and_freeze_back_to_a_plain_range():
    from edgekd.quantize.fakequant import learn_ranges

    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((8192,)).clamp(-8, 8)
    parent = torch.nn.Sequential(torch.nn.Linear(8192, 1))
    convert(parent, ["0"], "uint8")
    layer = parent[0]
    layer._observe(torch.linspace(-30.0, 40.0, 100))  # calibrated on a batch far wider than the data that follows
    assert learn_ranges(parent) == 1
    set_mode(parent, "train")
    learned = [p for n, p in parent.named_parameters() if "learned" in n]
    assert len(learned) == 2 and all(p.requires_grad for p in learned)  # step size and (uint8) zero point
    opt = torch.optim.Adam(learned, lr=0.01)

    def error() -> float:
        with torch.no_grad():
            return float((layer._quant_input(x) - x).pow(2).mean())

    start = error()
    for _ in range(200):  # the quantization error itself as the loss: the step size shrinks to the data
        opt.zero_grad()
        (layer._quant_input(x) - x).pow(2).mean().backward()
        opt.step()
    assert error() < 0.25 * start, (error(), start)
    info = layer.freeze("0")
    assert not any("learned" in n for n, _ in parent.named_parameters())  # nothing extra saved or exported
    assert -30.0 < info["act_min"] < 0 < info["act_max"] < 40.0
    scale, zp = layer.act_qparams()
    frozen = torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)
    torch.testing.assert_close(layer._quant_input(x), frozen)
    assert float((frozen - x).pow(2).mean()) < 0.3 * start


@pytest.mark.slow
def test_a_qat_run_with_learned_ranges_exports_and_validates(tmp_path, tiny_bert_dir, text_data_dir):
    from safetensors import safe_open

    from conftest import tiny_text_recipe
    from edgekd.pipeline import Pipeline
    from edgekd.recipe import validate_recipe

    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    r["stages"] = [r["stages"][0], {"qat": {**r["stages"][2]["qat"], "learned_ranges": True}}, r["stages"][3]]
    pipe = Pipeline(validate_recipe(r))
    result = pipe.run()
    qat = next(a for a in pipe.artifacts if a.stage == "qat")
    assert qat.spec["quant"]["scheme"]["range_learning"] == "LSQ from the calibrated ranges"
    with safe_open(str(qat.path / "model.safetensors"), "pt") as f:
        assert not any("learned" in k for k in f.keys())
    assert result["export"]["validation"]["failures"] == []


@pytest.mark.slow
def test_the_int8_layout_is_chosen_by_measurement(tmp_path, tiny_bert_dir, text_data_dir, monkeypatch):
    """QAT's QDQ graph against onnxruntime's dynamic INT8 of its float twin: the faster one that validates ships."""
    import shutil

    import onnx

    import edgekd.export.layout as layout
    from conftest import tiny_text_recipe
    from edgekd.data.batching import encode
    from edgekd.pipeline import Pipeline
    from edgekd.recipe import validate_recipe

    # ms: dynamic INT8 measured twice as fast as QDQ, onnxruntime's fused graph of QDQ in between
    timings = {"qdq": 2.0, "dynamic": 1.0, "fused": 1.6, "fp32": 4.0}
    monkeypatch.setattr(layout, "time_models",
                        lambda models, feeds, threads=1, rounds_n=layout.ROUNDS: {k: timings[k] for k in models})
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    r["stages"] = [r["stages"][0], r["stages"][2], {"export": {**r["stages"][3]["export"], "int8_dynamic": True,
                                                                 "int8_fused": True}}]
    pipe = Pipeline(validate_recipe(r))
    result = pipe.run()
    export = next(a for a in pipe.artifacts if a.stage == "export")
    int8 = export.manifest["int8"]
    assert int8["layout"] == "dynamic" and result["export"]["shipped"] == "int8"
    assert int8["layouts"]["dynamic"]["speedup"] == 4.0 and int8["layouts"]["qdq"]["speedup"] == 2.0
    shipped = {n.op_type for n in onnx.load(str(export.path / "model.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in shipped and "MatMulInteger" in shipped and "QuantizeLinear" not in shipped
    qdq = {n.op_type for n in onnx.load(str(export.path / "model-int8-qdq.onnx")).graph.node}
    assert "QuantizeLinear" in qdq  # the QAT model stays beside it
    assert int8["integer_kernels"]["ok"] and int8["integer_kernels"]["optimized_graph"] == "model.optimized.onnx"
    assert export.metrics["validation"]["failures"] == [] and export.manifest["validation_qdq"]["failures"] == []
    assert int8["layouts"]["dynamic"]["argmax_agreement"] == export.metrics["validation"]["argmax_agreement"]
    assert "dynamic activations" in int8["reason"] and int8["layouts"]["fused"]["biases_folded"] > 0

    # within the margin, or failing validation, QDQ stays
    folder = tmp_path / "again"
    folder.mkdir()
    shutil.copy(export.path / "model-int8-qdq.onnx", folder / "model.onnx")
    shutil.copy(export.path / "model-fp32.onnx", folder / "model-fp32.onnx")
    from transformers import AutoTokenizer

    data = encode(pipe.ctx.data.dev.head(16), AutoTokenizer.from_pretrained(str(export.path)), 32)
    ok = lambda path: {"failures": [], "argmax_agreement": 1.0}  # noqa: E731
    timings.update(qdq=1.0, dynamic=0.99)
    assert layout.check_int8(folder, data, 32, 0, dynamic=ok)["layout"] == "qdq"
    timings.update(qdq=2.0, dynamic=1.0)
    bad = lambda path: {"failures": [{"type": "argmax_agreement"}], "argmax_agreement": 0.5}  # noqa: E731
    checked = layout.check_int8(folder, data, 32, 0, dynamic=bad)
    assert checked["layout"] == "qdq" and "validation failed" in checked["reason"]
    # the fastest eligible layout wins: onnxruntime's fused graph of the QDQ model, when it beats dynamic too
    timings.update(qdq=2.0, dynamic=1.5, fused=1.2)
    checked = layout.check_int8(folder, data, 32, 0, dynamic=ok, fused=ok)
    assert checked["layout"] == "fused" and checked["layouts"]["fused"]["built_from"] == "model.onnx"
    assert checked["integer_kernels"]["ok"] and "biases folded" in checked["reason"]
    checked = layout.check_int8(folder, data, 32, 0, dynamic=ok, fused=bad)  # unless it fails validation
    assert checked["layout"] == "dynamic"
    # the fused graph is QDQ's own arithmetic: it replaces QDQ unless measured slower by more than the margin
    timings.update(qdq=2.0, dynamic=2.0, fused=2.05)
    assert layout.check_int8(folder, data, 32, 0, dynamic=ok, fused=ok)["layout"] == "fused"
    timings.update(fused=2.2)
    assert layout.check_int8(folder, data, 32, 0, dynamic=ok, fused=ok)["layout"] == "qdq"


def test_folding_linear_biases_into_integer_matmuls_leaves_the_logits_bit_identical(tmp_path):
    """onnxruntime's optimised graph of a QDQ model, each Linear's bias Add folded into MatMulIntegerToFloat."""
    import onnxruntime as ort

    from edgekd.export.host_graph import fused_host_graph

    model, _ = _qat_tiny_bert(tmp_path / "bert")
    export_onnx(model, example_inputs("text-classification", {}, 12), tmp_path / "model.onnx", 17)
    path, facts = fused_host_graph(tmp_path / "model.onnx", tmp_path / "fused.onnx")
    graph = onnx.load(str(path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMulIntegerToFloat"]
    with_bias = [n for n in matmuls if len(n.input) > 6 and n.input[6]]
    # Q, K, V, attention output and FFN output of both layers; the FFN input's bias went into BiasGelu instead
    assert facts["biases_folded"] == len(with_bias) == 10 and len(matmuls) == 12
    consts = {i.name for i in graph.initializer}  # no bias Add left after an integer MatMul (residual Adds stay)
    assert not any(n.op_type == "Add" and any(producers.get(i) in matmuls for i in n.input)
                   and any(i in consts for i in n.input) for n in graph.node)
    ids = torch.randint(0, model.config.vocab_size, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    ref = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_array_equal(got, ref)
