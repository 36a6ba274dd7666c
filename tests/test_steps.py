"""The steps objective: tokens to the target on the reported curve, with Track 3's repeats rule."""

from __future__ import annotations

from nanoenv.judging.steps import tokens_to_target, val_by_tokens
from nanoenv.types import LossPoint


def curve(*points: tuple[int, float]) -> list[LossPoint]:
    return [LossPoint(step=t // 100, val_loss=v, extra={"tokens": str(t)}) for t, v in points]


def test_one_run_counts_tokens_at_the_first_val_point_at_or_below_the_target():
    c = curve((0, 5.5), (100, 3.0), (200, 2.49), (300, 2.40))
    assert tokens_to_target([c], 2.5) == 200
    assert tokens_to_target([c], 2.0) is None
    # train-loss lines and lines without a count are not val points
    c.insert(1, LossPoint(step=1, train_loss=1.0, extra={"tokens": "50"}))
    c.append(LossPoint(step=9, val_loss=1.0))
    assert val_by_tokens(c) == {0: 5.5, 100: 3.0, 200: 2.49, 300: 2.40}


def test_repeats_need_the_mean_significantly_below_the_target_at_shared_points():
    runs = [
        curve((100, 2.52), (200, 2.499), (300, 2.40)),
        curve((100, 2.48), (200, 2.4995), (300, 2.41)),
        curve((100, 2.47), (200, 2.4993), (300, 2.39)),
    ]
    # at 100 the mean is under 2.5 but the spread is wide; at 200 barely under; at 300 clearly
    assert tokens_to_target(runs, 2.5) == 300
    # repeats that never share a point where they are all under: none
    assert tokens_to_target([curve((100, 2.4)), curve((200, 2.4))], 2.5) is None
    # identical repeats are no evidence
    assert tokens_to_target([curve((100, 2.4))] * 3, 2.5) is None
