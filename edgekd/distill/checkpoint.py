"""Resumable training checkpoints without pickle.

Tensors (model, optimizer moments, torch RNG) go to safetensors; everything else (optimizer
hyper-parameters, scheduler counters, numpy RNG, data position) to JSON. A checkpoint is written
to a temporary name and renamed, so a kill mid-write leaves the previous one intact.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CKPT = "checkpoint"


def save_checkpoint(work_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, position: dict) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = work_dir / f".{CKPT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for key, value in state.items():
            if not torch.is_tensor(value):
                value = torch.tensor(value)
            tensors[f"opt.{pid}.{key}"] = value.contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "tensors.safetensors"))
    meta = {"param_groups": opt["param_groups"], "scheduler": scheduler.state_dict(), "position": position}
    (tmp / "state.json").write_text(json.dumps(meta, default=_plain))
    final = work_dir / CKPT
    old = work_dir / f".{CKPT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(work_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> dict | None:
    final = work_dir / CKPT
    if not (final / "state.json").is_file():
        old = work_dir / f".{CKPT}.old"  # killed between the two renames: the previous one is complete
        if not (old / "state.json").is_file():
            return None
        final = old
    tensors = load_file(str(final / "tensors.safetensors"))
    meta = json.loads((final / "state.json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    return meta["position"]


def _plain(o):
    if isinstance(o, float):
        return o
    return str(o)
