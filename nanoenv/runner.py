"""One step, end to end: police the action, run the script in a sandbox, judge, reward, record.

The environment (env.py) keeps the episode's history and calls :meth:`Runner.step`; this
module never touches gymnasium and knows sandboxes only through their protocol.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoenv import patching
from nanoenv.errors import PatchError, PolicyError
from nanoenv.rewards import RewardContext, get_reward
from nanoenv.sandbox.base import Sandbox
from nanoenv.telemetry import LogParser
from nanoenv.types import (
    Action,
    Job,
    JobResult,
    LossPoint,
    Outcome,
    RunResult,
    StampedLine,
    TaskSpec,
    Verdict,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, LossPoint], None]
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class RunSettings:
    """How a task is run in this environment: size, target, reward, verification."""

    target_val_loss: float
    baseline_train_time_s: float
    baseline_val_loss: float
    timeout_s: float
    reward: str = "time_to_target"
    verify: str = "none"
    script_overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_task(cls, task: TaskSpec, *, smoke: bool, reward: str, verify: str) -> RunSettings:
        """Settings for a task at full size or at its smoke size."""
        if smoke:
            if task.smoke is None:
                raise ValueError(f"task {task.id} has no smoke size")
            return cls(
                target_val_loss=task.smoke.target_val_loss,
                baseline_train_time_s=task.smoke.baseline_train_time_s,
                baseline_val_loss=task.smoke.target_val_loss,
                timeout_s=task.smoke.timeout_s,
                reward=reward,
                verify=verify,
                script_overrides=dict(task.smoke.overrides),
            )
        return cls(
            target_val_loss=task.target_val_loss,
            baseline_train_time_s=task.baseline.train_time_s,
            baseline_val_loss=task.baseline.val_loss,
            timeout_s=task.limits.timeout_s,
            reward=reward,
            verify=verify,
        )

    @property
    def reward_context(self) -> RewardContext:
        return RewardContext(
            self.target_val_loss, self.baseline_train_time_s, self.baseline_val_loss
        )


def coerce_action(action: Any, max_bytes: int) -> Action:
    """Accept a diff string, bytes, a dict or an Action.

    Raises:
        PatchError: the action has the wrong type or fields.
        PolicyError: bytes that are not UTF-8.
    """
    if isinstance(action, Action):
        return action
    if isinstance(action, bytes | bytearray):
        return Action(diff=patching.decode_action_text(bytes(action), "diff"))
    if isinstance(action, str):
        return Action(diff=action)
    if isinstance(action, dict):
        try:
            return Action.model_validate(action)
        except ValueError as e:
            raise PatchError(f"the action dict is not a valid nanoenv.Action: {e}") from None
    raise PatchError(
        f"an action must be a diff (str), a dict or a nanoenv.Action; got {type(action).__name__}"
    )


def build_script(
    action: Action, base_script: str, baseline: str, task: TaskSpec
) -> patching.Applied:
    """The candidate script an action makes from ``base_script``, policed against the task.

    Raises:
        PatchError: the diff does not parse or apply.
        PolicyError: size, encoding, other files, protected regions, empty script.
    """
    if action.script is not None:
        patching.check_text(action.script, "script", task.max_script_bytes)
        applied = patching.Applied(patching.normalize_text(action.script))
    elif action.is_noop:
        applied = patching.Applied(base_script, ["no-op: the base script runs unchanged"])
    else:
        assert action.diff is not None
        patching.check_text(action.diff, "diff", task.max_patch_bytes)
        applied = patching.apply_diff(base_script, action.diff, task.script)
    if not applied.script.strip():
        raise PolicyError("the script is empty")
    patching.check_text(applied.script, "script", task.max_script_bytes)
    patching.check_protected(baseline, applied.script, [r.name for r in task.protected])
    return applied


def syntax_error(script: str, name: str) -> str | None:
    """A readable SyntaxError for a Python script, or None if it compiles."""
    if not name.endswith(".py"):
        return None
    try:
        compile(script, name, "exec")
    except SyntaxError as e:
        where = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
        text = (e.text or "").rstrip()
        return f"SyntaxError in {name} at {where}: {e.msg}" + (f"\n    {text}" if text else "")
    except ValueError as e:  # e.g. "source code string cannot contain null bytes"
        return f"{name} cannot be compiled: {e}"
    return None


def classify(job: JobResult, parser: LogParser, target: float) -> tuple[Outcome, str]:
    """The outcome of a finished job, and a one-line reason."""
    last = parser.last_val
    if job.infra_error:
        return Outcome.INFRA_ERROR, job.infra_error
    if job.timed_out:
        return (
            Outcome.TIMED_OUT,
            f"the script ran past its deadline ({job.wall_time_s:.0f} s) and was killed",
        )
    if job.output_truncated:
        return Outcome.CRASHED, "the script printed more output than allowed and was killed"
    if job.oom:
        return Outcome.CRASHED, "the script ran out of memory"
    if job.exit_code != 0:
        return Outcome.CRASHED, f"the script exited with code {job.exit_code}"
    if last is None:
        return Outcome.CRASHED, "the script exited 0 but printed no `val_loss` line"
    assert last.val_loss is not None
    if not math.isfinite(last.val_loss):
        return Outcome.MISSED_TARGET, f"the final val_loss is {last.val_loss} (training diverged)"
    if last.val_loss > target:
        return Outcome.MISSED_TARGET, f"final val_loss {last.val_loss:.4f} > target {target:.4f}"
    return Outcome.OK, f"final val_loss {last.val_loss:.4f} <= target {target:.4f}"


def log_tail(lines: list[StampedLine], n: int = LOG_TAIL_LINES) -> str:
    """The last ``n`` lines of output, stderr marked, for the agent to read."""
    return "\n".join(
        ("[stderr] " if ln.stream == "stderr" else "") + ln.text[:500] for ln in lines[-n:]
    )


def harness_timing(points: list[LossPoint]) -> dict[str, float]:
    """What the harness clock says about the timed window (receipt of first to last val line)."""
    vals = [p for p in points if p.val_loss is not None and p.received_s is not None]
    if len(vals) < 2:
        return {}
    assert vals[0].received_s is not None and vals[-1].received_s is not None
    return {"harness_val_window_s": round(vals[-1].received_s - vals[0].received_s, 4)}


class Runner:
    """Runs candidate scripts of one task in one sandbox, and judges them."""

    def __init__(
        self, task: TaskSpec, sandbox: Sandbox, data_dir: Path, settings: RunSettings
    ) -> None:
        self.task = task
        self.sandbox = sandbox
        self.data_dir = data_dir
        self.settings = settings
        self.reward_fn = get_reward(settings.reward)

    def job(self, script: str, seed: int, out_dir: Path) -> Job:
        """The sandbox job that runs ``script`` with the task's contract environment."""
        env = {
            "NANOENV_SEED": str(seed),
            "NANOENV_DEVICE": self.task.device,
            **self.task.env,
        }
        if self.settings.script_overrides:
            env["NANOENV_OVERRIDES"] = json.dumps(self.settings.script_overrides)
        limits = self.task.limits.model_copy(update={"timeout_s": self.settings.timeout_s})
        return Job(
            files={self.task.script: script},
            command=self.task.command,
            env=env,
            data_dir=self.data_dir,
            out_dir=out_dir,
            limits=limits,
            gpus=self.task.gpus,
            labels={"nanoenv.task": self.task.id},
        )

    def run(
        self, script: str, *, step: int, seed: int, record: Any, progress: ProgressFn | None
    ) -> RunResult:
        """Run a policed script and return its judged, rewarded result (not yet written)."""
        parser = LogParser()

        def on_line(line: StampedLine) -> None:
            record.log_line(line)
            point = parser.feed(line.text, line.t) if line.stream == "stdout" else None
            if point is not None and progress is not None:
                progress(step, point)

        record.open_log()
        try:
            job_result = self.sandbox.run(self.job(script, seed, record.out_dir), on_line)
        finally:
            record.close_log()
        outcome, message = classify(job_result, parser, self.settings.target_val_loss)
        last = parser.last_val
        val_loss = last.val_loss if last else None
        train_time = last.train_time_s if last else None
        notes = list(job_result.notes)
        if outcome is Outcome.OK and not (record.out_dir / "model.safetensors").exists():
            notes.append(
                "no model.safetensors in NANOENV_OUT_DIR: this run could never be verified"
            )
        result = RunResult(
            step=step,
            outcome=outcome,
            message=message,
            val_loss=val_loss,
            train_time_s=train_time,
            wall_time_s=job_result.wall_time_s,
            curve=parser.points,
            verdict=self.verdict(),
            log_tail=log_tail(job_result.lines),
            exit_code=job_result.exit_code,
            seed=seed,
            script_sha256=hashlib.sha256(script.encode()).hexdigest(),
            telemetry={**job_result.telemetry, **harness_timing(parser.points)},
            notes=notes,
        )
        return self.rewarded(result)

    def verdict(self) -> Verdict:
        """What the harness can vouch for at this verification level."""
        return Verdict(
            level="none",
            verified=False,
            reason="verify='none': the numbers are as the script reported them; the harness "
            "did not re-evaluate the model",
        )

    def rewarded(self, result: RunResult) -> RunResult:
        """Fill in the reward of a result (finite for every outcome)."""
        reward = self.reward_fn(
            result.outcome, result.val_loss, result.train_time_s, result.curve,
            self.settings.reward_context,
        )  # fmt: skip
        return result.model_copy(update={"reward": float(reward)})

    def failed(
        self, step: int, outcome: Outcome, message: str, seed: int, started: float
    ) -> RunResult:
        """A result for a step that never reached the sandbox."""
        return self.rewarded(
            RunResult(
                step=step,
                outcome=outcome,
                message=message,
                wall_time_s=round(time.monotonic() - started, 4),
                seed=seed,
                verdict=Verdict(level="none", reason="the script did not run"),
            )
        )
