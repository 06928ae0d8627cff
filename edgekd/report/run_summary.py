"""Collect a run's artifacts into one summary, and write the run folder's shipped files.

The run folder gets: manifest.json (the summary), report.md, model.onnx (+ preprocessing files),
devices/<profile>/model.onnx for each device build, and run.json (the artifact folders of the latest run, which `edgekd report` re-reads).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .. import __version__
from ..artifact import PREPROCESSING_FILES, Artifact, write_json_atomic
from ..errors import EdgekdError
from .markdown import render_markdown

RUN_INDEX = "run.json"


def summarize(run_dir: Path, recipe: dict, artifacts: list[Artifact], data: dict | None = None) -> dict:
    stages = []
    for a in artifacts:
        weights = a.path / "model.safetensors"
        onnx = a.path / "model.onnx"
        size = onnx.stat().st_size if onnx.is_file() else (weights.stat().st_size if weights.is_file() else None)
        stages.append({"stage": a.stage, "id": a.id, "path": str(a.path.relative_to(run_dir)),
                       "params": a.spec.get("summary", {}).get("params"),
                       "architecture": {k: v for k, v in a.spec.get("summary", {}).items() if k != "params"},
                       "size_mb": size / 1e6 if size else None, "metrics": a.metrics})
    summary = {"edgekd_version": __version__, "name": recipe.get("name"), "task": recipe.get("task"),
               "recipe": recipe, "stages": stages}
    if data:  # what loading found out about the splits (a dev split made of train texts)
        summary["data"] = data
    teacher = next((s for s in stages if s["stage"] == "teacher"), None)
    if teacher:
        summary["teacher_accuracy_pytorch"] = teacher["metrics"].get("test_accuracy")
    profile = next((s for s in stages if s["stage"] == "profile"), None)
    if profile:
        models = profile["metrics"]["models"]
        final = models.get("final", {})
        summary["accuracy"] = final.get("accuracy")  # of the shipped ONNX model, on the test split
        summary["agreement"] = final.get("agreement")
        summary["teacher_accuracy"] = models.get("teacher-fp32", {}).get("accuracy", summary.get("teacher_accuracy_pytorch"))
        summary["systems"] = models
        summary["machine"] = profile["metrics"].get("machine")
        summary["int8_speedup_vs_fp32"] = int8_speedups(models)
        summary["compat"] = profile["metrics"].get("compat", {})
        if profile["metrics"].get("estimators"):
            summary["estimators"] = profile["metrics"]["estimators"]
        if "op_breakdown" in profile["metrics"]:
            summary["op_breakdown"] = profile["metrics"]["op_breakdown"]["ms_per_op_type"]
            summary["op_breakdown_case"] = profile["metrics"]["op_breakdown"]["case"]
            summary["op_breakdown_scaled_to"] = profile["metrics"]["op_breakdown"].get("scaled_to")
    export_artifact = next((a for a in reversed(artifacts) if a.stage == "export"), None)
    if export_artifact is not None:  # the INT8 decision and the vocabulary, from the export's manifest
        for key in ("int8", "vocabulary"):
            if export_artifact.manifest.get(key):
                summary[key] = export_artifact.manifest[key]
    export = next((s for s in stages if s["stage"] == "export"), None)
    if export:
        summary["model"] = "model.onnx"
        summary["export_validation"] = export["metrics"].get("validation")
        if export["metrics"].get("devices"):  # device builds ship as devices/<profile>/model.onnx
            builds = (export_artifact.manifest.get("devices") or {}) if export_artifact is not None else {}
            summary["device_models"] = {p: {"file": f"devices/{p}/model.onnx", **d,
                                            **{k: builds[p][k] for k in ("htp", "weights") if k in builds.get(p, {})}}
                                        for p, d in export["metrics"]["devices"].items()}
    return summary


def int8_speedups(models: dict) -> dict:
    """p50(own FP32 export) / p50(INT8 model) for every measured case: INT8 must earn its place.

    Where INT8 did not pay on the host the FP32 model ships as `final` and the INT8 one is `final-int8`."""
    if "final-int8" in models:
        int8, fp32 = models["final-int8"], models.get("final", {})
    else:
        int8, fp32 = models.get("final", {}), models.get("final-fp32", {})
    out = {}
    for prof, cases in int8.get("latency_ms", {}).items():
        for case, x in cases.items():
            ref = fp32.get("latency_ms", {}).get(prof, {}).get(case)
            if ref and not x.get("estimated") and x.get("p50"):
                out[f"{prof}/{case}"] = ref["p50"] / x["p50"]
    return out


def write_run_outputs(run_dir: Path, recipe, artifacts: list[Artifact], data: dict | None = None) -> dict:
    """data: the data checks of the run (TaskData.checks); None when rebuilding a report from the run folder
    (`edgekd report` loads no data): then those the run recorded in run.json."""
    run_dir = Path(run_dir)
    recipe_dict = recipe.to_dict() if hasattr(recipe, "to_dict") else recipe
    if data is None and (run_dir / RUN_INDEX).is_file():
        data = json.loads((run_dir / RUN_INDEX).read_text(encoding="utf-8")).get("data")
    write_json_atomic(run_dir / RUN_INDEX, {"recipe": recipe_dict, "data": data or {},
                                            "artifacts": [str(a.path.relative_to(run_dir)) for a in artifacts]})
    summary = summarize(run_dir, recipe_dict, artifacts, data)
    export = next((a for a in reversed(artifacts) if a.stage == "export"), None)
    if export is not None:  # ship the model and what is needed to feed it next to the report
        for name in ("model.onnx", "config.json", *PREPROCESSING_FILES):  # config.json: for Optimum's ORTModel
            if (export.path / name).is_file():
                _copy_atomic(export.path / name, run_dir / name)
        for build in (export.manifest.get("devices") or {}).values():
            (run_dir / build["file"]).parent.mkdir(parents=True, exist_ok=True)
            _copy_atomic(export.path / build["file"], run_dir / build["file"])
            context = (build.get("htp") or {}).get("context")
            for name in ([context["model"], *context["binaries"]] if context else []):  # what an app loads
                folder = Path(build["file"]).parent
                _copy_atomic(export.path / folder / name, run_dir / folder / name)
    write_json_atomic(run_dir / "manifest.json", summary)
    _write_text_atomic(run_dir / "report.md", render_markdown(summary))
    return summary


def load_run(run_dir: Path) -> tuple[dict, list[Artifact]]:
    index = Path(run_dir) / RUN_INDEX
    if not index.is_file():
        raise EdgekdError(f"{str(run_dir)!r} is not an edgekd run folder (no {RUN_INDEX}); give the `output` folder "
                          "of a recipe run by `edgekd run`.")
    data = json.loads(index.read_text(encoding="utf-8"))
    return data["recipe"], [Artifact.load(Path(run_dir) / p) for p in data["artifacts"]]


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
