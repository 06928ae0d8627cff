"""The `qat` stage: fake-quantize Linear/Conv layers, calibrate ranges, fine-tune with KD, freeze."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..configs import QATConfig
from ..data.batching import batch_indices
from ..models.hf import logits_of
from ..models.spec import base_of, load_model_from_artifact, make_spec, save_weights
from ..progress import log, progress
from ..train.context import Context
from ..train.distiller import distill_fit, evaluate
from ..train.loop import to_device
from .fakequant import OUTPUT_QUANT, convert, fold_batchnorm, learn_ranges, quantizable_modules, set_mode


@torch.no_grad()
def calibrate(model: torch.nn.Module, ctx: Context, cfg: QATConfig) -> int:
    train = ctx.encoded("train", cfg.max_train_examples)
    rng = np.random.default_rng([ctx.seed, 7919])
    batches = batch_indices(len(train), cfg.batch_size, shuffle=True, rng=rng)[: cfg.calibration_batches]
    set_mode(model, "calibrate")
    rt = ctx.runtime
    model.to(rt.device).eval()
    # every process observes the same batches, so the ranges agree without communication
    with progress(len(batches), "qat calibration") as advance:
        for idx in batches:
            with rt.autocast():
                logits_of(model, to_device(train.batch(idx), rt.device))
            advance()
    return len(batches)


def resolve_weight_range(cfg: QATConfig, profiles: list[str]) -> tuple[int, str]:
    """int8 or int7 weights. `auto`: int7 when the first target is a measured x86 CPU without VNNI."""
    if cfg.weight_range != "auto":
        return (127 if cfg.weight_range == "int8" else 63), f"qat.weight_range={cfg.weight_range}"
    from ..devices.profiles import detect_host, load_profile

    if profiles and load_profile(profiles[0]).measured:
        host = detect_host()
        if host["arch"] in ("x86_64", "AMD64") and not host["isa"]["vnni"]:
            return 63, ("host x86 CPU without VNNI: onnxruntime's u8s8 kernels saturate int16 with full-range "
                        "int8 weights, so weights use 7 bits (onnxruntime's reduce_range)")
    return 127, "target has VNNI, an NPU or ARM integer dot products: full int8 weights"


def run_qat(cfg: QATConfig, parent, ctx: Context, out: Path, key: str) -> dict:
    model = load_model_from_artifact(parent)
    if parent.spec.get("quant"):
        from ..errors import EdgekdError

        raise EdgekdError("qat: the input model is already quantized; QAT runs once, on a float model.")
    folded = fold_batchnorm(model)
    from ..devices.profiles import any_full_int8

    attention = cfg.attention_matmuls if cfg.attention_matmuls is not None else any_full_int8(ctx.recipe.profiles)
    names = quantizable_modules(model, cfg.embeddings, attention)
    weight_qmax, range_reason = resolve_weight_range(cfg, ctx.recipe.profiles)
    convert(model, names, cfg.activation_dtype, cfg.ema_decay, weight_qmax, cfg.observer, cfg.percentile)
    tables = [n for n in names if isinstance(model.get_submodule(n), torch.nn.Embedding)]
    outputs = [n for n in names if not hasattr(model.get_submodule(n), "weight")]
    attn = [n for n in outputs if n.endswith(OUTPUT_QUANT)]
    log(f"qat: {len(names) - len(tables) - len(outputs)} Linear/Conv layers fake-quantized (weights int8 "
        f"per-channel, activations {cfg.activation_dtype} per-tensor)"
        + (f", {len(attn)} attention Q/K/V outputs" if attn else "")
        + (f", {len(outputs) - len(attn)} conv-stack outputs" if len(outputs) > len(attn) else "")
        + (f", {len(tables)} embedding tables int8 per row" if tables else "")
        + (f"; folded {len(folded)} BatchNorm" if folded else ""))
    n_cal = calibrate(model, ctx, cfg)
    if cfg.learned_ranges:  # before training builds its optimizer: the ranges are among its parameters
        log(f"qat: {learn_ranges(model)} activation ranges learned from here on (LSQ)")
    set_mode(model, "train")
    metrics: dict = {"calibration_batches": n_cal, "train": distill_fit(model, cfg, ctx, "qat", key)}
    ranges = {name: model.get_submodule(name).freeze(name) for name in names}
    model.edgekd_quant = {
        "scheme": {"weights": "int8 per-channel symmetric", "weight_qmax": weight_qmax,
                   "weight_range_reason": range_reason, "activation_dtype": cfg.activation_dtype,
                   "activations": "per-tensor", "observer": cfg.observer,
                   "range_learning": "LSQ from the calibrated ranges" if cfg.learned_ranges else "EMA of batch ranges",
                   "scope": "linear" + (" + attention Q/K/V outputs" if attn else ""), "embeddings": tables,
                   "attention_outputs": attn},
        "modules": names,
        "ranges": ranges,
    }
    metrics.update(evaluate(model, ctx, "qat", report_dir=out))
    save_weights(model, out)
    base = base_of(parent.spec)
    return {"metrics": metrics, "spec": make_spec(model, base)}
