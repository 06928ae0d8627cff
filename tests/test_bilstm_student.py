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


@pytest.mark.slow
def test_a_bilstm_student_distils_prunes_quantizes_and_exports(tmp_path, tiny_bert_dir, text_data_dir):
    import onnx

    from edgekd.models.spec import architecture_summary, load_model_from_artifact

    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    r["student"] = {"kind": "bilstm", "lstm_hidden": 16, "embedding_dim": 16}  # teacher width 32: projected down
    kd = r["stages"][0]["distill"]
    prune = {"budget": {"params": 0.6}, "steps": 1, "width_multiple": 4, "importance": "loss",
             "recovery": {**kd, "epochs": 1}}
    r["stages"] = [r["stages"][0], {"prune": prune}, r["stages"][2], r["stages"][3]]  # distill, prune, qat, export
    pipe = Pipeline(validate_recipe(r))
    result = pipe.run()
    assert result["distill"]["test_accuracy"] > 0.5
    m = result["prune"]
    assert m["non_embedding_params_after"] <= 0.6 * m["non_embedding_params_before"]
    widths = m["after"]["lstm_hidden"]
    assert all(w % 4 == 0 and 0 < w < 16 for w in widths), widths
    pruned = next(a for a in pipe.artifacts if a.stage == "prune")
    assert architecture_summary(load_model_from_artifact(pruned))["lstm_hidden"] == widths  # reloads at its widths
    assert result["qat"]["transfer"]["accuracy"] == result["qat"]["test_accuracy"]  # QAT reports what transferred too
    export = next(a for a in pipe.artifacts if a.stage == "export")
    graph = onnx.load(str(export.path / "model.onnx")).graph
    assert "LSTM" in {n.op_type for n in graph.node} and result["export"]["validation"]["argmax_agreement"] >= 0.95
    assert {a.i for n in graph.node if n.op_type == "LSTM" for a in n.attribute if a.name == "hidden_size"} == set(widths)
    bad = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "bad")
    bad["student"] = {"kind": "bilstm"}
    bad["stages"][1]["prune"]["drop_layers"] = 1
    with pytest.raises(Exception, match="drop_layers removes transformer layers; a bilstm student has none"):
        validate_recipe(bad)


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "loss"])
def test_a_hidden_unit_that_carries_nothing_goes_first_and_the_logits_stay(importance):
    from torch.nn import functional as F

    from edgekd.prune.recurrent import prune_bilstm

    torch.manual_seed(0)
    model = TextBiLSTM(40, 12, 8, 3).eval()
    ids = torch.tensor([[3, 7, 9, 4, 0, 0], [5, 5, 8, 2, 11, 6]])
    mask = (ids != 0).long()
    with torch.no_grad():
        for lstm, unit, col in ((model.forward_lstm, 2, 2), (model.backward_lstm, 5, 8 + 5)):
            for p in (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0):
                p.view(4, 8, *p.shape[1:])[:, unit] = 0  # its rows in all four gates: the unit stays 0
            lstm.weight_hh_l0[:, unit] = 0
            model.classifier.weight[:, col] = 0
        before = model(ids, mask)
    loss = lambda m: F.cross_entropy(m(ids, mask), torch.tensor([0, 2]))  # noqa: E731
    assert prune_bilstm(model, 1 / 8, importance, loss) == [7, 7]
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), before)  # exactly the units that carried nothing went
