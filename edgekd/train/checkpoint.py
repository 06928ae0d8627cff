"""Resumable training checkpoints without pickle.

Tensors (model, optimizer moments, every process's torch CPU and CUDA RNG) go to safetensors, always
as CPU copies; everything else (optimizer hyper-parameters, scheduler counters, data position) to
JSON. A checkpoint is written to a temporary name and renamed, so a kill mid-write leaves the
previous one intact. In a distributed run every process calls save (the RNG states are gathered)
and only rank 0 writes; every process loads the same files, each taking its own RNG state.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .runtime import Runtime

CKPT = "checkpoint"


def _rng_states(rt: Runtime) -> dict[str, torch.Tensor]:
    states = {f"rng.torch.{r}": t for r, t in enumerate(rt.gather_tensor(torch.get_rng_state()))}
    if rt.device.type == "cuda":
        cuda = rt.gather_tensor(torch.cuda.get_rng_state(rt.device))
        states.update({f"rng.cuda.{r}": t for r, t in enumerate(cuda)})
    return states


def save_checkpoint(work_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, position: dict, runtime: Runtime | None = None,
                    averaged: torch.nn.Module | None = None) -> None:
    """averaged: the moving average of the weights (TrainConfig.weight_ema), saved beside them."""
    rt = runtime or Runtime.cpu()
    rng = _rng_states(rt)  # a collective: every process takes part
    if not rt.is_main:
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = work_dir / f".{CKPT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if averaged is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in averaged.state_dict().items()})
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for key, value in state.items():
            if not torch.is_tensor(value):
                value = torch.tensor(value)
            tensors[f"opt.{pid}.{key}"] = value.detach().cpu().contiguous()
    tensors.update(rng)
    save_file(tensors, str(tmp / "tensors.safetensors"))
    meta = {"param_groups": opt["param_groups"], "scheduler": scheduler.state_dict(), "position": position,
            "processes": rt.world_size, "device": str(rt.device)}
    (tmp / "state.json").write_text(json.dumps(meta, default=_plain))
    final = work_dir / CKPT
    old = work_dir / f".{CKPT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(work_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    runtime: Runtime | None = None, averaged: torch.nn.Module | None = None) -> dict | None:
    """Restore model, optimizer, scheduler and this process's RNG; returns the data position (None: no checkpoint).

    The model must already be on its device: tensors are copied into it, and the optimizer state
    follows its parameters' device.
    """
    rt = runtime or Runtime.cpu()
    final = work_dir / CKPT
    if not (final / "state.json").is_file():
        old = work_dir / f".{CKPT}.old"  # killed between the two renames: the previous one is complete
        if not (old / "state.json").is_file():
            return None
        final = old
    tensors = load_file(str(final / "tensors.safetensors"))
    meta = json.loads((final / "state.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if averaged is not None:
        averaged.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    own = tensors.get(f"rng.torch.{rt.rank}", tensors.get("rng.torch"))
    if own is not None:  # a checkpoint of a run with fewer processes has no state for this rank: keep the seed's
        torch.set_rng_state(own)
    cuda = tensors.get(f"rng.cuda.{rt.rank}")
    if cuda is not None and rt.device.type == "cuda":
        torch.cuda.set_rng_state(cuda, rt.device)
    return meta["position"]


def _plain(o):
    if isinstance(o, float):
        return o
    return str(o)
