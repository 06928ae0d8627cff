"""What a pruning budget counts, and what each pruning step reports: parameters, MACs, file size, latency.

A candidate model is exported once to FP32 ONNX (`Candidate`), and every figure but the parameter count
is read from that export, with the graph counters and the timing protocol the profile stage uses:

- MACs: multiply-adds of the matrix products (Linear/Conv layers and the attention score/context products)
  at batch 1 and sequence S (128, or the data's max_length if shorter), from `devices.graph_costs` — the
  one FLOP counter of edgekd, so a MAC budget and the profile report count the same thing;
- host latency: fresh process, 1 thread, batch 1, sequence S, the quietest of LATENCY_ROUNDS rounds;
- estimated latency on a profile that is not present: `devices.estimate` (the profile stage's estimator),
  labelled as estimated, with the estimator's measured error on the host;
- INT8 latency of a step: onnxruntime's dynamic quantization of the step's FP32 export, timed like FP32 —
  a stand-in for the QAT model that comes later (the export stage times the real one).

Why FP32 latency steers the budget and not the shipped INT8: pruning comes before QAT, and INT8 latency
tracks FP32 latency of the same widths (the export stage measures their ratio).
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import EdgekdError
from ..train.context import Context
from .structured import non_embedding_params

LATENCY_FEEDS = 8
LATENCY_RUNS = 30
LATENCY_ROUNDS = 2
MATMUL_CLASSES = ("fp32_matmul", "int8_matmul")


@dataclass
class Candidate:
    """A model exported to a temporary FP32 ONNX file, and the figures read from it."""

    model: nn.Module
    path: Path
    probe: "Probe"

    def macs(self) -> int:
        from ..devices.graph_costs import graph_costs

        return int(sum(c.flops for c in graph_costs(self.path, self.probe.seq_len) if c.cls in MATMUL_CLASSES) // 2)

    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6

    def host_ms(self, path: Path | None = None) -> float:
        from ..devices.latency import combine_rounds, measure_latency

        # the quietest of LATENCY_ROUNDS fresh-process rounds: interference only ever slows a round down
        return combine_rounds([measure_latency(path or self.path, self.probe.feeds, 1, warmup=5,
                                               runs=self.probe.runs) for _ in range(LATENCY_ROUNDS)])["p50"]

    def estimated_ms(self, profile) -> float:
        from ..devices.estimate import estimate_latency

        return estimate_latency(self.path, profile, self.probe.seq_len, 1, self.probe.calibration)["ms"]

    def int8_host_ms(self) -> float:
        from ..devices.runtime import dynamic_int8

        return self.host_ms(dynamic_int8(self.path, self.path.with_name("model-int8-dynamic.onnx")))


class Probe:
    """Exports candidates of one run at the budget's case: batch 1, sequence S (or the image), 1 thread."""

    def __init__(self, ctx: Context, runs: int = LATENCY_RUNS):
        from ..devices.feeds import encoded_feeds
        from ..devices.profiles import load_profile
        from ..models.onnx_graph import example_inputs

        self.seq_len = min(128, ctx.recipe.data.max_length)
        self.is_text = ctx.task != "image-classification"
        self.inputs = example_inputs(ctx.task, ctx.data.preprocess, self.seq_len)
        self.feeds = encoded_feeds(ctx.encoded("train", LATENCY_FEEDS), list(self.inputs), self.seq_len,
                                   limit=LATENCY_FEEDS)
        self.runs = runs
        self.case = f"batch 1, {'sequence ' + str(self.seq_len) + ', ' if self.is_text else ''}1 thread"
        self._calibration: dict | None = None
        # host latency is reported per step only where the run measures the host (its first profile)
        self.host_measured = bool(ctx.recipe.profiles) and load_profile(ctx.recipe.profiles[0]).measured

    @property
    def calibration(self) -> dict:
        if self._calibration is None:
            from ..devices.estimate import load_calibration

            self._calibration = load_calibration()
        return self._calibration

    @contextmanager
    def exported(self, model: nn.Module):
        from ..models.onnx_graph import LogitsOnly, torch_to_onnx

        with tempfile.TemporaryDirectory(prefix="edgekd-prune-") as tmp:
            path = Path(tmp) / "model.onnx"
            torch_to_onnx(LogitsOnly(model.eval(), list(self.inputs)), self.inputs, path, 17)
            yield Candidate(model, path, self)


