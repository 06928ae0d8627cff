"""The `prune` stage: structured pruning to a ratio, or step by step to a budget, each step recovered by distillation.

With `prune.budget`, the stage runs `prune.steps` rounds: prune the share that brings the model's
non-embedding parameters to this step's target (the budget reached geometrically, the last step
on it; the ratio is found by bisection on a copy, because torch-pruning's ratio counts prunable
channels while the budget counts parameters), recover with the run's distillation, evaluate on
dev. Each finished step is a checkpoint (its spec and weights: shapes change between steps), so
a stopped run resumes at the next step. The manifest reports every step.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from ..configs import PruneConfig
from ..models.hf import logits_of
from ..models.hf_folder import hf_folder_blocker, save_hf_folder
from ..models.spec import (architecture_summary, base_of, build_model, load_model_from_artifact, load_weights,
                           make_spec, save_weights)
from ..progress import log
from ..train.context import Context
from ..train.distiller import distill_fit, evaluate
from ..train.losses import logit_kd_loss
from .structured import non_embedding_params, prune_structured

IMPORTANCE_EXAMPLES = 32
BISECTION_ROUNDS = 12
# A latency budget measures every bisection probe (an ONNX export and a timed run in a fresh process), so fewer
# rounds: 7 halvings of [0, 0.95] resolve the ratio to 0.007, finer than the run-to-run spread of a latency.
LATENCY_BISECTION_ROUNDS = 7
LATENCY_FEEDS = 8
LATENCY_RUNS = 30
LATENCY_ROUNDS = 2


def run_prune(cfg: PruneConfig, parent, ctx: Context, out: Path, key: str) -> dict:
    model = load_model_from_artifact(parent)
    before = architecture_summary(model)
    # The first examples of the train split: a trace input for torch-pruning and the batch Taylor
    # importance is scored on (only these are tokenized and run through the teacher).
    train = ctx.encoded("train", IMPORTANCE_EXAMPLES)
    example = train.batch(np.arange(len(train)))

    def importance_loss(m):
        # Taylor importance is scored on the distillation objective the student is trained with.
        teacher = torch.from_numpy(ctx.teacher_logits("train", IMPORTANCE_EXAMPLES))
        return logit_kd_loss(logits_of(m, example), teacher, torch.from_numpy(train.labels), 2.0, 0.5)

    round_to = _width_multiple(cfg, ctx)
    family = parent.spec["family"]
    metrics: dict = {"params_before": before["params"], "before": before,
                     "non_embedding_params_before": non_embedding_params(model), "width_multiple": round_to}
    if cfg.budget is None:
        model.eval()
        prune_structured(model, example, cfg, family, importance_loss, round_to=round_to)
        if cfg.recovery is not None:
            metrics["recovery"] = distill_fit(model, cfg.recovery, ctx, "prune recovery", key)
    else:
        model, metrics["steps"] = _prune_to_budget(model, parent, cfg, ctx, key, example, importance_loss, round_to)
        last = metrics["steps"][-1]
        if cfg.budget.latency_ms is not None:  # recovery keeps the shapes: the last step's latency is the model's
            metrics["budget"] = {"latency_ms": cfg.budget.latency_ms, "measured_ms": last["latency_ms"],
                                 "case": last["latency_case"], "off_by": last["latency_ms"] / cfg.budget.latency_ms - 1}
    after = architecture_summary(model)
    metrics.update({"params_after": after["params"], "after": after,
                    "non_embedding_params_after": non_embedding_params(model)})
    log(f"prune: {before['params'] / 1e6:.3f}M -> {after['params'] / 1e6:.3f}M parameters "
        f"({1 - after['params'] / before['params']:.1%} removed; non-embedding "
        f"{metrics['non_embedding_params_after'] / metrics['non_embedding_params_before']:.1%} kept)")
    metrics.update(evaluate(model, ctx, "pruned", report_dir=out))
    save_weights(model, out)
    if family == "hf":  # leaving edgekd: a from_pretrained folder where a transformers config can describe the model
        blocker = hf_folder_blocker(model)
        metrics["hf_folder"] = (save_hf_folder(model, out / "hf", tokenizer_from=out) if blocker is None else
                                {"saved": False, "reason": blocker, "load_instead": "edgekd.load_model(ARTIFACT), or "
                                 "the exported ONNX model (onnxruntime, Optimum's ORTModel)"})
    return {"metrics": metrics, "spec": make_spec(model, base_of(parent.spec))}


def _width_multiple(cfg: PruneConfig, ctx: Context) -> int:
    if cfg.width_multiple is not None:
        return cfg.width_multiple
    if not ctx.recipe.profiles:
        return 1
    from ..devices.profiles import load_profile

    return load_profile(ctx.recipe.profiles[0]).width_multiple


def _ratio_for(model, target: float, cost, example, cfg: PruneConfig, family: str, importance_loss, round_to: int,
               rounds: int = BISECTION_ROUNDS) -> float:
    """The smallest ratio whose pruning brings cost(model) to <= target (bisection on copies)."""
    lo, hi = 0.0, 0.95
    for _ in range(rounds):
        mid = (lo + hi) / 2
        trial = copy.deepcopy(model).eval()
        prune_structured(trial, example, cfg, family, importance_loss, ratio=mid, round_to=round_to)
        if cost(trial) <= target:
            hi = mid
        else:
            lo = mid
    return hi


class HostLatency:
    """FP32 ONNX latency of a model on this host: batch 1, 1 thread, the measurement protocol of the profile stage
    (fresh process, median of timed runs), at sequence 128 or the data's max_length if shorter.

    Why FP32 and not the shipped INT8: the budget steers pruning, which comes before QAT; INT8 latency
    tracks FP32 latency of the same widths (the export stage measures their ratio).
    """

    def __init__(self, ctx: Context, runs: int = LATENCY_RUNS):
        from ..devices.feeds import encoded_feeds
        from ..models.onnx_graph import example_inputs

        self.seq_len = min(128, ctx.recipe.data.max_length)
        self.inputs = example_inputs(ctx.task, ctx.data.preprocess, self.seq_len)
        self.feeds = encoded_feeds(ctx.encoded("train", LATENCY_FEEDS), list(self.inputs), self.seq_len,
                                   limit=LATENCY_FEEDS)
        self.runs = runs
        self.case = f"batch 1, {'sequence ' + str(self.seq_len) + ', ' if ctx.task != 'image-classification' else ''}1 thread"

    def __call__(self, model) -> float:
        import tempfile

        from ..devices.latency import combine_rounds, measure_latency
        from ..models.onnx_graph import LogitsOnly, torch_to_onnx

        with tempfile.TemporaryDirectory(prefix="edgekd-prune-") as tmp:
            path = Path(tmp) / "model.onnx"
            torch_to_onnx(LogitsOnly(model.eval(), list(self.inputs)), self.inputs, path, 17)
            # the quietest of LATENCY_ROUNDS fresh-process rounds: interference only ever slows a round down
            return combine_rounds([measure_latency(path, self.feeds, 1, warmup=5, runs=self.runs)
                                   for _ in range(LATENCY_ROUNDS)])["p50"]


def _host_latency(ctx: Context) -> "HostLatency | None":
    """The latency probe when the first profile is measured on this host, else None."""
    if not ctx.recipe.profiles:
        return None
    from ..devices.profiles import load_profile

    return HostLatency(ctx) if load_profile(ctx.recipe.profiles[0]).measured else None


def _prune_to_budget(model, parent, cfg: PruneConfig, ctx: Context, key: str, example, importance_loss,
                     round_to: int):
    family = parent.spec["family"]
    latency = _host_latency(ctx)
    if cfg.budget.latency_ms is not None:
        if latency is None:
            from ..errors import EdgekdError

            raise EdgekdError(f"prune.budget.latency_ms is measured on this host, so the first profile must be a measured "
                              f"one (host-cpu); it is {ctx.recipe.profiles[0] if ctx.recipe.profiles else 'missing'}. "
                              "Put host-cpu first in profiles, or give prune.budget.params instead.")
        cost, rounds = latency, LATENCY_BISECTION_ROUNDS
        start = latency(model)
        budget = cfg.budget.latency_ms
        if budget >= start:
            log(f"[yellow]prune: the model already runs in {start:.3g} ms, within the {budget:g} ms budget[/]")
    else:
        cost, rounds = non_embedding_params, BISECTION_ROUNDS
        start = non_embedding_params(model)
        budget = int(cfg.budget.params * start)
    steps: list[dict] = []
    work = ctx.work_dir(key)
    done = _last_step(work)
    if done is not None:  # resume: the model as the last finished step left it
        k, folder = done
        model = load_weights(build_model(json.loads((folder / "spec.json").read_text())), folder).eval()
        steps = json.loads((folder / "steps.json").read_text())
        log(f"prune: resuming after step {k} of {cfg.steps}")
    share = min(1.0, budget / start)  # of the starting cost
    for k in range(len(steps) + 1, cfg.steps + 1):
        target = start * share ** (k / cfg.steps) if k < cfg.steps else budget  # geometric, the last on the budget
        model.eval()
        ratio = _ratio_for(model, target, cost, example, cfg, family, importance_loss, round_to, rounds) \
            if share < 1.0 else 0.0
        if ratio > 0:
            prune_structured(model, example, cfg, family, importance_loss, ratio=ratio, round_to=round_to)
        step = {"step": k, "ratio": ratio, "budget": "latency_ms" if cost is latency else "params",
                "target": target, "non_embedding_params": non_embedding_params(model),
                "architecture": architecture_summary(model),
                **({"latency_ms": latency(model), "latency_case": latency.case} if latency is not None else {}),
                "dev_accuracy_before_recovery": evaluate(model, ctx, f"prune step {k}", splits=("dev",))["dev_accuracy"]}
        if cfg.recovery is not None:
            step["recovery"] = distill_fit(model, cfg.recovery, ctx, f"prune recovery {k}/{cfg.steps}", f"{key}-step{k}")
        step["dev_accuracy"] = evaluate(model, ctx, f"prune step {k}", splits=("dev",))["dev_accuracy"]
        steps.append(step)
        log(f"prune step {k}/{cfg.steps}: ratio {ratio:.3f}, non-embedding parameters {step['non_embedding_params']:,}"
            + (f", {step['latency_ms']:.3g} ms" if "latency_ms" in step else "")
            + f" (target {target:,.4g}{' ms' if cost is latency else ''}); dev "
            f"{step['dev_accuracy_before_recovery']:.2%} -> {step['dev_accuracy']:.2%} after recovery")
        _save_step(work, k, model, parent, steps, ctx)
    return model, steps


def _save_step(work: Path, k: int, model, parent, steps: list[dict], ctx: Context) -> None:
    """The step's spec and weights (shapes change between steps), written by rank 0 only."""
    if ctx.runtime.is_main:
        folder = work / f"step-{k:02d}"
        tmp = work / f".tmp-step-{k:02d}"
        tmp.mkdir(parents=True, exist_ok=True)
        save_weights(model, tmp)
        (tmp / "spec.json").write_text(json.dumps(make_spec(model, base_of(parent.spec))))
        (tmp / "steps.json").write_text(json.dumps(steps))
        tmp.rename(folder)
    ctx.runtime.barrier()


def _last_step(work: Path) -> tuple[int, Path] | None:
    found = sorted(work.glob("step-*")) if work.is_dir() else []
    return (int(found[-1].name.split("-")[1]), found[-1]) if found else None
