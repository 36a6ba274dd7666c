"""How a task is run in one environment: the settings resolved once from the user's
arguments and the task (target, baseline numbers, reward, verification, repeats), read by the
runner, the feedback and the env alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nanoenv.rewards import RewardContext
from nanoenv.types import TaskSpec

VERIFY_LEVELS = ("full", "none")


@dataclass(frozen=True)
class RunSettings:
    """How a task is run in this environment: size, target, reward, verification, repeats."""

    target_val_loss: float
    baseline_train_time_s: float
    baseline_val_loss: float
    timeout_s: float
    reward: str = "time_to_target"
    verify: str = "full"
    repeats: int = 1
    script_overrides: dict[str, Any] = field(default_factory=dict)
    # The reward's loss is the verified hidden val loss (and the target is on it): see
    # TaskSpec.target_hidden_loss. Otherwise it is the loss on the script's own val tokens.
    scores_hidden: bool = False
    # The steps objective's yardstick (BaselineSpec.tokens) and the target on the reported curve.
    baseline_tokens: int | None = None
    curve_target: float | None = None

    @classmethod
    def for_task(
        cls, task: TaskSpec, *, smoke: bool, reward: str, verify: str, repeats: int = 1,
        log_only: bool = False,
    ) -> RunSettings:  # fmt: skip
        """Settings for a task (already at its smoke size if ``smoke``: see tasks.smoke_task)."""
        if verify not in VERIFY_LEVELS:
            raise ValueError(f"verify must be one of {VERIFY_LEVELS}, got {verify!r}")
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        # Hidden val can score a run only where the harness re-evaluates the whole model.
        hidden = (
            verify == "full" and not log_only
            and task.target_hidden_loss is not None and task.baseline.hidden_loss is not None
        )  # fmt: skip
        return cls(
            target_val_loss=task.target_hidden_loss if hidden else task.target_val_loss,  # type: ignore[arg-type]
            baseline_train_time_s=task.baseline.train_time_s,
            baseline_val_loss=task.baseline.hidden_loss if hidden else task.baseline.val_loss,  # type: ignore[arg-type]
            scores_hidden=hidden,
            baseline_tokens=task.baseline.tokens,
            curve_target=task.target_val_loss,
            timeout_s=task.limits.timeout_s,
            reward=reward,
            verify=verify,
            repeats=repeats,
            script_overrides=dict(task.smoke.overrides) if smoke and task.smoke else {},
        )

    @property
    def reward_context(self) -> RewardContext:
        return RewardContext(
            self.target_val_loss, self.baseline_train_time_s, self.baseline_val_loss
        )
