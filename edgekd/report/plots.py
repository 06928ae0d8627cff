"""Report figures as PNG bytes (matplotlib, Agg: no display needed, same output everywhere)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: a headless CI machine has no display
import matplotlib.pyplot as plt  # noqa: E402

from .recommend import pareto  # noqa: E402

_MEASURED, _ESTIMATED, _FRONTIER = "#1f77b4", "#d62728", "#2ca02c"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)  # figures are not garbage-collected while pyplot holds them
    return buf.getvalue()


def pareto_png(device: str, rows: list[dict], max_latency_ms: float | None = None,
               min_accuracy: float | None = None) -> bytes:
    """Accuracy vs p50 latency of one device's candidates (rows from recommend.candidates).

    Measured points are filled, estimated points hollow and labelled "(estimated)"; the line is
    the Pareto frontier (nothing else is both faster and more accurate); dotted lines are the
    constraints when given.
    """
    pts = [r for r in rows if r["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(5.6, 3.9))
    if not pts:
        ax.text(0.5, 0.5, "no candidate with a known accuracy", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _png(fig)
    xy = [(r["p50_ms"], 100 * r["accuracy"]) for r in pts]
    front = pareto(xy)
    fx, fy = [xy[i][0] for i in front], [xy[i][1] for i in front]
    # A step line: between two frontier points the best reachable accuracy is the slower one's only
    # once its latency is allowed.
    ax.step(fx, fy, where="post", color=_FRONTIER, lw=1.5, zorder=1)
    # Rings too: a frontier of one point draws no line.
    ax.scatter(fx, fy, s=180, facecolors="none", edgecolors=_FRONTIER, linewidths=1.5, zorder=2,
               label="Pareto frontier (ringed)")
    for (x, y), r in zip(xy, pts):
        est = r["estimated"]
        if est and r["estimator_error"]:  # the estimate's own error bar, so nobody reads it as exact
            ax.errorbar([x], [y], xerr=[[x * r["estimator_error"]], [x * r["estimator_error"]]], fmt="none",
                        ecolor=_ESTIMATED, elinewidth=1, capsize=3, zorder=2)
        ax.scatter([x], [y], s=60, zorder=3, edgecolors=_ESTIMATED if est else _MEASURED,
                   facecolors="none" if est else _MEASURED, linewidths=1.6)
    _annotate(ax, xy, pts)
    xs = [x for x, _ in xy]
    if max(xs) / max(min(xs), 1e-9) > 20:  # a teacher 100x slower than the student squashes a linear axis
        ax.set_xscale("log")
    ax.margins(x=0.25, y=0.15)  # room for the point labels
    if ax.get_xscale() == "linear":
        ax.set_xlim(left=0)  # latency is never negative; the margin must not suggest it
    # Constraint lines must not rescale the axes (a 100 ms limit would squash 0.1 ms points into a
    # corner): the view stays on the data, and a limit outside it says so in the legend.
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    if max_latency_ms is not None:
        ax.axvline(max_latency_ms, color="#888", ls=":", lw=1,
                   label=f"max latency {max_latency_ms:g} ms" + _off(max_latency_ms, xlim, "right", "left"))
    if min_accuracy is not None:
        y = 100 * min_accuracy
        ax.axhline(y, color="#888", ls="--", lw=1, label=f"min accuracy {y:g}%" + _off(y, ylim, "above", "below"))
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    # Legend proxies so that both marker kinds are explained even when only one is present.
    ax.scatter([], [], s=60, color=_MEASURED, label="measured")
    ax.scatter([], [], s=60, facecolors="none", edgecolors=_ESTIMATED, label="estimated (hollow)")
    case = ", ".join(dict.fromkeys(r["case"] for r in pts))  # runs of different tasks use different cases
    ax.set_title(f"Pareto: accuracy vs latency on {device} ({case})", fontsize=10)
    ax.set_xlabel("p50 latency, ms" + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("test accuracy, %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)
    return _png(fig)


def _off(v: float, lim: tuple, high: str, low: str) -> str:
    return f" (off the chart, {high})" if v > lim[1] else f" (off the chart, {low})" if v < lim[0] else ""


def _annotate(ax, xy, pts) -> None:
    """One label per position (identical runs share a point), staggered up/down so neighbours stay readable."""
    groups: dict[tuple, list[dict]] = {}
    for (x, y), r in zip(xy, pts):
        groups.setdefault((float(f"{x:.3g}"), round(y, 2)), []).append(r)
    for i, ((x, y), rs) in enumerate(sorted(groups.items())):
        est = all(r["estimated"] for r in rs)
        text = "\n".join(r["label"] + (" (estimated)" if r["estimated"] else "") for r in rs)
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, 5 if i % 2 == 0 else -6),
                    va="bottom" if i % 2 == 0 else "top", fontsize=7, color=_ESTIMATED if est else "#222")


def op_breakdown_png(title: str, op_ms: dict[str, float], top: int = 12) -> bytes:
    """Horizontal bars of per-operator latency, largest first; the tail is summed into "other"."""
    # Keys starting with "_" are bookkeeping (e.g. "_total"), not operators.
    items = sorted(((k, float(v)) for k, v in op_ms.items() if isinstance(v, (int, float)) and not k.startswith("_")),
                   key=lambda kv: -kv[1])
    if len(items) > top:
        items = items[:top - 1] + [(f"other ({len(items) - top + 1} ops)", sum(v for _, v in items[top - 1:]))]
    total = sum(v for _, v in items) or 1.0
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(items) + 1.2))
    names, vals = [k for k, _ in items][::-1], [v for _, v in items][::-1]
    ax.barh(names, vals, color=_MEASURED)
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.3g} ms ({100 * v / total:.0f}%)", va="center", fontsize=7.5)
    ax.set_xlabel("latency, ms (measured, host CPU)")
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.3)
    ax.tick_params(axis="y", labelsize=8)
    return _png(fig)


def prune_steps_png(title: str, steps: list[dict], start_params: int) -> bytes:
    """A budget run's trajectory: dev accuracy against the non-embedding parameters kept, before (hollow) and after
    (filled) each step's recovery; each point labelled with its step and, when measured, its FP32 host latency."""
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    kept = [100 * s["non_embedding_params"] / start_params for s in steps]
    before = [100 * s["dev_accuracy_before_recovery"] for s in steps]
    after = [100 * s["dev_accuracy"] for s in steps]
    ax.plot(kept, after, "-o", color=_MEASURED, label="after recovery")
    ax.plot(kept, before, "o", mfc="none", color=_ESTIMATED, label="before recovery")
    for s, x, y in zip(steps, kept, after):
        ms = f", {s['latency_ms']:.3g} ms" if s.get("latency_ms") is not None else ""
        ax.annotate(f"step {s['step']}{ms}", (x, y), textcoords="offset points", xytext=(4, 6), fontsize=7.5)
    ax.invert_xaxis()  # pruning moves right: fewer parameters kept
    ax.set_xlabel("non-embedding parameters kept, %")
    ax.set_ylabel("dev accuracy, %")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)
