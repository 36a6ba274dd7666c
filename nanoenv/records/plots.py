"""Plots of runs: loss curves and the frontier on the harness clock (the time the reward
charges), with the record book drawn in. Needs matplotlib (``nanoenv[plots]``)."""

from __future__ import annotations

import itertools
from pathlib import Path

from nanoenv.judging.timing import harness_clock
from nanoenv.types import RunResult


def curve_points(result: RunResult, allowance_s: float = 0.0) -> tuple[list, list]:
    """(time, val loss) and (time, train loss) of a run on the harness clock."""
    clock = harness_clock(result.curve, allowance_s)
    val = [(t, p.val_loss) for t, p in clock if p.val_loss is not None]
    train = [(t, p.train_loss) for t, p in clock if p.train_loss is not None]
    return val, train


def plot_curves(
    results: list[tuple[str, RunResult]],
    path: Path,
    *,
    target: float | None = None,
    title: str = "",
    allowance_s: float = 0.0,
) -> Path:
    """Draw val loss (and, faintly, train loss) against the harness clock, one line per run.

    Args:
        results: (label, result) pairs; runs without a curve are left out.
        path: Where to write the PNG.
        target: Draw the target val loss as a dashed line.
        title: The figure's title.
        allowance_s: The task's untimed warm-up allowance (``timing.untimed_allowance_s``).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for label, result in results:
        val, train = curve_points(result, allowance_s)
        if not val and not train:
            continue
        (line,) = (
            ax.plot(*zip(*val, strict=True), marker="o", markersize=3, label=f"{label} (val)")
            if val
            else (None,)
        )
        if train:
            color = line.get_color() if line is not None else None
            ax.plot(*zip(*train, strict=True), alpha=0.3, linewidth=1, color=color)
    if target is not None:
        ax.axhline(target, linestyle="--", color="gray", linewidth=1, label=f"target {target:.4f}")
    ax.set_xlabel("time on the harness clock, the reward's (s)")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    # Early losses dwarf the interesting part; show from the target's neighbourhood upward.
    lows = [p.val_loss for _, r in results for p in r.curve if p.val_loss is not None]
    if lows and target is not None:
        finite = [x for x in lows if x == x and x != float("inf")]
        if finite:
            ax.set_ylim(min(min(finite), target) - 0.05, min(max(finite), target + 1.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_frontier(
    points: list[tuple[str, float, float]],
    path: Path,
    *,
    target: float | None = None,
    title: str = "",
    records: list[tuple[str, float, float]] | None = None,
) -> Path:
    """Every run as a point of (training time, val loss), the Pareto frontier as a staircase,
    and the record book's entries as a second one.

    Args:
        points: (label, time in seconds, val loss) of each run.
        records: (label, time, val loss) of each record, as its claim measured them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nanoenv.records.store import pareto

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    rows = [{"label": lab, "t": t, "loss": v} for lab, t, v in points if t == t and v == v]
    ax.scatter(
        [r["t"] for r in rows],
        [r["loss"] for r in rows],
        s=18,
        color="tab:gray",
        alpha=0.7,
        label="runs",
    )
    _staircase(ax, pareto(rows, time_key="t", loss_key="loss"), "tab:red", "frontier")
    book = [{"label": lab, "t": t, "loss": v} for lab, t, v in records or [] if t == t and v == v]
    if book:
        ax.scatter([r["t"] for r in book], [r["loss"] for r in book], s=30, marker="D",
                   color="black", label="record book")  # fmt: skip
        _staircase(ax, pareto(book, time_key="t", loss_key="loss"), "black", None)
    if target is not None:
        ax.axhline(target, linestyle="--", color="gray", linewidth=1, label=f"target {target:.4f}")
    ax.set_xlabel("training time by the harness clock (s)")
    ax.set_ylabel("val loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _staircase(ax, front: list[dict], color: str, label: str | None) -> None:
    """A frontier drawn as a staircase (each point holds until beaten), its points named."""
    if not front:
        return
    xs, ys = [front[0]["t"]], [front[0]["loss"]]
    for a, b in itertools.pairwise(front):
        xs += [b["t"], b["t"]]
        ys += [a["loss"], b["loss"]]
    ax.plot(xs, ys, color=color, linewidth=1.5, label=label)
    for r in front:
        ax.annotate(r["label"], (r["t"], r["loss"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")  # fmt: skip