@dataclass
class Budget:
    """One budget: what it counts on a model, its limit, and how it is labelled."""

    name: str            # params | macs | latency_ms
    limit_of: Callable[[float], float]  # the starting cost -> the limit
    probe: Probe
    read: Callable[[Candidate], float] | None  # the figure read from the model's export; None: its parameters
    figure: str | None   # the key of `step_figures` that holds this cost (None: parameters)
    rounds: int          # bisection rounds (a measured probe is dear: fewer)
    unit: str = ""
    profile: object = None         # the DeviceProfile a latency budget is measured or estimated on
    estimated: dict | None = None  # for an estimated latency: the profile's name and the estimator's error

    def cost(self, model: nn.Module) -> float:
        if self.read is None:
            return non_embedding_params(model)
        with self.probe.exported(model) as c:
            return self.read(c)


def make_budget(budget_cfg, ctx: Context, probe: Probe, bisection_rounds: int, latency_rounds: int) -> Budget:
    """The budget a recipe's `prune.budget` asks for, with the probe that counts it."""
    if budget_cfg.params is not None:
        return Budget("params", lambda start: int(budget_cfg.params * start), probe, None, None, bisection_rounds)
    if budget_cfg.macs is not None:
        return Budget("macs", lambda start: budget_cfg.macs, probe, Candidate.macs, "macs", bisection_rounds, " MACs")
    profile = _budget_profile(budget_cfg, ctx)
    limit = lambda start: budget_cfg.latency_ms  # noqa: E731
    if profile.measured:
        return Budget("latency_ms", limit, probe, Candidate.host_ms, "latency_ms", latency_rounds, " ms", profile)
    from ..devices.anchors import estimate_trust

    # an estimate is deterministic and cheap: bisect as finely as for parameters
    return Budget("latency_ms", limit, probe, lambda c: c.estimated_ms(profile), "estimated_latency_ms",
                  bisection_rounds, " ms (estimated)", profile,
                  {"profile": profile.name, **estimate_trust(profile.name, probe.calibration)})


def _budget_profile(budget_cfg, ctx: Context):
    from ..devices.profiles import load_profile

    name = budget_cfg.profile or (ctx.recipe.profiles[0] if ctx.recipe.profiles else None)
    if name is None:
        raise EdgekdError("prune.budget.latency_ms needs a device profile to measure or estimate on: give "
                          "prune.budget.profile (e.g. host-cpu) or list profiles in the recipe.")
    return load_profile(name)


def step_figures(model: nn.Module, probe: Probe, budget: Budget, searched: float | None = None) -> dict:
    """What the step report shows of a pruned model: MACs, FP32 ONNX size, host latency FP32 and INT8 (when
    the host is measured) and, for a budget on an estimated profile, the estimate it was held to.

    searched: the cost the budget's bisection measured for this very model. For a host latency budget the step's
    latency is the quietest of its rounds here and there — the protocol's own rule (interference only ever slows
    a round down): a single fresh pair of rounds ran 20% above the search's on a busy CI machine."""
    with probe.exported(model) as c:
        figures = {"macs": c.macs(), "onnx_fp32_mb": round(c.size_mb(), 3), "latency_case": probe.case}
        if probe.host_measured or budget.figure == "latency_ms":
            figures["latency_ms"] = c.host_ms()
            if searched is not None and budget.figure == "latency_ms":
                figures["latency_ms"] = min(figures["latency_ms"], searched)
            figures["int8_dynamic_latency_ms"] = c.int8_host_ms()
        if budget.estimated is not None:
            figures["estimated_latency_ms"] = c.estimated_ms(budget.profile)
            figures["estimated_on"] = budget.estimated["profile"]
    figures["cost"] = figures[budget.figure] if budget.figure else non_embedding_params(model)
    return figures
