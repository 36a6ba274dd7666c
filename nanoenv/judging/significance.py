"""Repeats against the target: the speedrun's rule, a one-sided t-test at p < 0.01."""

from __future__ import annotations

import math
import statistics

from nanoenv.types import Significance

P_THRESHOLD = 0.01


def significance(losses: list[float], times_s: list[float], target: float) -> Significance:
    """Test "the mean loss is below the target" (one-sided t-test; needs two runs or more)."""
    n = len(losses)
    mean = statistics.fmean(losses)
    std = statistics.stdev(losses) if n > 1 else 0.0
    p: float | None = None
    if n > 1:
        if std == 0.0:
            # No spread is no evidence: identical repeats (a script that ignores its seed)
            # say nothing about the next run. The runner rejects them; here they fail the test.
            p = 1.0
        else:
            from scipy import stats

            p = float(stats.ttest_1samp(losses, target, alternative="less").pvalue)
    return Significance(
        n=n,
        losses=losses,
        times_s=times_s,
        mean=mean,
        std=std,
        target=target,
        p_value=p,
        significant=p is not None and math.isfinite(p) and p < P_THRESHOLD,
    )
