"""`edgekd export` and `edgekd profile` outside a recipe run."""
from __future__ import annotations

import os
from pathlib import Path

from .artifact import Artifact, copy_preprocessing, stable_hash, write_manifest, writing
from .configs import DataConfig, ExportConfig
from .errors import EdgekdError
from .onnx_file import check_onnx_file


def run_context(art: Artifact):
    """The context of the run that made `art`, rebuilt from what its manifest records.

    The manifest keeps the run's recipe, its folder and its teacher artifact; an older artifact without
    that record falls back to the run folder's run.json two levels up (<run>/stages/<artifact>).
    Only data and teacher matter outside the run: stages and device builds are dropped from the recipe.
    """
    from .recipe import validate_recipe
    from .train.context import Context

    record = art.manifest.get("run")
    if record:
        recipe_dict, run_dir = record["recipe"], Path(record["run_dir"])
        if not (run_dir / "stages").is_dir():  # the run folder moved with its artifacts
            run_dir = art.path.parent.parent
        teacher_dir = run_dir / "stages" / record["teacher"] if record.get("teacher") else art.path
        source = f"the manifest of {str(art.path)!r}"
    else:
        from .report.run_summary import load_run

        run_dir = art.path.parent.parent
        recipe_dict, artifacts = load_run(run_dir)
        teacher_dir = next(a.path for a in artifacts if a.stage == "teacher")
        source = f"{str(run_dir / 'run.json')!r}"
    recipe = validate_recipe({**recipe_dict, "stages": []}, source)
    ctx = Context(recipe, run_dir)
    if not (teacher_dir / "manifest.json").is_file():
        raise EdgekdError(f"the teacher artifact of this run, {str(teacher_dir)!r}, is missing; export validates on the "
                          "run's data against its teacher. Re-run the recipe, or copy the whole run folder.")
    ctx.teacher = Artifact.load(teacher_dir)
    return ctx


def export_artifact(artifact_dir: Path, profile: str, out_dir: Path | None, opset: int,
                    min_agreement: float = 0.99) -> Path:
    """Re-export a stage artifact of a run for a device profile; validated on the run's own data."""
    from .devices.profiles import load_profile
    from .export.stage import run_export

    art = Artifact.load(artifact_dir)
    if not (art.path / "model.safetensors").is_file():
        raise EdgekdError(f"{str(artifact_dir)!r} holds no PyTorch model (model.safetensors); export takes a "
                          "teacher, distill, prune or qat artifact.")
    prof = load_profile(profile)
    ctx = run_context(art)
    # this export targets one profile: the recipe's profiles (and its export.devices) do not apply
    ctx.recipe = ctx.recipe.model_copy(update={"profiles": [prof.name]})
    cfg = ExportConfig(opset=opset, min_agreement=min_agreement, devices=[], teacher=False)
    key = stable_hash({"export": art.id, "profile": prof.model_dump(mode="json"), **cfg.model_dump(mode="json")})
    final = Path(out_dir) if out_dir else Path("exports") / f"{ctx.recipe.name}-{art.stage}-{prof.name}"
    if final.exists():
        raise EdgekdError(f"{str(final)!r} already exists; edgekd does not overwrite an export. Choose --out.")
    with writing(final) as tmp:
        copy_preprocessing(art.path, tmp)  # the engine does this for stages it runs; here we are the engine
        result = run_export(cfg, art, ctx, tmp, key)
        write_manifest(tmp, id=key, stage="export", config=cfg.model_dump(mode="json"), metrics=result["metrics"],
                       parent=art.id, spec=result["spec"], extra={**result["extra"], "profile": prof.name})
    return final


def profile_onnx(model: Path, profile: str, data: Path | None, split: str, text_column: str, label_column: str,
                 runs: int, rounds: int = 3) -> dict:
    from .data.batching import encode
    from .data.loading import load_data
    from .profile.measure import accuracy_on, measure_models
    from .devices.profiles import detect_host, load_profile

    prof = load_profile(profile)
    check_onnx_file(model)
    if not prof.measured:
        raise EdgekdError(f"profile {prof.name!r} is not present on this machine and cannot be measured here; "
                          "use a measured profile such as host-cpu.")
    from .devices.feeds import model_input_names

    names = model_input_names(model)
    is_text = "input_ids" in names
    result: dict = {"model": str(model), "profile": prof.name, "size_mb": os.path.getsize(model) / 1e6,
                    "machine": detect_host()}
    enc = None
    if data is not None:
        if not is_text:
            raise EdgekdError("--data is supported for text models; image models are profiled on synthetic inputs.")
        cfg = DataConfig(path=str(data), text_column=text_column, label_column=label_column,
                         train_split=split, dev_split=split, test_split=split)
        tok = _tokenizer_beside(model)
        enc = encode(load_data(cfg, "text-classification").test, tok, 128)
        acc, _ = accuracy_on(model, enc, None, "accuracy")
        result.update(acc)
    if enc is None:
        enc = _synthetic(model, names, is_text)
    latency, throughput = measure_models({"model": model}, enc, prof, warmup=10, runs=runs, rounds=rounds,
                                         natural=data is not None and is_text, natural_max=300)
    result["latency_ms"] = latency["model"]
    if throughput["model"]:
        result["throughput"] = throughput["model"]
    return result


def _tokenizer_beside(model: Path):
    folder = Path(model).resolve().parent
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        raise EdgekdError(f"No tokenizer next to {str(model)!r} (tokenizer.json or vocab.txt); an edgekd export "
                          "folder has one — profile the model.onnx inside it.")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def _synthetic(model: Path, names: list[str], is_text: bool):
    """Inputs for timing only when no data is given: shapes from the graph, content irrelevant."""
    import numpy as np

    from .data.batching import Encoded

    if is_text:
        rng = np.random.default_rng(0)
        return Encoded(np.zeros(32, dtype=np.int64), ids=[list(rng.integers(1000, 2000, 128)) for _ in range(32)])

    g = check_onnx_file(model).graph
    dims = [d.dim_value or 1 for d in g.input[0].type.tensor_type.shape.dim]
    return Encoded(np.zeros(32, dtype=np.int64), images=np.zeros((32, *dims[1:]), dtype=np.float32))
