"""Families as tiny random models built from transformers configs (a WordPiece tokenizer, as a user's model of that
family, shrunk): what models/families.py knows of them, pruning that removes whole heads and FFN channels of each,
and each family through the whole pipeline."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from conftest import tiny_image_recipe, tiny_text_recipe, write_text_data, write_tiny_encoder
from edgekd.configs import PruneConfig, StudentConfig
from edgekd.models.hf import load_hf_classifier
from edgekd.models.spec import architecture_summary, build_model, hidden_width, make_spec
from edgekd.models.students import build_student
from edgekd.prune.structured import prune_structured

TASK = "text-classification"
DEBERTA = {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 16}
# model_type and config of each text family; DeBERTa-v3 is DeBERTa-v2's code with shared key projections
TEXT_FAMILIES = {
    "bert": ("bert", {}), "roberta": ("roberta", {}), "xlm-roberta": ("xlm-roberta", {}),
    "distilbert": ("distilbert", {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64}),
    "mpnet": ("mpnet", {}), "electra": ("electra", {"embedding_size": 16}),
    "deberta-v2": ("deberta-v2", {**DEBERTA, "share_att_key": False, "max_relative_positions": 32}),
    "deberta-v3": ("deberta-v2", {**DEBERTA, "share_att_key": True, "norm_rel_ebd": "layer_norm"}),
    "modernbert": ("modernbert", {"global_attn_every_n_layers": 2}),
}
# within each layer: (query projection, or the fused q/k/v one; attention output projection; FFN in; FFN out)
UNITS = {"bert": ("attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense"),
         "distilbert": ("attention.q_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"),
         "mpnet": ("attention.attn.q", "attention.attn.o", "intermediate.dense", "output.dense"),
         "deberta-v2": ("attention.self.query_proj", "attention.output.dense", "intermediate.dense", "output.dense"),
         "modernbert": ("attn.Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo")}
UNITS.update({f: UNITS["bert"] for f in ("roberta", "xlm-roberta", "electra")}, **{"deberta-v3": UNITS["deberta-v2"]})


def _tiny(tmp_path, family: str) -> nn.Module:
    model_type, config = TEXT_FAMILIES[family]
    model, _, _ = load_hf_classifier(str(write_tiny_encoder(tmp_path / family, model_type, **config)), TASK, ["0", "1"])
    with torch.no_grad():  # position biases of a trained model's size, not initialisation's 0.02: a bias column
        for name, m in model.named_modules():  # given to the wrong head must show
            if name.endswith(("relative_attention_bias", "rel_embeddings")):
                m.weight.normal_(0, 1.0)
    return model.eval()


def _kept(before: torch.Tensor, after: torch.Tensor, rows: int) -> list[int]:
    """Which units (`rows` output rows each) of a Linear's weight `before` pruning are the units `after` it."""
    old, new = before.reshape(-1, rows * before.shape[1]), after.reshape(-1, rows * after.shape[1])
    return [next(i for i in range(len(old)) if torch.equal(old[i], unit)) for unit in new]


