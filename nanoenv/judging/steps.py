"""The steps objective: training tokens to the target, independent of the hardware.

After the speedrun's Track 3, which ranks by the fewest steps to the target at fixed tokens per
step: here, the training tokens at the first val point at or below the target on the run's own
curve (steps and batch sizes may vary, tokens are what a step costs in data). Deterministic for
a seed: on the tiny tracks the data order does not depend on the seed, and neither does the
count. With repeats the rule is Track 3's: the fewest tokens at which every repeat has a val
point and the mean val loss there is below the target by a one-sided t-test at p < 0.01.

It is a measurement, not a reward: the count is what the script's log reports (on
Speedrun-Tiny-v1, what the protected train loader served), and a script could print any count
and any val loss before its last, so no reward reads it. The time reward counts everything a
run does. Use this one to compare recipes you trust, as the fidelity benchmark does.
"""

from __future__ import annotations

import math
import statistics

from nanoenv.judging.significance import P_THRESHOLD
from nanoenv.types import LossPoint


def val_by_tokens(curve: list[LossPoint]) -> dict[int, float]:
    """Each val point's loss keyed by its reported training tokens (points without a count skip)."""
    out: dict[int, float] = {}
    for p in curve:
        raw = p.extra.get("tokens", "")
        if p.val_loss is not None and raw.isdigit() and math.isfinite(p.val_loss):
            out.setdefault(int(raw), p.val_loss)
    return out


def tokens_to_target(curves: list[list[LossPoint]], target: float) -> int | None:
    """The fewest tokens at which the runs meet the target (one run: at or below it; several:
    significantly below, p < 0.01); None if they never do."""
    tables = [val_by_tokens(c) for c in curves]
    if not tables or not all(tables):
        return None
    shared = sorted(set.intersection(*(set(t) for t in tables)))
    for tokens in shared:
        losses = [t[tokens] for t in tables]
        if len(losses) == 1:
            if losses[0] <= target:
                return tokens
        elif _significantly_below(losses, target):
            return tokens
    return None


def _significantly_below(losses: list[float], target: float) -> bool:
    sd = statistics.stdev(losses)
    if sd == 0.0:
        return False  # no spread is no evidence (the runner rejects seed-blind repeats anyway)
    from scipy import stats

    return float(stats.ttest_1samp(losses, target, alternative="less").pvalue) < P_THRESHOLD
