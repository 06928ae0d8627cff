"""The `prune` stage: structured pruning to a ratio, or step by step to a budget, each step recovered by distillation.

`prune.hidden_ratio` narrows the residual stream first (in equal shares over the steps with a budget), then
heads and FFN channels are pruned for the rest. With `prune.budget`, the stage runs `prune.steps` rounds: prune the share that brings the model's
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
from ..errors import EdgekdError
from ..models.hf import logits_of
from ..models.hf_folder import hf_folder_blocker, save_hf_folder
from ..models.spec import (architecture_summary, base_of, build_model, hidden_width, load_model_from_artifact,
                           load_weights, make_spec, save_weights)
from ..progress import log
from ..train.context import Context
from ..train.distiller import distill_fit, evaluate, needs_live_teacher
from ..train.losses import logit_kd_loss
from .costs import Probe, make_budget, step_figures
from .importance import read_once
from .layers import base_with_depth, drop_layers
from ..models.families import family_gaps
from ..models.support import prune_refusals
from .structured import below_minimum, hidden_keep, non_embedding_params, prune_hidden, prune_structured

IMPORTANCE_EXAMPLES = 32
BISECTION_ROUNDS = 12
MAX_RATIO = 0.95  # the bisection's upper end: past it torch-pruning leaves layers of a channel or two
# A latency budget measures every bisection probe (an ONNX export and a timed run in a fresh process), so fewer
# rounds: 7 halvings of [0, 0.95] resolve the ratio to 0.007, finer than the run-to-run spread of a latency.
LATENCY_BISECTION_ROUNDS = 7


def run_prune(cfg: PruneConfig, parent, ctx: Context, out: Path, key: str) -> dict:
    model = load_model_from_artifact(parent)
    before = architecture_summary(model)
    # The first examples of the train split: a trace input for torch-pruning and the batch Taylor
    # importance is scored on (only these are tokenized and run through the teacher).
    train = ctx.encoded("train", IMPORTANCE_EXAMPLES)
    example = train.batch(np.arange(len(train)))

    teacher, labels = torch.from_numpy(ctx.teacher_logits("train", IMPORTANCE_EXAMPLES)), torch.from_numpy(train.labels)

    def importance_loss(m):
        # gradient importances and layer dropping score the distillation objective the student is trained with
        return logit_kd_loss(logits_of(m, example), teacher, labels, 2.0, 0.5)

    round_to = _width_multiple(cfg, ctx)
    family = parent.spec["family"]
    metrics: dict = {"params_before": before["params"], "before": before,
                     "non_embedding_params_before": non_embedding_params(model), "width_multiple": round_to}
    if family != "hf" and cfg.transformer_only():
        raise EdgekdError(f"{cfg.transformer_only()[0]}; this {family} model has none: set it to 0.")
    if family == "hf" and (refused := prune_refusals(family_gaps(model), cfg)):
        raise EdgekdError(" ".join(refused))
    if cfg.budget is None:
        if cfg.drop_layers:
            metrics["layers"] = _drop_layers(model, cfg, importance_loss)
        model.eval()
        if cfg.hidden_ratio:
            _narrow_hidden(model, example, cfg, importance_loss, hidden_keep(hidden_width(model), cfg.hidden_ratio,
                                                                             round_to))
        prune_structured(model, example, cfg, family, importance_loss, round_to=round_to)
        narrow = below_minimum(model, cfg)
        if narrow:
            raise EdgekdError(f"prune.ratio = {cfg.ratio:g} leaves {'; '.join(narrow)}, below prune.min_heads = "
                              f"{cfg.min_heads} / prune.min_channels = {cfg.min_channels}: lower the ratio (or "
                              "prune.head_ratio), or the minimum widths.")
        if cfg.recovery is not None:
            metrics["recovery"] = _recover(model, parent, cfg, ctx, "prune recovery", key, metrics.get("layers"))
    else:
        model, metrics["steps"], layers = _prune_to_budget(model, parent, cfg, ctx, key, example, importance_loss,
                                                           round_to)
        if layers:
            metrics["layers"] = layers
        last = metrics["steps"][-1]
        if last["budget"] != "params":  # recovery keeps the shapes: the last step's cost is the model's
            metrics["budget"] = {last["budget"]: last["target"], "reached": last["cost"],
                                 "off_by": last["cost"] / last["target"] - 1, "case": last["latency_case"],
                                 **({"estimated": last["estimated"]} if "estimated" in last else {})}
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
    return {"metrics": metrics, "spec": make_spec(model, base_with_depth(base_of(parent.spec), model))}


def _recover(model, parent, cfg: PruneConfig, ctx: Context, desc: str, work_key: str, layers: dict | None) -> dict:
    """The run's distillation on the pruned model. With `recovery.layer_teacher: unpruned` its intermediate terms
    match the student as it was before pruning: each layer its own unpruned self (those drop_layers kept, too)."""
    rec = cfg.recovery
    if rec.layer_teacher != "unpruned" or not needs_live_teacher(rec):
        return distill_fit(model, rec, ctx, desc, work_key)
    if layers and rec.layer_map is None:
        kept = [i for i in range(layers["layers_before"]) if i not in layers["dropped"]]
        rec = rec.model_copy(update={"layer_map": kept})
    return distill_fit(model, rec, ctx, desc, work_key, layer_teacher=load_model_from_artifact(parent))


def _drop_layers(model, cfg: PruneConfig, importance_loss) -> dict:
    """Whole layers first: what is left is then pruned in width (and counts toward a budget)."""
    dropped = drop_layers(model, cfg.drop_layers, importance_loss)
    log(f"prune: dropped layers {dropped['dropped']} of {dropped['layers_before']} (the loss rose least without them)")
    return dropped


def _narrow_hidden(model, example, cfg: PruneConfig, importance_loss, keep: int) -> None:
    width = hidden_width(model)
    prune_hidden(model, example, cfg, keep, importance_loss)
    log(f"prune: hidden width {width} -> {hidden_width(model)}")


def _width_multiple(cfg: PruneConfig, ctx: Context) -> int:
    if cfg.width_multiple is not None:
        return cfg.width_multiple
    if not ctx.recipe.profiles:
        return 1
    from ..devices.profiles import load_profile

    return load_profile(ctx.recipe.profiles[0]).width_multiple


def _ratio_for(model, target: float, cost, example, cfg: PruneConfig, family: str, scores, round_to: int,
               rounds: int = BISECTION_ROUNDS, seen: dict | None = None) -> float:
    """The smallest ratio whose pruning brings cost(model) to <= target (bisection on copies, each scored with
    `scores`: the importance loss, or what it read on `model`, importance.read_once); `seen` collects the cost
    measured at each ratio probed."""
    def probe(ratio: float) -> tuple[list[str], float | None]:
        trial = copy.deepcopy(model).eval()
        prune_structured(trial, example, cfg, family, scores, ratio=ratio, round_to=round_to)
        narrow = below_minimum(trial, cfg)
        c = None if narrow else cost(trial)
        if seen is not None and c is not None:
            seen[ratio] = c
        return narrow, c

    lo, hi = 0.0, MAX_RATIO
    best, least, narrowest = None, None, []
    for _ in range(rounds):
        mid = (lo + hi) / 2
        narrow, c = probe(mid)
        if narrow:  # too much for the minimum widths: look lower
            hi, narrowest = mid, narrow
        elif c <= target:
            hi = best = mid
        else:
            lo, least = mid, c
    if best is None:  # no probe met the target: does the most pruning allowed?
        narrow, c = probe(hi)
        if not narrow and c <= target:
            return hi
        narrowest, least = narrow or narrowest, c if c is not None else least
        raise EdgekdError(
            f"prune.budget cannot be reached: this step's target is {target:,.4g}, and the most pruning allows — at "
            f"most prune.max_layer_ratio = {cfg.max_layer_ratio:g} of any layer, widths in multiples of {round_to}, "
            f"at least prune.min_heads = {cfg.min_heads} heads and prune.min_channels = {cfg.min_channels} channels "
            f"per layer{' (' + '; '.join(narrowest) + ' went below them)' if narrowest else ''} — still costs "
            f"{least if least is not None else float('nan'):,.4g}. What pruning cannot shrink (embeddings, "
            "LayerNorms, per-operator overheads) sets the floor: give a larger budget, or lower the minimum widths.")
    return best


def _prune_to_budget(model, parent, cfg: PruneConfig, ctx: Context, key: str, example, importance_loss,
                     round_to: int):
    family = parent.spec["family"]
    probe = Probe(ctx)
    budget = make_budget(cfg.budget, ctx, probe, BISECTION_ROUNDS, LATENCY_BISECTION_ROUNDS)
    start = budget.cost(model)
    limit = budget.limit_of(start)
    if limit >= start:
        log(f"[yellow]prune: the model already costs {start:,.4g}{budget.unit}, within the budget of "
            f"{limit:,.4g}{budget.unit}[/]")
    steps: list[dict] = []
    width = hidden_width(model)  # the unpruned hidden width: each step's share of prune.hidden_ratio is of it
    work = ctx.work_dir(key)
    done = _last_step(work)
    if done is not None:  # resume: the model as the last finished step left it
        k, folder = done
        model = load_weights(build_model(json.loads((folder / "spec.json").read_text())), folder).eval()
        steps = json.loads((folder / "steps.json").read_text())
        log(f"prune: resuming after step {k} of {cfg.steps}")
    layers = steps[0].get("layers") if steps else None
    if cfg.drop_layers and not steps:  # after the start is counted: the budget is a share of the whole model
        layers = _drop_layers(model, cfg, importance_loss)
    share = min(1.0, limit / start)  # of the starting cost
    for k in range(len(steps) + 1, cfg.steps + 1):
        target = start * share ** (k / cfg.steps) if k < cfg.steps else limit  # geometric, the last on the budget
        model.eval()
        if cfg.hidden_ratio:  # the hidden width narrows in equal shares, the bisection finds heads and FFN for the rest
            _narrow_hidden(model, example, cfg, importance_loss, hidden_keep(width, cfg.hidden_ratio * k / cfg.steps,
                                                                             round_to))
        cut = (layers is not None and k == 1) or cfg.hidden_ratio > 0  # the layers or hidden cut may meet the target
        fits = share >= 1.0 or (cut and budget.cost(model) <= target)
        seen: dict[float, float] = {}
        ratio = 0.0
        if not fits:
            # every trial of the bisection, and the step itself, prunes these weights: their gradients are read once
            scores = read_once(cfg.importance, model, importance_loss)
            ratio = _ratio_for(model, target, budget.cost, example, cfg, family, scores, round_to, budget.rounds, seen)
            if ratio > 0:
                prune_structured(model, example, cfg, family, scores, ratio=ratio, round_to=round_to)
        step = {"step": k, "ratio": ratio, "budget": budget.name, "target": target,
                **({"layers": layers} if layers and k == 1 else {}),
                **({"estimated": budget.estimated} if budget.estimated else {}),
                "non_embedding_params": non_embedding_params(model),
                "architecture": architecture_summary(model), **step_figures(model, probe, budget, seen.get(ratio)),
                "dev_accuracy_before_recovery": evaluate(model, ctx, f"prune step {k}", splits=("dev",))["dev_accuracy"]}
        # The recovered model is kept even when its dev accuracy is below the pruned model's before recovery: undoing
        # such a recovery cost test accuracy on the quick benchmark, where dev does not tell a recovery that helps
        # from one that hurts (docs/pruning.md).
        if cfg.recovery is not None:  # its checkpoints inside the stage's work folder: removed with it when done
            step["recovery"] = _recover(model, parent, cfg, ctx, f"prune recovery {k}/{cfg.steps}",
                                        f"{key}/recovery-step{k}", layers)
        step["dev_accuracy"] = evaluate(model, ctx, f"prune step {k}", splits=("dev",))["dev_accuracy"]
        steps.append(step)
        log(f"prune step {k}/{cfg.steps}: ratio {ratio:.3f}, non-embedding parameters {step['non_embedding_params']:,}"
            + (f", {step['macs'] / 1e6:,.1f}M MACs" if "macs" in step else "")
            + (f", {step['latency_ms']:.3g} ms" if "latency_ms" in step else "")
            + f" ({budget.name} {step['cost']:,.4g}{budget.unit}, target {target:,.4g}); dev "
            f"{step['dev_accuracy_before_recovery']:.2%} -> {step['dev_accuracy']:.2%} after recovery")
        _save_step(work, k, model, parent, steps, ctx)
    return model, steps, layers


def _save_step(work: Path, k: int, model, parent, steps: list[dict], ctx: Context) -> None:
    """The step's spec and weights (shapes change between steps), written by rank 0 only."""
    if ctx.runtime.is_main:
        folder = work / f"step-{k:02d}"
        tmp = work / f".tmp-step-{k:02d}"
        tmp.mkdir(parents=True, exist_ok=True)
        save_weights(model, tmp)
        (tmp / "spec.json").write_text(json.dumps(make_spec(model, base_with_depth(base_of(parent.spec), model))))
        (tmp / "steps.json").write_text(json.dumps(steps))
        tmp.rename(folder)
    ctx.runtime.barrier()


def _last_step(work: Path) -> tuple[int, Path] | None:
    found = sorted(work.glob("step-*")) if work.is_dir() else []
    return (int(found[-1].name.split("-")[1]), found[-1]) if found else None