def _masked(original: nn.Module, pruned: nn.Module, family: str) -> nn.Module:
    """The unpruned model with what pruning removed silenced at its one reader: a removed head's columns of the
    attention output projection, a removed FFN channel's column of the FFN output. Pruning removed whole units only
    if the pruned model computes exactly this."""
    masked = copy.deepcopy(original)
    query, attn_out, ffn_in, ffn_out = UNITS[family]
    layers = [name for name, m in masked.named_modules() if isinstance(m, nn.ModuleList)][0]
    for i, layer in enumerate(masked.get_submodule(layers)):
        name = f"{layers}.{i}"
        q_old, q_new = layer.get_submodule(query).weight, pruned.get_submodule(f"{name}.{query}").weight
        head = original.config.hidden_size // original.config.num_attention_heads
        if family == "modernbert":  # the q block of the fused projection
            q_old, q_new = q_old[: q_old.shape[0] // 3], q_new[: q_new.shape[0] // 3]
        f_old, f_new = layer.get_submodule(ffn_in).weight, pruned.get_submodule(f"{name}.{ffn_in}").weight
        if family == "modernbert":  # the input half of the gated FFN
            f_old, f_new = f_old[: f_old.shape[0] // 2], f_new[: f_new.shape[0] // 2]
        for reader, kept, size, total in ((attn_out, _kept(q_old, q_new, head), head, q_old.shape[0]),
                                          (ffn_out, _kept(f_old, f_new, 1), 1, f_old.shape[0])):
            keep = torch.zeros(total)
            for unit in kept:
                keep[unit * size:(unit + 1) * size] = 1
            layer.get_submodule(reader).register_forward_pre_hook(lambda m, args, keep=keep: (args[0] * keep,))
    return masked


@pytest.mark.parametrize("family", list(TEXT_FAMILIES))
def test_pruning_removes_whole_heads_and_ffn_channels_and_the_spec_rebuilds_the_pruned_model(tmp_path, family):
    model = _tiny(tmp_path, family)
    original = copy.deepcopy(model)
    ids = torch.tensor([[2, 7, 9, 11, 12, 13, 20, 3], [2, 8, 10, 14, 3, 0, 0, 0]])
    inputs = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    prune_structured(model, inputs, PruneConfig(ratio=0.3, head_ratio=0.5, global_pruning=False), "hf")
    s = architecture_summary(model)
    assert s["heads_per_layer"] == [2, 2] and all(c < 64 for c in s["ffn_per_layer"]), s
    with torch.no_grad():
        logits = model(**inputs).logits
        torch.testing.assert_close(logits, _masked(original, model, family)(**inputs).logits, rtol=1e-5, atol=1e-5)
        rebuilt = build_model(make_spec(model, {"family": "hf", "task": TASK, "hf_class": type(model).__name__,
                                                "hf_config": model.config.to_dict()}))
        rebuilt.load_state_dict(model.state_dict())
        torch.testing.assert_close(rebuilt.eval()(**inputs).logits, logits)


def test_electra_reports_its_hidden_width_not_its_narrower_embedding_width(tmp_path):
    model, _, _ = load_hf_classifier(str(write_tiny_encoder(tmp_path / "e", "electra", embedding_size=16)), TASK,
                                     ["0", "1"])
    assert model.get_input_embeddings().embedding_dim == 16
    assert hidden_width(model) == 32 and architecture_summary(model)["hidden"] == 32


def test_a_modernbert_layers_student_cuts_its_per_layer_config_and_rebuilds_from_its_spec(tmp_path):
    folder = write_tiny_encoder(tmp_path / "m", "modernbert", num_hidden_layers=3, global_attn_every_n_layers=2)
    teacher, _, _ = load_hf_classifier(str(folder), TASK, ["0", "1"])
    types = list(teacher.config.layer_types)
    assert len(types) == 3 and len(set(types)) == 2  # global and local attention layers
    student, base = build_student(StudentConfig(kind="layers", layers=[1, 2]), teacher, {"family": "hf"}, TASK, 2)
    assert student.config.layer_types == types[1:] and student.config.num_hidden_layers == 2
    rebuilt = build_model(make_spec(student, base))
    rebuilt.load_state_dict(student.state_dict())
    ids = torch.tensor([[2, 7, 9, 11, 3]])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(input_ids=ids).logits, student.eval()(input_ids=ids).logits)


def _family_recipe(family: str, tmp_path, text_data_dir) -> dict:
    """The tiny recipe (distil -> prune heads and FFN -> QAT -> export for the host and the NPU -> profile) on a
    model of `family`, at the fewest epochs and timed runs that still run every stage."""
    if family in ("vit", "deit"):
        recipe = tiny_image_recipe(tmp_path / "run")
        recipe["teacher"]["config"].update(model_type=family, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=64)
        recipe["student"] = {"kind": "layers", "layers": [1]}
        # the QAT model's own INT8 path, as for the text families: the image run measures the layouts (test_pipeline_e2e)
        recipe["stages"][3]["export"].update(int8_min_speedup=0, int8_dynamic=False, int8_fused=False)
    else:
        model_type, config = TEXT_FAMILIES[family]
        recipe = tiny_text_recipe(write_tiny_encoder(tmp_path / family, model_type, **config), text_data_dir,
                                  tmp_path / "run")
    recipe["teacher"]["finetune"]["epochs"] = 2
    for stage in recipe["stages"]:
        (name, cfg), = stage.items()
        cfg.update({"epochs": 1} if "epochs" in cfg else {})
    recipe["stages"][1]["prune"].update(ratio=0.3, head_ratio=0.25, recovery={**recipe["stages"][1]["prune"]["recovery"],
                                                                              "epochs": 1})
    # the NPU build compiled and run on the HTP for 8 sentences: what the HTP computes has its own tests (test_qnn)
    recipe["stages"][3]["export"].update(devices=["hexagon-npu"], device_min_agreement=0.5, min_agreement=0.9,
                                         teacher=False, htp_examples=8)
    # MPNet's run also builds the PTQ baselines (below)
    recipe["stages"][4]["profile"].update(rounds=1, natural_lengths=False, compare_teacher=False,
                                          compare_fp32=family == "mpnet", ptq_baselines=family == "mpnet")
    recipe["profiles"] = ["host-cpu", "hexagon-npu"]
    return recipe


@pytest.mark.parametrize("family", ["bert", "mpnet"])  # MPNet has a tensor-parallel plan transformers checks
def test_loading_says_in_one_warning_which_weights_start_from_random_values_and_nothing_else(tmp_path, capfd, family):
    """transformers' LOAD REPORT table, progress bar and tensor-parallel notes are not shown; a fresh classification
    head is expected and not warned of; an encoder weight the checkpoint lacks is named."""
    import warnings

    from safetensors.torch import load_file, save_file

    folder = write_tiny_encoder(tmp_path / family, family)  # an encoder without a head: the head is new

    def load() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_hf_classifier(str(folder), TASK, ["0", "1"], fresh_head=True)
        return [str(w.message) for w in caught if "random values" in str(w.message)]

    capfd.readouterr()
    assert load() == []
    printed = "".join(capfd.readouterr())
    assert not any(s in printed for s in ("LOAD REPORT", "Loading weights", "not sharded")), printed
    weights = load_file(folder / "model.safetensors")
    lost = next(k for k in weights if k.startswith("encoder.layer.1.") and k.endswith(".weight"))
    del weights[lost]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    (said,) = load()
    assert "lacks 1 weight of it" in said and str(folder) in said and f"{family}.{lost}" in said and "classifier" not in said
    printed = "".join(capfd.readouterr())
    assert not any(s in printed for s in ("LOAD REPORT", "not sharded")), printed


@pytest.mark.slow  # BERT's own run is the session's text_run (test_pipeline_e2e.py: its NPU build too)
@pytest.mark.parametrize("family", [*(f for f in TEXT_FAMILIES if f != "bert"), "vit", "deit"])
def test_each_family_runs_the_whole_pipeline_with_heads_and_ffn_channels_pruned(tmp_path, text_data_dir, family):
    import edgekd
    from edgekd.pipeline import Pipeline
    from edgekd.recipe import validate_recipe

    result = Pipeline(validate_recipe(_family_recipe(family, tmp_path, text_data_dir))).run()
    before, after = result["prune"]["before"], result["prune"]["after"]
    assert before["heads_per_layer"] == [4] and after["heads_per_layer"] == [3], (before, after)
    assert after["ffn_per_layer"][0] < before["ffn_per_layer"][0] == 64, (before, after)
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["export_validation"]["failures"] == []
    assert (run / "model.onnx").is_file() and (run / "devices" / "hexagon-npu" / "model.onnx").is_file()
    systems = manifest["systems"]
    assert {"t1", "seq128_t1"} & set(systems["final"]["latency_ms"]["host-cpu"]) and 0 <= systems["final"]["accuracy"] <= 1
    assert systems["final-hexagon-npu"]["built_for"] == "hexagon-npu"
    assert manifest["device_models"]["hexagon-npu"]["argmax_agreement"] >= 0.5
    # the pruned artifact reloads as it was pruned (its spec rebuilds uneven widths; MPNet its heads' position bias)
    (prune_dir,) = (run / "stages").glob("*-prune-*")
    assert architecture_summary(edgekd.load_model(prune_dir)) == after
    assert ("bias_heads" in json.loads((prune_dir / "manifest.json").read_text())["spec"]) == (family == "mpnet")
    if family == "mpnet":
        # MPNet's relative-position buckets are integer arithmetic on the attention path, which onnxruntime's static
        # PTQ quantizes by default; onnxruntime (1.32) builds it (a log of 0 calibrates to a NaN scale), then its
        # quantized relative-position Gather reads an index of about -9.2e18 at run time. That model is recorded as
        # failed, and the quantization of the matrix products alone measured in its place.
        from edgekd.profile.baselines import MATMUL_ONLY
        from test_profile_baselines import BASELINES

        static = systems["ptq-static"]
        assert static["failed_at"] == "run" and "relative_attention_bias" in static["error"], static
        assert "calibration warned: invalid value encountered" in static["error"], static
        assert static["baseline"] == BASELINES["ptq-static"] and static["built_from"] == "model-fp32.onnx"
        (profile_dir,) = (run / "stages").glob("*-profile-*")
        assert (profile_dir / static["file"]).is_file()  # kept, for whoever wants to look into it
        assert systems["ptq-dynamic"]["latency_ms"]["host-cpu"]["seq128_t1"]["p50"] > 0
        matmul = systems[MATMUL_ONLY["name"]]
        assert matmul["baseline"] == MATMUL_ONLY["baseline"] and matmul["quantization"]["op_types"] == "MatMul, Gemm"
        assert matmul["latency_ms"]["host-cpu"]["seq128_t1"]["p50"] > 0 and 0 <= matmul["accuracy"] <= 1
        assert matmul["quantization"]["instead_of"] == "ptq-static, which does not run"
        report = (run / "report.md").read_text()
        assert "built, does not run" in report and "| ptq-static-matmul — PTQ baseline (" in report
        assert "`ptq-static-matmul`: the same quantize_static of the MatMul and Gemm nodes only" in report


@pytest.mark.parametrize("family, change, refused", [
    ("electra", {"stages.1.prune.hidden_ratio": 0.25},
     r"stages.1.prune.hidden_ratio: ElectraForSequenceClassification \(electra\) projects its narrower embeddings"),
    ("modernbert", {"stages.0.distill.relation_weight": 1.0},
     r"stages.0.distill.relation_weight: ModernBertForSequenceClassification \(modernbert\) has no separate"),
    ("gpt2", {}, r"student.kind: layers: edgekd finds no list of transformer layers in GPT2ForSequenceClassification"
                 r".* stages.1.prune.head_ratio: edgekd does not know the attention projections of .*"
                 r"stages.1.prune: edgekd does not know the feed-forward layers"),
])
def test_what_a_family_cannot_do_is_refused_before_any_work_naming_the_family_part_and_key(
        tmp_path, text_data_dir, family, change, refused):
    from edgekd.errors import EdgekdError
    from edgekd.pipeline import Pipeline
    from edgekd.recipe import validate_recipe

    model_type, config = TEXT_FAMILIES.get(family, (family, {}))
    recipe = tiny_text_recipe(write_tiny_encoder(tmp_path / family, model_type, **config), text_data_dir,
                              tmp_path / "run")
    for key, value in change.items():
        _, i, stage, field = key.split(".")
        recipe["stages"][int(i)][stage][field] = value
    with pytest.raises(EdgekdError, match=refused):
        Pipeline(validate_recipe(recipe)).run()
    assert not (tmp_path / "run" / "stages").exists()  # nothing trained


@pytest.mark.parametrize("family, rows", [("mpnet", 34), ("electra", 32)])
def test_the_position_table_of_mpnet_and_electra_is_trimmed_with_identical_logits(tmp_path, family, rows):
    from edgekd.export.vocab import trim_positions

    model = _tiny(tmp_path, family)  # 160 rows; MPNet counts positions from the padding id + 1, as RoBERTa does
    ids = torch.randint(5, model.config.vocab_size, (2, 32))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        assert trim_positions(model, 32) == {"rows": rows, "original_rows": 160}
        torch.testing.assert_close(model(input_ids=ids).logits, ref)
