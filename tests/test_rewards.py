"""Rewards: finite for every outcome, zero for infra errors, shaped the way the docs say."""

from __future__ import annotations

import math

import pytest

from nanoenv.rewards import REWARDS, RewardContext, get_reward, loss_within
from nanoenv.types import LossPoint, Outcome

CTX = RewardContext(target_val_loss=2.5, baseline_train_time_s=30.0, baseline_val_loss=2.5)
CURVE = [
    LossPoint(step=s, val_loss=v, train_time_ms=t * 1000)
    for s, v, t in [(0, 5.0, 0), (10, 2.6, 15), (20, 2.45, 30)]
]


@pytest.mark.parametrize("name", sorted(REWARDS))
@pytest.mark.parametrize("outcome", list(Outcome))
@pytest.mark.parametrize("val_loss", [None, math.nan, math.inf, -math.inf, 0.0, 2.4, 2.6, 1e30])
@pytest.mark.parametrize("train_time", [None, 0.0, 1e-9, 15.0, math.inf, math.nan])
def test_every_reward_is_finite(name, outcome, val_loss, train_time):
    """No combination of outcome and numbers gives a NaN or infinite reward."""
    reward = get_reward(name)(outcome, val_loss, train_time, CURVE, CTX)
    assert math.isfinite(reward)
    if outcome is Outcome.INFRA_ERROR:
        assert reward == 0.0


def test_time_to_target_is_log_speedup():
    """Meeting the target twice as fast as the baseline earns log 2; as fast earns 0."""
    f = REWARDS["time_to_target"]
    assert f(Outcome.OK, 2.4, 15.0, CURVE, CTX) == pytest.approx(math.log(2))
    assert f(Outcome.OK, 2.5, 30.0, CURVE, CTX) == pytest.approx(0.0)


def test_missing_grows_with_the_miss_and_never_ties_meeting():
    """A miss costs at least 0.05 and more for a bigger miss, capped at the failure penalty."""
    f = REWARDS["time_to_target"]
    small, big, huge = (f(Outcome.MISSED_TARGET, v, 10.0, CURVE, CTX) for v in (2.5001, 2.6, 9.0))
    assert -1.0 == huge < big < small <= -0.05
    assert f(Outcome.CRASHED, None, None, [], CTX) == -1.0


def test_loss_at_budget_uses_the_curve_within_budget():
    """loss_at_budget reads the last val point inside the baseline's time (+5%)."""
    late = [*CURVE, LossPoint(step=30, val_loss=2.0, train_time_ms=40_000)]
    assert loss_within(late, CTX.budget_s) == 2.45
    assert REWARDS["loss_at_budget"](Outcome.OK, 2.0, 40.0, late, CTX) == pytest.approx(0.05)


def test_unknown_reward_names_the_choices():
    """A mistyped reward lists the valid ones."""
    with pytest.raises(ValueError, match="time_to_target, loss_at_budget"):
        get_reward("fastest")
