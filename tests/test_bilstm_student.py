"""The BiLSTM text student (issue 11, item 2): padding-invariant, exported and quantized through the usual paths."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_text_recipe
from edgekd.models.rnn import TextBiLSTM
from edgekd.pipeline import Pipeline
from edgekd.recipe import validate_recipe


def test_it_equals_a_bidirectional_lstm_and_ignores_padding():
    torch.manual_seed(0)
    model = TextBiLSTM(vocab_size=20, embedding_dim=6, hidden_size=5, num_labels=2).eval()
    ids = torch.tensor([[3, 7, 9, 4]])
    ref = torch.nn.LSTM(6, 5, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, f"{name}_l0").copy_(getattr(model.forward_lstm, f"{name}_l0"))
            getattr(ref, f"{name}_l0_reverse").copy_(getattr(model.backward_lstm, f"{name}_l0"))
        h, _ = ref(model.embeddings(ids))
        expected = model.classifier(h.max(dim=1).values)
        alone = model(ids, torch.ones_like(ids))
        padded = torch.tensor([[3, 7, 9, 4, 0, 0, 0], [5, 5, 0, 0, 0, 0, 0]])
        batch = model(padded, (padded != 0).long())
    assert torch.allclose(alone, expected, atol=1e-6)
    assert torch.allclose(batch[:1], alone, atol=1e-6)  # three padding steps change nothing


def test_a_bilstm_student_distils_quantizes_and_exports_and_refuses_pruning(tmp_path, tiny_bert_dir, text_data_dir):
    import onnx

    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    r["student"] = {"kind": "bilstm", "lstm_hidden": 16, "embedding_dim": 16}  # teacher width 32: projected down
    r["stages"] = [r["stages"][0], r["stages"][2], r["stages"][3]]  # distill, qat, export
    pipe = Pipeline(validate_recipe(r))
    result = pipe.run()
    assert result["distill"]["test_accuracy"] > 0.5
    assert result["qat"]["transfer"]["accuracy"] == result["qat"]["test_accuracy"]  # QAT reports what transferred too
    export = next(a for a in pipe.artifacts if a.stage == "export")
    ops = {n.op_type for n in onnx.load(str(export.path / "model.onnx")).graph.node}
    assert "LSTM" in ops and result["export"]["validation"]["argmax_agreement"] >= 0.95
    bad = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "bad")
    bad["student"] = {"kind": "bilstm"}
    with pytest.raises(Exception, match="BiLSTM student does not support the prune stage"):
        validate_recipe(bad)
