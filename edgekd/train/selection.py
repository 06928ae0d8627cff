"""Model selection on a held-out split while training: keep the best epoch's weights, stop early.

After every epoch (and at the end of a fractional last one) the training loop asks for a score — the
dev split's accuracy, never the test split's — and keeps a CPU copy of the weights whenever it beats
every earlier score; at the end the model gets the best weights back. With `patience`, training stops
after that many epochs without a better score. The scores and the best weights are saved beside the
training checkpoint (safetensors and JSON, no pickle), so a resumed run still selects among all
epochs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

BEST = "best-on-dev"


class EpochSelection:
    def __init__(self, score: Callable[[torch.nn.Module], float], patience: int | None, work_dir: Path | None,
                 writes: bool = True):
        """work_dir: the training checkpoint's folder, which every process reads (a multi-node run's output folder
        is shared) and only the main process (`writes`) writes."""
        self.score = score
        self.patience = patience
        self.folder = None if work_dir is None else Path(work_dir) / BEST
        self.writes = writes
        self.scores: list[tuple[float, float]] = []  # (epoch, score)
        self.best: dict[str, torch.Tensor] | None = None  # this run's best, in memory (on disk too, for a resume)
        self.stopped = False

    @property
    def best_epoch(self) -> float | None:
        return max(self.scores, key=lambda es: es[1])[0] if self.scores else None

    def after_epoch(self, model: torch.nn.Module, epoch: float) -> bool:
        """Score the model after `epoch` epochs; True when training should stop (patience spent)."""
        with torch.no_grad():
            value = float(self.score(model))
        improved = not self.scores or value > max(s for _, s in self.scores)
        self.scores.append((round(epoch, 4), value))
        if improved:
            self.best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if self.folder is not None and self.writes:
            self.folder.mkdir(parents=True, exist_ok=True)
            if improved:  # weights first: scores.json never names a best epoch whose weights are not on disk
                save_file({k: v.contiguous() for k, v in self.best.items()}, str(self.folder / "model.safetensors"))
            (self.folder / "scores.json").write_text(json.dumps(self.scores))
        # every process scores the same weights on the same split, so all of them stop at the same step
        best_at = max(range(len(self.scores)), key=lambda i: self.scores[i][1])
        self.stopped = self.patience is not None and len(self.scores) - 1 - best_at >= self.patience
        return self.stopped

    def scored(self, epoch: float) -> bool:
        return any(abs(e - round(epoch, 4)) < 1e-9 for e, _ in self.scores)

    def resume(self) -> None:
        """Scores (and best weights, read at the end) of the epochs a killed run already scored."""
        if self.folder is not None and (self.folder / "scores.json").is_file():
            self.scores = [tuple(x) for x in json.loads((self.folder / "scores.json").read_text())]

    def restore_best(self, model: torch.nn.Module) -> None:
        if not self.scores or self.best_epoch == self.scores[-1][0]:
            return  # the last epoch is the best: the model already has its weights
        best = self.best
        if best is None and self.folder is not None and (self.folder / "model.safetensors").is_file():
            best = load_file(str(self.folder / "model.safetensors"))
        if best is not None:
            model.load_state_dict(best)

    def report(self) -> dict:
        return {"on": "dev accuracy", "scores": [{"epoch": e, "score": s} for e, s in self.scores],
                "best_epoch": self.best_epoch, "patience": self.patience, "stopped_early": self.stopped}
