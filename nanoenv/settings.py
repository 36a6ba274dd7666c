"""How a task is run in one environment, decided in one place.

:func:`resolve` turns the user's arguments and the task into a :class:`Resolved` run
configuration: the task at its size (smoke or full, with the user's overrides and own
baseline), the baseline script, and the :class:`RunSettings` (target, baseline numbers, reward,
verification level, repeats, deadline) that the runner, the feedback, the episode and the
records read. Nothing downstream re-derives any of it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoenv.actions.accept import defines_build_model
from nanoenv.actions.protected import protected_regions
from nanoenv.judging.rewards import RewardContext
from nanoenv.tasks import baseline_script, load_task, own_baseline, smoke_task
from nanoenv.types import TaskSpec, VerifyLevel


@dataclass(frozen=True)
class RunSettings:
    """How a task is run in this environment: size, target, reward, verification, repeats."""

    target_val_loss: float
    baseline_train_time_s: float
    baseline_val_loss: float
    timeout_s: float
    reward: str = "time_to_target"
    level: VerifyLevel = VerifyLevel.FULL
    smoke: bool = False
    repeats: int = 1
    script_overrides: dict[str, Any] = field(default_factory=dict)
    # The reward's loss is the verified hidden val loss (and the target is on it): see
    # TaskSpec.target_hidden_loss. Otherwise it is the loss on the script's own val tokens.
    scores_hidden: bool = False
    # The steps objective's yardstick (BaselineSpec.tokens) and the target on the reported curve.
    baseline_tokens: int | None = None
    curve_target: float | None = None
    # The current record of the record book here (nanoenv.records.book), as a ratio of the
    # baseline's time measured in its claim; 1.0 and "baseline" where there is none.
    record_time_ratio: float = 1.0
    record_label: str = "baseline"

    @classmethod
    def for_task(
        cls, task: TaskSpec, *, smoke: bool, reward: str, level: VerifyLevel | str,
        repeats: int = 1,
    ) -> RunSettings:  # fmt: skip
        """Settings for a task (already at its smoke size if ``smoke``: see tasks.smoke_task)."""
        level = VerifyLevel.parse(level)
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        # Hidden val can score a run only where the harness re-evaluates the whole model.
        hidden = (
            level is VerifyLevel.FULL
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
            level=level,
            smoke=smoke,
            repeats=repeats,
            script_overrides=dict(task.smoke.overrides) if smoke and task.smoke else {},
        )

    @property
    def trusts_log(self) -> bool:
        """Under verify="none" a run's own log is taken as it is."""
        return self.level is VerifyLevel.NONE

    @property
    def record_train_time_s(self) -> float:
        """The current record's time on this machine: the paired baseline's, times its ratio."""
        return self.baseline_train_time_s * self.record_time_ratio

    @property
    def reward_context(self) -> RewardContext:
        return RewardContext(
            self.target_val_loss, self.baseline_train_time_s, self.baseline_val_loss,
            record_train_time_s=self.record_train_time_s,
        )  # fmt: skip


@dataclass(frozen=True)
class Resolved:
    """Everything an environment runs by: the task, the baseline script, the settings, the
    episode length, and where the baseline's numbers were measured."""

    task: TaskSpec
    baseline: str
    settings: RunSettings
    max_steps: int
    measured_on: str
    start_script: str = ""  # the episode's step 0: the baseline, or the record (start="record")


def resolve(
    task: str | TaskSpec,
    *,
    sandbox: str,
    verify: str | VerifyLevel = VerifyLevel.FULL,
    repeats: int = 1,
    reward: str = "time_to_target",
    smoke: bool = False,
    max_steps: int | None = None,
    timeout_s: float | None = None,
    baseline: str | Path | None = None,
    paired_baseline: bool | None = None,
    overrides: dict[str, Any] | None = None,
    start: str = "baseline",
    runs_dir: str | Path | None = None,
) -> Resolved:
    """The run configuration from the user's arguments and the task, in this order: the task
    with the user's overrides, at its smoke size if asked; the user's own baseline (its
    modules travel beside it, and only the protected regions it marks are protected); the
    verification level (``log`` where the baseline defines no ``build_model``); the settings;
    the deadline; the baseline numbers paired to this machine where they were measured here
    (``sandbox`` names the backend they were measured on); the current record in ``runs_dir``'s
    record book, where the episode starts from it (``start="record"``) or is rewarded against
    it (``reward="record"``)."""
    if start not in ("baseline", "record"):
        raise ValueError(f"start must be 'baseline' or 'record', got {start!r}")
    spec = load_task(task, **(overrides or {}))
    if smoke:
        spec = smoke_task(spec)
    if baseline is None:
        script = baseline_script(spec)
    else:  # a script, or a record's folder: the script and the modules it imports
        script, modules = own_baseline(Path(baseline), spec)
        marked = protected_regions(script)
        spec = spec.model_copy(update={
            "modules": modules, "protected": [r for r in spec.protected if r.name in marked],
        })  # fmt: skip
    level = VerifyLevel.parse(verify)
    if level is VerifyLevel.FULL and not defines_build_model(script):
        # Without build_model(config) the harness cannot reload the model: its runs are timed
        # and policed, but their models are not re-evaluated.
        level = VerifyLevel.LOG
    settings = RunSettings.for_task(spec, smoke=smoke, reward=reward, level=level, repeats=repeats)
    if timeout_s is not None:
        settings = dataclasses.replace(settings, timeout_s=float(timeout_s))
    settings, measured_on = _pair_baseline(spec, settings, paired_baseline, sandbox)
    start_script = script
    if start == "record" or reward == "record":
        from nanoenv.records.book import current_record

        record = current_record(Path(runs_dir or "nanoenv-runs"), spec, smoke, sandbox)
        if record is not None:
            settings = dataclasses.replace(
                settings, record_time_ratio=record.time_ratio, record_label=record.label
            )
            if start == "record":
                start_script = record.script
    return Resolved(spec, script, settings, max_steps or spec.max_steps, measured_on, start_script)


def _pair_baseline(
    task: TaskSpec, settings: RunSettings, paired: bool | None, sandbox: str
) -> tuple[RunSettings, str]:
    """This machine's own baseline numbers when they exist (or, if asked, measured now)."""
    from nanoenv import baselines

    where = task.baseline.hardware or "the reference machine"
    if paired is False:
        return settings, f"{where} (task.toml)"
    found = baselines.load_paired(task, settings.smoke, sandbox)
    if found is None and paired:
        found = baselines.measure(f"nanoenv/{task.id}", smoke=settings.smoke, sandbox=sandbox)
    if found is None:
        return settings, f"{where} (task.toml; not paired)"
    settings = dataclasses.replace(
        settings, baseline_train_time_s=found.train_time_s, baseline_val_loss=found.val_loss
    )
    fp = ", ".join(f"{k}={v}" for k, v in found.fingerprint.items())
    return settings, (
        f"this machine (paired, fingerprint {found.fingerprint_id}: {fp}; {found.runs} runs, "
        f"{found.measured_at})"
    )
