"""Pruning to a budget: step by step with recovery, hardware-aligned widths, resumable steps."""
from __future__ import annotations

import pytest
import torch

from conftest import reuse_stages, tiny_text_recipe
from edgekd.configs import PruneConfig
from edgekd.models.spec import architecture_summary, load_model_from_artifact
from edgekd.pipeline import Pipeline
from edgekd.prune.structured import non_embedding_params, prune_structured
from edgekd.recipe import validate_recipe
from test_prune_importance import tiny_bert, tiny_cnn


@pytest.mark.parametrize("multiple", [8, 16])
def test_kept_ffn_and_conv_widths_are_multiples_of_the_width_multiple(multiple):
    model, bert_example = tiny_bert()  # FFN 64 wide
    prune_structured(model, bert_example, PruneConfig(ratio=0.3), "hf", round_to=multiple)
    ffn = architecture_summary(model)["ffn_per_layer"]
    assert all(w % multiple == 0 and 0 < w < 64 for w in ffn), ffn
    cnn, example = tiny_cnn()  # 8 and 16 channels
    prune_structured(cnn, example, PruneConfig(ratio=0.4), "cnn-image", round_to=4)
    assert all(c % 4 == 0 for c in architecture_summary(cnn)["conv_channels"])
    with torch.no_grad():
        assert torch.isfinite(model(**bert_example).logits).all()


def _budget_recipe(tmp_path, teacher, data, recovery=None, **prune):
    r = tiny_text_recipe(teacher, data, tmp_path / "run")
    kd = r["stages"][0]["distill"]
    r["stages"] = [r["stages"][0], {"prune": {"budget": {"params": 0.5}, "steps": 2, "width_multiple": 8,
                                              "recovery": {**kd, "epochs": 1, **(recovery or {})}, **prune}}]
    return validate_recipe(r)


@pytest.fixture(scope="module")
def params_budget_run(tmp_path_factory, tiny_bert_dir, text_data_dir):
    """Half the non-embedding parameters in 2 steps; recoveries write checkpoints every 2 steps."""
    root = tmp_path_factory.mktemp("params-budget")
    pipe = Pipeline(_budget_recipe(root, tiny_bert_dir, text_data_dir, recovery={"checkpoint_every": 2}))
    return root, pipe, pipe.run()["prune"]


@pytest.mark.slow
def test_budget_pruning_lands_under_the_budget_in_steps_and_reloads(params_budget_run):
    tmp_path, pipe, m = params_budget_run
    assert m["non_embedding_params_after"] <= 0.5 * m["non_embedding_params_before"]
    assert m["non_embedding_params_after"] >= 0.3 * m["non_embedding_params_before"]  # not far past it
    steps = m["steps"]
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[0]["non_embedding_params"] > steps[1]["non_embedding_params"]  # each step takes its share
    assert all("dev_accuracy_before_recovery" in s and "dev_accuracy" in s and s["recovery"]["steps"] > 0
               for s in steps)
    assert all(w % 8 == 0 for w in m["after"]["ffn_per_layer"])
    art = next(a for a in pipe.artifacts if a.stage == "prune")
    model = load_model_from_artifact(art)
    assert non_embedding_params(model) == m["non_embedding_params_after"]
    # every step's checkpoints, recoveries' too, went with the finished stage (a full-size run's are ~180 MB each)
    work = tmp_path / "run" / "work"
    assert not work.is_dir() or not [p for p in work.iterdir() if not p.name.startswith(".")], list(work.iterdir())


@pytest.mark.slow
def test_a_stopped_budget_run_resumes_at_the_next_step(tmp_path, tiny_bert_dir, text_data_dir, monkeypatch):
    import edgekd.prune.stage as prune_stage

    real = prune_stage.distill_fit
    calls = []

    def stop_in_step_two(model, cfg, ctx, desc, key):
        calls.append(desc)
        if desc.startswith("prune recovery 2/"):
            raise KeyboardInterrupt  # a run stopped during the second step's recovery
        return real(model, cfg, ctx, desc, key)

    monkeypatch.setattr(prune_stage, "distill_fit", stop_in_step_two)
    recipe = _budget_recipe(tmp_path, tiny_bert_dir, text_data_dir)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(recipe).run()
    monkeypatch.setattr(prune_stage, "distill_fit", real)
    first = [c for c in calls if c.startswith("prune recovery")]
    assert first == ["prune recovery 1/2", "prune recovery 2/2"]
    calls.clear()
    monkeypatch.setattr(prune_stage, "distill_fit", lambda *a: (calls.append(a[3]), real(*a))[1])
    m = Pipeline(recipe).run()["prune"]
    assert [c for c in calls if c.startswith("prune recovery")] == ["prune recovery 2/2"]  # step 1 was not redone
    assert [s["step"] for s in m["steps"]] == [1, 2]


