"""An episode's scientific delta: the best loss it attained and the frontier it pushed.

"Progress over Points" evaluates by the best-attained loss and the efficiency frontier. After
every step the episode's runs that count (verified ones; under ``verify="none"``, those whose
log was trusted, and the summary says so) give:

- ``best_val_loss``: the lowest loss, and the step that reached it;
- two Pareto frontiers, (harness time, loss) and (training tokens, loss): the runs no other run
  beats on both axes, cheapest first;
- their hypervolumes: the area the frontier dominates inside a reference box, one number for
  "how far did this episode move the frontier". The box's corner is the baseline's time (or
  tokens) x ``1 + X_MARGIN`` and its loss + ``LOSS_MARGIN`` nats; the cost axis is measured in
  units of that corner, so the hypervolume is in nats and a task's episodes compare. Both
  frontiers start from the baseline (step 0), which alone scores
  ``X_MARGIN / (1 + X_MARGIN) x LOSS_MARGIN`` (0.0045).

The loss is the one the reward reads (verified, on hidden val where the task scores there) and
the time is the harness's clock, never the script's: nothing the script prints moves these.
The token counts are the script's own log (as for the steps objective), so the tokens frontier
is a measurement to read, and no reward reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nanoenv.judging.steps import val_by_tokens
from nanoenv.types import Outcome, RunResult

# What trajectory.jsonl and runs.sqlite keep of it each step (the frontiers are in info).
PROGRESS_KEYS = ("best_val_loss", "best_step", "hypervolume", "hypervolume_tokens")
X_MARGIN = 0.10  # the reference corner: 10 % slower than the baseline ...
LOSS_MARGIN = 0.05  # ... and 0.05 nats worse
# What a new run must beat the frontier by to earn the frontier reward: seed noise of the loss
# (a few thousandths on the tiny track) and the harness clock's run-to-run spread.
LOSS_NOISE = 0.005
TIME_NOISE = 0.05


@dataclass(frozen=True)
class Reference:
    """The corner of the hypervolume box: the baseline's cost and loss, with the margins."""

    time_s: float
    tokens: float | None
    val_loss: float

    @classmethod
    def from_baseline(cls, time_s: float, tokens: int | None, val_loss: float) -> Reference:
        return cls(
            time_s=time_s * (1 + X_MARGIN),
            tokens=tokens * (1 + X_MARGIN) if tokens else None,
            val_loss=val_loss + LOSS_MARGIN,
        )


def run_tokens(result: RunResult) -> int | None:
    """The training tokens at a run's last val point, as its log reports them."""
    return max(val_by_tokens(result.curve), default=None)


def counts(result: RunResult, trusted_log: bool) -> bool:
    """Whether a run is on the record: it trained to a finite loss, and was verified (or the
    env trusts logs, ``verify="none"``)."""
    return (
        result.outcome in (Outcome.OK, Outcome.MISSED_TARGET)
        and result.val_loss is not None
        and math.isfinite(result.val_loss)
        and (result.verdict.verified or trusted_log)
    )


def frontier(points: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """The (cost, loss, step) points no other beats on both, cheapest first."""
    front: list[tuple[float, float, int]] = []
    for p in sorted(points):
        if not front or p[1] < front[-1][1]:
            front.append(p)
    return front


def hypervolume(front: list[tuple[float, float, int]], ref_cost: float, ref_loss: float) -> float:
    """The area a frontier dominates inside the box up to (ref_cost, ref_loss), with cost in
    units of ref_cost: nats."""
    inside = [(c / ref_cost, loss) for c, loss, _ in front if c < ref_cost and loss < ref_loss]
    area = 0.0
    for k, (c, loss) in enumerate(inside):
        nxt = inside[k + 1][0] if k + 1 < len(inside) else 1.0
        area += (nxt - c) * (ref_loss - loss)
    return area


def time_points(results: list[RunResult], trusted_log: bool) -> list[tuple[float, float, int]]:
    """(harness time, loss, step) of the runs that count."""
    return [(r.train_time_s, r.val_loss, r.step) for r in results  # type: ignore[misc]
            if counts(r, trusted_log) and r.train_time_s]  # fmt: skip


def added_hypervolume(
    prior: list[tuple[float, float, int]], new: tuple[float, float, int], ref: Reference
) -> float:
    """What ``new`` adds to the hypervolume of ``prior``'s frontier, once it is made to beat
    the frontier by more than noise: its loss + LOSS_NOISE, its time x (1 + TIME_NOISE). So a
    re-run of a script on the frontier, or a cosmetic edit of it, earns nothing from a lucky
    seed; only a run that is better than the noise moves the frontier."""
    cost, loss, step = new
    handicapped = (cost * (1 + TIME_NOISE), loss + LOSS_NOISE, step)
    before = hypervolume(frontier(prior), ref.time_s, ref.val_loss)
    after = hypervolume(frontier([*prior, handicapped]), ref.time_s, ref.val_loss)
    return max(0.0, after - before)


def summary(
    results: list[RunResult], ref: Reference, baseline: tuple[float, int | None, float],
    trusted_log: bool,
) -> dict[str, Any]:  # fmt: skip
    """``info["progress"]``: best loss, both frontiers and their hypervolumes. The frontiers
    start from the baseline (step 0: its time, tokens and loss from the task or this machine's
    pairing), so the hypervolume measures progress past it."""
    on_record = [r for r in results if counts(r, trusted_log)]
    b_time, b_tokens, b_loss = baseline
    timed = [(b_time, b_loss, 0), *time_points(results, trusted_log)]
    tokened = [(float(t), r.val_loss, r.step) for r in on_record if (t := run_tokens(r))]
    if b_tokens:
        tokened.insert(0, (float(b_tokens), b_loss, 0))
    best = min(on_record, key=lambda r: r.val_loss, default=None)  # type: ignore[arg-type, return-value]
    time_front, tokens_front = frontier(timed), frontier(tokened)  # type: ignore[arg-type]
    # Numbers stay numbers (NaN, -1 when there is none yet): gymnasium's vector envs stack each
    # info field across envs in an array typed by the first env's value, and None breaks it.
    nan = math.nan
    return {
        "runs_counted": "verified" if not trusted_log else "logs trusted (verify='none')",
        "best_val_loss": best.val_loss if best else nan,
        "best_step": best.step if best else -1,
        "time_frontier": [{"step": s, "train_time_s": c, "val_loss": v} for c, v, s in time_front],
        "tokens_frontier": [{"step": s, "tokens": int(c), "val_loss": v} for c, v, s in tokens_front],
        "hypervolume": hypervolume(time_front, ref.time_s, ref.val_loss),
        "hypervolume_tokens": hypervolume(tokens_front, ref.tokens, ref.val_loss) if ref.tokens else nan,
        "reference": {"train_time_s": ref.time_s, "tokens": ref.tokens or nan, "val_loss": ref.val_loss},
    }  # fmt: skip


def record_fields(progress: dict[str, Any]) -> dict[str, Any]:
    """What trajectory.jsonl and runs.sqlite keep of a step's progress: PROGRESS_KEYS, with
    None where there is nothing yet (NaN and -1 are for the info dict's arrays)."""
    out: dict[str, Any] = {}
    for key in PROGRESS_KEYS:
        v = progress[key]
        out[key] = None if (isinstance(v, float) and math.isnan(v)) or v == -1 else v
    return out
