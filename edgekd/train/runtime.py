"""Where training runs: the device, mixed precision, and the processes of a distributed run.

One `Runtime` per run. Several processes are started by an existing launcher — `torchrun` (or
`accelerate launch`), which set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR — never by edgekd: it
only joins the process group they describe (gloo on CPU, NCCL on CUDA) and wraps models in
torch's DistributedDataParallel. Rank 0 is the only process that writes files.
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from ..errors import EdgekdError

PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# A rank waits in a collective while rank 0 alone exports or profiles (minutes on a CPU): the
# default 30-minute timeout of a process group would end long runs. A failing rank ends the run
# anyway (torchrun stops every worker when one exits with an error).
DIST_TIMEOUT = timedelta(minutes=float(os.environ.get("EDGEKD_DIST_TIMEOUT_MIN", "360")))


def resolve_device(setting: str = "auto") -> torch.device:
    """`auto` = a CUDA GPU when one is present, else Apple's MPS, else the CPU.

    Under torchrun each process takes the GPU of its LOCAL_RANK, so `cuda:N` is refused there.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() and not distributed:
            return torch.device("mps")
        return torch.device("cpu")
    if setting == "cpu":
        return torch.device("cpu")
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EdgekdError(f"device: {setting} was asked for, but torch finds no CUDA GPU here (torch "
                              f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Use device: auto or cpu.")
        if ":" in setting:
            index = int(setting.split(":", 1)[1])
            if distributed:
                raise EdgekdError(f"device: {setting} names one GPU, but this is a {os.environ['WORLD_SIZE']}-process "
                                  "run where each process takes the GPU of its LOCAL_RANK; use device: cuda or auto.")
            if index >= torch.cuda.device_count():
                raise EdgekdError(f"device: {setting}: there are {torch.cuda.device_count()} CUDA GPU(s) "
                                  f"(cuda:0 … cuda:{torch.cuda.device_count() - 1}).")
            return torch.device("cuda", index)
        return torch.device("cuda", local % torch.cuda.device_count())
    if setting == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise EdgekdError("device: mps was asked for, but Apple's Metal backend is not available here. "
                              "Use device: auto or cpu.")
        if distributed:
            raise EdgekdError("device: mps does not support several processes; run one process or use cpu.")
        return torch.device("mps")
    raise EdgekdError(f"device: {setting!r} is not one of auto, cpu, cuda, cuda:N, mps.")


@dataclass
class Runtime:
    device: torch.device
    precision: str = "no"
    world_size: int = 1
    rank: int = 0

    # ------------------------------------------------------------------ set-up
    @classmethod
    def from_settings(cls, device: str = "auto", precision: str = "no") -> "Runtime":
        dev = resolve_device(device)
        if precision == "auto":  # bf16 where the hardware has it: a GPU; CPUs without bf16 units only get slower
            precision = "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
        if precision == "fp16" and dev.type == "cpu":
            raise EdgekdError("precision: fp16 needs a GPU (CPU kernels and gradient scaling are for bf16); "
                              "use precision: bf16 or no on the CPU.")
        if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise EdgekdError(f"precision: bf16 is not supported by {torch.cuda.get_device_name(dev)}; use fp16.")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        if world > 1:
            import torch.distributed as dist

            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=DIST_TIMEOUT)
            world, rank = dist.get_world_size(), dist.get_rank()
        return cls(dev, precision, world, rank)

    @classmethod
    def cpu(cls) -> "Runtime":
        """One process on the CPU in full precision (library use and tests)."""
        return cls(torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local(self) -> "Runtime":
        """This process alone (same device and precision): for work rank 0 does while the others wait, where a
        collective would wait for processes that never come."""
        return Runtime(self.device, self.precision)

    def describe(self) -> dict:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else self.device.type
        return {"device": str(self.device), "device_name": name, "processes": self.world_size,
                "precision": self.precision}

    # ------------------------------------------------------------------ precision
    def autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self):
        """fp16 gradients need loss scaling to stay representable; bf16 has float32's range."""
        if self.precision == "fp16":
            return torch.amp.GradScaler(self.device.type)
        return None

    # ------------------------------------------------------------------ processes
    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train: DDP over every process (gradients averaged), or the model itself."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This process's share of a global batch (every world_size-th example)."""
        return idx[self.rank::self.world_size]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any (a NaN on one shard stops all)."""
        if not self.distributed:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather_rows(self, idx: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
        """Every process's rows (for its example indices `idx`) put together in example order: [n, ...]."""
        if not self.distributed:
            out = np.zeros((n, *rows.shape[1:]), dtype=rows.dtype)
            out[idx] = rows
            return out
        import torch.distributed as dist

        dev = self._comm_device()
        count = torch.tensor([len(idx)], device=dev)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count)
        width = int(max(c.item() for c in counts))
        pad_idx = torch.full((width,), -1, dtype=torch.long, device=dev)
        pad_idx[: len(idx)] = torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(dev)
        pad_rows = torch.zeros((width, *rows.shape[1:]), dtype=torch.float32, device=dev)
        pad_rows[: len(idx)] = torch.from_numpy(rows.astype(np.float32)).to(dev)
        all_idx = [torch.empty_like(pad_idx) for _ in range(self.world_size)]
        all_rows = [torch.empty_like(pad_rows) for _ in range(self.world_size)]
        dist.all_gather(all_idx, pad_idx)
        dist.all_gather(all_rows, pad_rows)
        out = np.zeros((n, *rows.shape[1:]), dtype=np.float32)
        for i, r in zip(all_idx, all_rows):
            keep = i >= 0
            out[i[keep].cpu().numpy()] = r[keep].cpu().numpy()
        return out

    def gather_tensor(self, t: torch.Tensor) -> list[torch.Tensor]:
        """The same-shaped tensor from every process, rank order (RNG states for a checkpoint)."""
        if not self.distributed:
            return [t]
        import torch.distributed as dist

        dev = self._comm_device()
        x = t.to(dev)
        out = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(out, x)
        return [o.cpu() for o in out]

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    @contextmanager
    def main_first(self):
        """Rank 0 does the body first (e.g. writes a cache file); the others wait, then do it (read it)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