def test_an_evenly_pruned_bert_round_trips_through_from_pretrained_and_a_head_pruned_one_says_why(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from edgekd.models.hf_folder import hf_folder_blocker, save_hf_folder

    model, example = tiny_bert()
    # FFN channels only, the same share of every layer: a config's single intermediate_size describes it
    prune_structured(model, example, PruneConfig(ratio=0.5, head_ratio=0, global_pruning=False), "hf", round_to=8)
    summary = architecture_summary(model)
    assert summary["heads_per_layer"] == [4, 4] and len(set(summary["ffn_per_layer"])) == 1
    assert hf_folder_blocker(model) is None
    facts = save_hf_folder(model, tmp_path / "hf")
    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf")).eval()
    assert facts["intermediate_size"] == summary["ffn_per_layer"][0] == loaded.config.intermediate_size
    with torch.no_grad():
        torch.testing.assert_close(loaded(**example).logits, model(**example).logits)
    heads, example = tiny_bert()
    prune_structured(heads, example, PruneConfig(ratio=0.3, head_ratio=0.5), "hf")
    assert "attention heads were pruned" in hf_folder_blocker(heads)


@pytest.mark.slow
def test_a_latency_budget_prunes_until_the_measured_host_latency_fits(tmp_path, text_data_dir):
    from conftest import write_tiny_bert

    # wide enough that FFN width dominates the latency (the tiny test BERT is all overhead)
    teacher = write_tiny_bert(tmp_path / "teacher", hidden_size=128, intermediate_size=4096)
    r = tiny_text_recipe(teacher, text_data_dir, tmp_path / "run")
    r["data"]["max_length"] = 128  # a few ms per inference: timing noise stays well below the budget's 40% cut
    r["teacher"]["finetune"]["epochs"] = 1
    kd = {**r["stages"][0]["distill"], "epochs": 1}
    r["stages"] = [{"distill": kd}]
    pipe = Pipeline(validate_recipe(r))
    pipe.run()
    from edgekd.prune.costs import Probe

    unpruned = load_model_from_artifact(next(a for a in pipe.artifacts if a.stage == "distill"))
    probe = Probe(pipe.ctx)
    with probe.exported(unpruned) as c:
        start = min(c.host_ms() for _ in range(2))
    budget = 0.6 * start
    r["stages"].append({"prune": {"budget": {"latency_ms": budget}, "steps": 1, "width_multiple": 8, "head_ratio": 0,
                                  "recovery": {**kd, "epochs": 1}}})
    pruned = Pipeline(validate_recipe(r))
    m = pruned.run()["prune"]
    assert m["budget"]["latency_ms"] == budget and m["steps"][0]["budget"] == "latency_ms"
    assert "estimated" not in m["budget"] and m["budget"]["reached"] == m["steps"][0]["latency_ms"]
    # under the budget by the protocol's quietest round, and not pruned far past it: on a shared 2-vCPU VM the
    # budget's own start timing moves by a third between runs, so "far" is a half (the estimated-device test below
    # checks the bisection exactly, with a deterministic cost)
    assert -0.5 <= m["budget"]["off_by"] <= 0.0, m["budget"]
    # timed again on its own, the reloaded model lands near the budget: the quietest of three re-timings, as the
    # start was the quietest of two (one fresh pair of rounds ran +20% on a busy CI machine, another +45% on a
    # shared VM: single timings are that noisy here)
    with probe.exported(load_model_from_artifact(next(a for a in pruned.artifacts if a.stage == "prune"))) as c:
        assert min(c.host_ms() for _ in range(3)) <= 1.5 * budget
    assert m["non_embedding_params_after"] < m["non_embedding_params_before"]
    with pytest.raises(Exception, match="give exactly one of prune.budget.params, prune.budget.macs or"):
        validate_recipe({**r, "stages": [{"prune": {"budget": {"params": 0.5, "latency_ms": 3.0}}}]})


@pytest.mark.slow
def test_a_mac_budget_lands_under_its_count_and_every_step_reports_macs_size_and_host_latency(
        tmp_path, tiny_bert_dir, text_data_dir, params_budget_run):
    from edgekd.prune.costs import Probe

    _, pipe, _ = params_budget_run  # its distill stage is the start
    reuse_stages(pipe.run_dir, tmp_path / "run", ("teacher", "distill"))
    unpruned = load_model_from_artifact(next(a for a in pipe.artifacts if a.stage == "distill"))
    with Probe(pipe.ctx).exported(unpruned) as c:
        start = c.macs()
    budget = 0.6 * start
    m = Pipeline(_budget_recipe(tmp_path, tiny_bert_dir, text_data_dir, budget={"macs": budget})).run()["prune"]
    last = m["steps"][-1]
    assert m["budget"]["macs"] == budget and last["budget"] == "macs" and last["macs"] == m["budget"]["reached"]
    # under the budget, and not far below it (bisection over the widths of a tiny model with widths in 8s)
    assert 0.6 * budget <= last["macs"] <= budget, (last["macs"], budget)
    assert m["steps"][0]["macs"] > last["macs"]
    for st in m["steps"]:  # the step report: MACs, FP32 ONNX size, host latency FP32 and dynamic INT8
        assert st["onnx_fp32_mb"] > 0 and st["latency_ms"] > 0 and st["int8_dynamic_latency_ms"] > 0
        assert st["latency_case"].startswith("batch 1")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "MAC budget" in report and "| MACs |" in report and "INT8 host ms" in report


@pytest.mark.slow
def test_a_latency_budget_on_an_absent_device_is_estimated_and_labelled(tmp_path, text_data_dir):
    from conftest import write_tiny_bert
    from edgekd.devices.estimate import estimate_latency
    from edgekd.devices.profiles import load_profile
    from edgekd.errors import EdgekdError
    from edgekd.prune.costs import Probe

    # FFN-heavy, so that pruning moves the estimate (a tiny BERT's estimate is per-operator overhead)
    teacher = write_tiny_bert(tmp_path / "teacher", hidden_size=64, intermediate_size=2048)
    distilled = tiny_text_recipe(teacher, text_data_dir, tmp_path / "run")  # as _budget_recipe, without its prune
    distilled["stages"] = distilled["stages"][:1]  # the distilled student is the start; the budget's prune follows
    pipe = Pipeline(validate_recipe(distilled))
    pipe.run()
    unpruned = load_model_from_artifact(next(a for a in pipe.artifacts if a.stage == "distill"))
    probe = Probe(pipe.ctx)
    rpi = load_profile("rpi5-cortex-a76")
    with probe.exported(unpruned) as c:
        start = c.estimated_ms(rpi)
        assert start == estimate_latency(c.path, rpi, probe.seq_len, 1)["ms"]
    budget = 0.8 * start
    recipe = _budget_recipe(tmp_path, teacher, text_data_dir, steps=1,
                            budget={"latency_ms": budget, "profile": "rpi5-cortex-a76"})
    m = Pipeline(recipe).run()["prune"]
    est = m["budget"]["estimated"]
    # labelled with the Pi profile's error against a published measurement, not the host estimator's
    assert est["profile"] == "rpi5-cortex-a76" and est["anchored"] and est["estimator_error"] > 0
    assert est["estimator_error"] != est["host_estimator_error"]
    # an estimate is deterministic: the bisection lands under the budget, close to it
    assert m["budget"]["reached"] == m["steps"][0]["estimated_latency_ms"] <= budget
    assert m["budget"]["off_by"] > -0.15, m["budget"]
    assert f"estimated on rpi5-cortex-a76 (estimated ±{100 * est['estimator_error']:.0f}%)" in \
        (tmp_path / "run" / "report.md").read_text()
    # a budget below what pruning can reach fails before any training, saying why and what to do
    with pytest.raises(EdgekdError, match="cannot be reached.*give a larger budget"):
        Pipeline(_budget_recipe(tmp_path, teacher, text_data_dir, steps=1,
                                budget={"latency_ms": 0.05 * start, "profile": "rpi5-cortex-a76"})).run()
    with pytest.raises(Exception, match="needs prune.budget.latency_ms"):
        _budget_recipe(tmp_path, teacher, text_data_dir, budget={"params": 0.5, "profile": "host-cpu"})


@pytest.mark.slow
def test_dropping_whole_layers_removes_those_the_loss_misses_least_and_the_model_reloads_and_exports(
        tmp_path, tiny_bert_dir, text_data_dir):
    import numpy as np
    import onnxruntime as ort
    from torch.nn import functional as F

    from edgekd.models.hf import logits_of
    from edgekd.models.students import encoder_layers
    from edgekd.models.onnx_graph import LogitsOnly, torch_to_onnx
    from edgekd.prune.layers import drop_layers

    model, batch = tiny_bert()  # 2 layers
    labels = torch.tensor([0, 1, 2])
    loss = lambda m: F.cross_entropy(logits_of(m, batch), labels)  # noqa: E731
    kept_block = encoder_layers(model)[2][1]
    facts = drop_layers(model, 1, loss)
    assert facts["layers_before"] == 2 and facts["dropped"] == [int(np.argmin(facts["loss_without"]))]
    assert model.config.num_hidden_layers == 1 and len(encoder_layers(model)[2]) == 1
    with torch.no_grad():  # the model left is the one that was scored
        assert float(loss(model)) == pytest.approx(min(facts["loss_without"]), rel=1e-5)
    if facts["dropped"] == [0]:
        assert encoder_layers(model)[2][0] is kept_block

    # in a run: 2 layers -> 1 and a params budget counted on the whole model; reloads and exports
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    r["student"] = {"kind": "layers", "layers": [0, 1]}
    kd = r["stages"][0]["distill"]
    r["stages"] = [{"distill": kd}, {"prune": {"drop_layers": 1, "budget": {"params": 0.4}, "steps": 1,
                                                      "width_multiple": 8, "recovery": {**kd, "epochs": 1}}}]
    pipe = Pipeline(validate_recipe(r))
    m = pipe.run()["prune"]
    assert m["layers"]["layers_before"] == 2 and len(m["layers"]["dropped"]) == 1
    assert len(m["after"]["heads_per_layer"]) == 1
    assert m["non_embedding_params_after"] <= 0.4 * m["non_embedding_params_before"]
    art = next(a for a in pipe.artifacts if a.stage == "prune")
    reloaded = load_model_from_artifact(art).eval()
    assert reloaded.config.num_hidden_layers == 1
    ids = torch.randint(5, reloaded.config.vocab_size, (2, 12))
    feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    path = tmp_path / "pruned.onnx"
    torch_to_onnx(LogitsOnly(reloaded, list(feed)), feed, path, 17)
    got = ort.InferenceSession(str(path)).run(None, {k: v.numpy() for k, v in feed.items()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, logits_of(reloaded, feed).numpy(), atol=1e-4)
    with pytest.raises(Exception, match="drop_layers removes transformer layers"):
        validate_recipe({**r, "student": {"kind": "cnn", "channels": [8]}})


@pytest.mark.slow
def test_recovery_can_pull_each_layer_toward_its_unpruned_self(tmp_path, tiny_bert_dir, text_data_dir, monkeypatch):
    # recovery.layer_teacher: unpruned (CoFi's layer distillation): the hidden-state term reads the student as it was
    # before pruning, each kept layer against its own unpruned self (after drop_layers too), and recovery closes the gap
    import numpy as np

    import edgekd.prune.stage as prune_stage
    from edgekd.train.losses import HiddenStateMSE, Outputs

    real, seen = prune_stage.distill_fit, {}

    def gap(model, unpruned, layer_map, batch) -> float:
        with torch.no_grad():
            s, t = (m.eval()(**batch, output_hidden_states=True) for m in (model, unpruned))
        term = HiddenStateMSE(layer_map)
        return float(term(Outputs(s.logits, s.hidden_states, None, batch["attention_mask"]),
                          Outputs(t.logits, t.hidden_states, None, batch["attention_mask"]), None))

    def spy(model, cfg, ctx, desc, key, layer_teacher=None):
        batch = ctx.encoded("dev").batch(np.arange(16))
        seen.update(layer_map=cfg.layer_map, teacher_layers=layer_teacher.config.num_hidden_layers,
                    before=gap(model, layer_teacher, cfg.layer_map, batch))
        out = real(model, cfg, ctx, desc, key, layer_teacher=layer_teacher)
        seen["after"] = gap(model, layer_teacher, cfg.layer_map, batch)
        return out

    monkeypatch.setattr(prune_stage, "distill_fit", spy)
    r = tiny_text_recipe(tiny_bert_dir, text_data_dir, tmp_path / "run")
    r["student"] = {"kind": "layers", "layers": [0, 1]}
    kd = r["stages"][0]["distill"]
    r["stages"] = [{"distill": kd}, {"prune": {
        "drop_layers": 1, "budget": {"params": 0.4}, "steps": 1, "width_multiple": 8,
        "recovery": {**kd, "epochs": 3, "lr": 1e-3, "hidden_weight": 1000.0, "layer_teacher": "unpruned",
                     "select_on_dev": False}}}]
    m = Pipeline(validate_recipe(r)).run()["prune"]
    kept = [i for i in range(2) if i not in m["layers"]["dropped"]]
    assert seen["layer_map"] == kept and seen["teacher_layers"] == 2  # the unpruned 2-layer student, not the teacher
    assert seen["after"] < 0.75 * seen["before"], seen
    r["stages"][1]["prune"]["recovery"] = {**kd, "layer_teacher": "unpruned"}  # and no intermediate term to read it
    with pytest.raises(Exception, match="layer_teacher: unpruned .* none is on"):
        validate_recipe(r)
