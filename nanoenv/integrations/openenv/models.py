"""The messages of a served nanoenv: OpenEnv's Action, Observation and State, a few fields each.

An action is what ``SpeedrunEnv.step`` takes, as JSON; an observation is its five return values
flattened (``reward`` and ``done`` are OpenEnv's own fields), with numbers JSON can hold: ``None``
where nanoenv says ``inf`` or ``NaN`` ("no number yet").
"""

from __future__ import annotations

import math
from typing import Any

from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field


class SpeedrunAction(Action):
    """One move: an edit of the current script (any format nanoenv reads; ``""`` reruns it),
    or a whole new ``script``, optionally from step ``base``'s script (0 is the baseline).

    Giving both ``diff`` and ``script`` is not a protocol error: the step answers it as
    ``patch_failed``, as ``SpeedrunEnv.step`` does, and the episode goes on.
    """

    diff: str | None = Field(default=None, description="an edit of the base script")
    script: str | None = Field(default=None, description="a whole new script instead of an edit")
    base: int | None = Field(default=None, description="the step to start from (0: baseline)")

    def to_nanoenv(self) -> dict[str, Any]:
        """The action as ``SpeedrunEnv.step`` takes it (a dict it validates itself)."""
        fields = {"diff": self.diff, "script": self.script, "base": self.base}
        action = {k: v for k, v in fields.items() if v is not None}
        return action or {"diff": ""}


class SpeedrunObservation(Observation):
    """What a step (or reset) returns. ``result`` is the step's ``nanoenv.RunResult`` as JSON and
    ``progress`` the episode's (``info["progress"]``); both are empty after reset."""

    step: int = Field(default=0, description="the step this observation reports (0: reset)")
    script: str = ""
    feedback: str = Field(default="", description="the report, as an LLM reads it")
    outcome: str = Field(default="", description="ok, missed_target, patch_failed, ...")
    val_loss: float | None = None
    train_time_s: float | None = None
    curve: list[list[float | None]] = Field(
        default_factory=list, description="rows of step, train_time_s, val_loss"
    )
    terminated: bool = False
    truncated: bool = False
    result: dict[str, Any] = Field(default_factory=dict)
    progress: dict[str, Any] = Field(default_factory=dict)


class SpeedrunState(State):
    """A session's episode: its task, its runs folder and where it stands."""

    task: str = ""
    runs_dir: str = ""
    episode_dir: str | None = None
    current: int = Field(default=0, description="the step the next diff applies to")
    outcomes: list[str] = Field(default_factory=list, description="each finished step's outcome")
    rewards: list[float] = Field(default_factory=list)
    best_val_loss: float | None = None
    running: bool = Field(default=False, description="a step is running now")


def finite(x: Any) -> Any:
    """JSON-safe numbers, recursively: ``inf`` and ``NaN`` become ``None``, numpy scalars floats."""
    if isinstance(x, dict):
        return {str(k): finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalar or 0-d array
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
