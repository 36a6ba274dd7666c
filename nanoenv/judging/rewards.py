"""Reward functions. Every reward is finite; ``infra_error`` earns nothing and costs nothing.

Each reads only what the harness measured: the run's loss as the runner set it (verified, and
on hidden val where the task scores there) and its harness time (from the process's start to
the exit of its last process). Nothing the script printed, its curve included, moves a reward.

- ``time_to_target``: when the outcome is ``ok`` (the target met by the rule in force: the
  loss at or below it, or with repeats a one-sided t-test at p < 0.01),
  ``log(baseline_time / time)`` (0 for the baseline itself, +0.69 for twice as fast, never
  below -1); otherwise a penalty that grows with the miss, from -0.05 to -1.
- ``loss_at_budget``: the baseline's loss minus the run's verified loss, in nats (positive is
  better), clipped to [-1, 1], for a run whose harness time is within the budget (the
  baseline's time + 5%, given to the script as ``NANOENV_TIME_BUDGET_S``). A run that
  overruns is penalised, -0.05 to -1 as the overrun grows: the model it saved took longer.
- ``frontier``: the hypervolume a run adds to the episode's (harness time, loss) frontier, in
  nats (nanoenv.judging.progress: 0 for a dominated run, never negative for one that counts; a run
  counts when verified, or under ``verify="none"`` when it trained). The frontier starts at
  the baseline, and a new run is scored as if 0.005 nats worse and 5 % slower than it was, so a
  re-run or a cosmetic edit of a script on the frontier earns nothing from a lucky seed.
- ``record``: positive only for a run that beats the current record of the record book
  (nanoenv.records.book) on this machine: the target met by the rule in force and a harness
  time more than 5 % below the record's, ``log(record time / time)``; 0 for a run that meets
  the target no faster; a miss is penalised as under ``time_to_target``. The record's time
  here is the baseline's paired time times the record's time ratio (measured against the
  record before it in one interleaved claim), so a quiet hour does not make the record easy.
  Without a record, the baseline is the record. A single step cannot show p < 0.01 on time;
  ``nanoenv records claim`` is where that is tested before a run enters the book.
- failures (``patch_failed``, ``rejected``, ``crashed``, ``timed_out``): -1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from nanoenv.types import LossPoint, Outcome

FAILURE_PENALTY = -1.0
MISS_FLOOR = 0.05  # the smallest penalty for missing the target, so missing never ties meeting it
MISS_SLOPE = 10.0  # penalty per unit of relative miss: 5% above the target costs 0.55
MAX_GAIN = 5.0  # log(150x); a clip against division by a near-zero time


@dataclass(frozen=True)
class RewardContext:
    """What a reward is measured against."""

    target_val_loss: float
    baseline_train_time_s: float
    baseline_val_loss: float
    budget_slack: float = 1.05  # a run may overrun the baseline's time by 5% (timing noise)
    record_train_time_s: float | None = None  # the current record's time here (reward "record")

    @property
    def budget_s(self) -> float:
        """The training-time budget of ``loss_at_budget``."""
        return self.baseline_train_time_s * self.budget_slack


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def time_to_target(
    outcome: Outcome, val_loss: float | None, train_time_s: float | None, curve: list[LossPoint],
    ctx: RewardContext,
) -> float:  # fmt: skip
    """log(baseline time / time) if the target is met; a penalty growing with the miss if not."""
    if outcome is Outcome.INFRA_ERROR:
        return 0.0
    if outcome not in (Outcome.OK, Outcome.MISSED_TARGET) or not _finite(val_loss):
        return FAILURE_PENALTY
    assert val_loss is not None
    if outcome is Outcome.OK and val_loss <= ctx.target_val_loss and _finite(train_time_s):
        assert train_time_s is not None
        gain = math.log(ctx.baseline_train_time_s / max(train_time_s, 1e-3))
        # A run that meets the target but is e times slower than the baseline is as useless as
        # a failure, never worse: the target met ranks at or above every failure.
        return max(FAILURE_PENALTY, min(MAX_GAIN, gain))
    return _penalty((val_loss - ctx.target_val_loss) / ctx.target_val_loss)


def _penalty(excess: float) -> float:
    """-0.05 to -1 for a relative excess (over the target, or over the budget)."""
    return -min(1.0, MISS_FLOOR + MISS_SLOPE * max(excess, 0.0))


def loss_at_budget(
    outcome: Outcome, val_loss: float | None, train_time_s: float | None, curve: list[LossPoint],
    ctx: RewardContext,
) -> float:  # fmt: skip
    """baseline loss - the run's verified loss, in nats, clipped to [-1, 1], if the run ended
    within the budget; a penalty growing with the overrun if it did not."""
    if outcome is Outcome.INFRA_ERROR:
        return 0.0
    if outcome not in (Outcome.OK, Outcome.MISSED_TARGET) or not _finite(val_loss):
        return FAILURE_PENALTY
    if not _finite(train_time_s):
        return FAILURE_PENALTY
    assert val_loss is not None and train_time_s is not None
    if train_time_s > ctx.budget_s:
        return _penalty((train_time_s - ctx.budget_s) / ctx.budget_s)
    return max(-1.0, min(1.0, ctx.baseline_val_loss - val_loss))


def frontier_failures(
    outcome: Outcome, val_loss: float | None, train_time_s: float | None, curve: list[LossPoint],
    ctx: RewardContext,
) -> float:  # fmt: skip
    """``frontier``'s part that needs no history: failures cost -1, infra errors nothing. The
    episode fills in a run that trained: the hypervolume it added (nanoenv.judging.progress)."""
    if outcome is Outcome.INFRA_ERROR:
        return 0.0
    if outcome not in (Outcome.OK, Outcome.MISSED_TARGET) or not _finite(val_loss):
        return FAILURE_PENALTY
    return 0.0


# A run must be 5 % faster than the record: a lucky seed's timing is not a record.
RECORD_MARGIN = 1.05


def beats_record(
    outcome: Outcome, val_loss: float | None, train_time_s: float | None, curve: list[LossPoint],
    ctx: RewardContext,
) -> float:  # fmt: skip
    """log(record time / time) for a run that meets the target more than 5 % faster than the
    current record; 0 for one that meets it no faster; the miss penalty otherwise."""
    if outcome is Outcome.INFRA_ERROR:
        return 0.0
    if outcome not in (Outcome.OK, Outcome.MISSED_TARGET) or not _finite(val_loss):
        return FAILURE_PENALTY
    assert val_loss is not None
    if not (outcome is Outcome.OK and val_loss <= ctx.target_val_loss and _finite(train_time_s)):
        return _penalty((val_loss - ctx.target_val_loss) / ctx.target_val_loss)
    assert train_time_s is not None
    record_s = ctx.record_train_time_s or ctx.baseline_train_time_s
    if train_time_s * RECORD_MARGIN >= record_s:
        return 0.0
    return min(MAX_GAIN, math.log(record_s / max(train_time_s, 1e-3)))


RewardFn = Callable[
    [Outcome, "float | None", "float | None", list[LossPoint], RewardContext], float
]
REWARDS: dict[str, RewardFn] = {
    "time_to_target": time_to_target,
    "loss_at_budget": loss_at_budget,
    "frontier": frontier_failures,
    "record": beats_record,
}
# Rewards the episode completes from its history (the runner gives only their failure part).
EPISODE_REWARDS = frozenset({"frontier"})


def get_reward(name: str) -> RewardFn:
    """Look up a reward function by name."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}")
    return REWARDS[name]
