"""Rewards: finite for every outcome, zero for infra errors, shaped the way the docs say."""

from __future__ import annotations

import math

import pytest

from nanoenv.judging.rewards import REWARDS, RewardContext, get_reward
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


def test_loss_at_budget_scores_the_verified_loss_of_a_run_within_budget():
    """loss_at_budget is the baseline's loss minus the run's (verified) loss; the script's
    curve plays no part, so a fake early point earns nothing."""
    fake = [LossPoint(step=1, val_loss=0.5, train_time_ms=1)]  # a "great" reported point
    f = REWARDS["loss_at_budget"]
    assert f(Outcome.OK, 2.45, 30.0, fake, CTX) == pytest.approx(0.05)
    assert f(Outcome.OK, 2.45, 30.0, [], CTX) == pytest.approx(0.05)


def test_loss_at_budget_penalises_an_overrun():
    """A run past the budget (the baseline's time + 5%) is penalised, more for a longer one,
    whatever its loss."""
    f = REWARDS["loss_at_budget"]
    assert f(Outcome.OK, 2.45, CTX.budget_s, [], CTX) == pytest.approx(0.05)
    over, far = (f(Outcome.OK, 1.0, t, [], CTX) for t in (CTX.budget_s * 1.01, 200.0))
    assert -1.0 == far < over <= -0.05


def test_time_reward_is_paid_only_for_the_target_met_by_the_rule():
    """Under repeats, a mean below the target that is not significant is missed_target, and
    earns no time reward, only the smallest miss penalty."""
    f = REWARDS["time_to_target"]
    assert f(Outcome.MISSED_TARGET, 2.4, 1.0, CURVE, CTX) == pytest.approx(-0.05)
    assert f(Outcome.OK, 2.4, 1.0, CURVE, CTX) == pytest.approx(math.log(30.0))


def test_unknown_reward_names_the_choices():
    """A mistyped reward lists the valid ones."""
    with pytest.raises(ValueError, match="time_to_target, loss_at_budget"):
        get_reward("fastest")
