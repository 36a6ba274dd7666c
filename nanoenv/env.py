"""SpeedrunEnv: the gymnasium glue around a task, a sandbox and a runner."""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import time
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from nanoenv import feedback
from nanoenv.actions import build_script, coerce_action, defines_build_model, syntax_error
from nanoenv.data import ensure_dataset
from nanoenv.errors import PatchError, PolicyError
from nanoenv.patching import make_diff, protected_regions
from nanoenv.records import EpisodeRecord
from nanoenv.runner import ProgressFn, Runner, RunSettings
from nanoenv.sandbox import Sandbox, make_sandbox
from nanoenv.spaces import MAX_CURVE_POINTS, MAX_FEEDBACK_CHARS, action_space, observation_space
from nanoenv.tasks import baseline_script, load_task, smoke_task
from nanoenv.types import Action, Outcome, RunResult

log = logging.getLogger(__name__)


class SpeedrunEnv(gym.Env[dict[str, Any], Any]):
    """## Description

    The NanoGPT speedrun as an environment. The state is a training script; an action patches
    it; a step runs the patched script in a sandbox on a fixed slice of data and reports the
    loss curve, the training time, a verdict and a reward. Research is open-ended, so an
    episode is a sequence of experiments: each step's script may build on the previous one,
    or branch from any earlier step.

    ## Action Space

    A ``str`` holding a unified diff against the current script (``""`` reruns it unchanged),
    or a :class:`nanoenv.Action` (``diff=`` or ``script=``, and ``base=k`` to start from step
    k's script, 0 being the baseline), or the same as a dict. ``action_space`` is a text space;
    its samples are random short strings, which the env answers as malformed patches.

    ## Observation Space

    A ``Dict``: ``script`` (the current script), ``feedback`` (a readable report of the step),
    ``outcome`` (``ok``, ``missed_target``, ``patch_failed``, ``rejected``, ``crashed``,
    ``timed_out``, ``infra_error``; ``""`` after reset), ``val_loss`` and ``train_time_s``
    (``inf`` when there are none), ``curve`` (``curve_points`` rows of step, train_time_s,
    val_loss; zeros after them). ``info["result"]`` is the full :class:`nanoenv.RunResult`.

    ## Rewards

    Computed from what the harness measured: the re-evaluated loss (``verify="full"``) and the
    harness's clock (process start to the last val line). ``time_to_target`` (default):
    log(baseline time / time) when the target is met, else a penalty from -0.05 to -1 growing
    with the miss. ``loss_at_budget``: the baseline's loss minus the loss reached within the
    baseline's time. Failures and rejections cost -1; ``infra_error`` 0.

    ## Episode End

    ``truncated`` once ``max_steps`` steps are taken. ``terminated`` never, unless
    ``terminate_on_success=True``: then on the first verified step that meets the target
    (significantly, with repeats) faster than the baseline.

    ## Arguments

    ``task`` (id), ``sandbox`` (``"local"``, ``"docker"``, ``"ray"`` or a Sandbox),
    ``verify`` (``"full"``: re-evaluate the model and run every check; ``"none"``: trust the
    log), ``repeats`` (runs per step; with 2 or more, "meets the target" needs p < 0.01),
    ``reward``, ``runs_dir`` (default ``./nanoenv-runs``), ``smoke`` (a few-seconds size for
    tests), ``max_steps``, ``timeout_s`` (each run's deadline), ``baseline`` (your own script
    as the baseline, e.g. a modded-nanogpt record; without ``build_model`` it runs at
    verification level ``log``), ``progress`` (a callback ``(step, LossPoint)`` called as each log
    point arrives), ``terminate_on_success``; other keywords override task.toml fields.

    ## Version History

    * v0: first release.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}

    def __init__(
        self,
        task: str = "Speedrun-Tiny-v0",
        *,
        sandbox: str | Sandbox = "local",
        verify: str = "full",
        repeats: int = 1,
        reward: str = "time_to_target",
        runs_dir: str | Path | None = None,
        smoke: bool = False,
        max_steps: int | None = None,
        timeout_s: float | None = None,
        progress: ProgressFn | None = None,
        baseline: str | Path | None = None,
        terminate_on_success: bool = False,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.task = load_task(task, **overrides)
        if smoke:
            self.task = smoke_task(self.task)
        self.baseline = (
            baseline_script(self.task) if baseline is None else Path(baseline).read_text()
        )
        if baseline is not None:  # a user's own script: only the protected regions it marks
            marked = protected_regions(self.baseline)
            self.task = self.task.model_copy(
                update={"protected": [r for r in self.task.protected if r.name in marked]}
            )
        self.smoke = smoke
        self.max_steps = max_steps or self.task.max_steps
        self.settings = RunSettings.for_task(
            self.task, smoke=smoke, reward=reward, verify=verify, repeats=repeats
        )
        if timeout_s is not None:
            self.settings = dataclasses.replace(self.settings, timeout_s=float(timeout_s))
        if isinstance(sandbox, str):
            gpu = {"gpu": True} if sandbox == "docker" and self.task.gpus else {}
            self.sandbox = make_sandbox(sandbox, **gpu)
        else:
            self.sandbox = sandbox
        data_root, manifest = ensure_dataset(self.task.data)
        self.runner = Runner(
            self.task, self.sandbox, data_root, manifest, self.settings,
            log_only=not defines_build_model(self.baseline),
        )  # fmt: skip
        self.runs_dir = Path(runs_dir) if runs_dir is not None else Path("nanoenv-runs")
        self.progress = progress
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.observation_space = observation_space(self.task.max_script_bytes)
        self.action_space = action_space(self.task.max_patch_bytes)
        self._new_episode()

    # ------------------------------------------------------------------ gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the baseline script and return the task's brief."""
        super().reset(seed=seed)
        self._new_episode(seed)
        self._feedback = feedback.brief(
            self.task, self.settings, smoke=self.smoke, sandbox=self.sandbox.name,
            max_steps=self.max_steps,
        )  # fmt: skip
        obs = self._observation(None)
        info = {
            "task": self.task.id,
            "target_val_loss": self.settings.target_val_loss,
            "baseline_train_time_s": self.settings.baseline_train_time_s,
        }
        return obs, info

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Run one candidate script and report it. Never raises for what the agent sent."""
        started = time.monotonic()
        index = len(self.scripts)
        seeds = [int(x) for x in self.np_random.integers(2**31 - 1, size=self.settings.repeats)]
        result, script = self._run_step(action, index, seeds, started)
        self.scripts.append(script)
        self.results.append(result)
        if script is not None:
            self.current = index
        self._feedback = feedback.report(result, self.settings, current_step=self.current)
        # Success means a verified run (under verify="full") that meets the target (with
        # repeats, significantly) faster than the baseline.
        terminated = bool(
            self.terminate_on_success
            and result.outcome is Outcome.OK
            and result.reward > 0
            and (result.verdict.verified or self.settings.verify == "none")
        )
        truncated = len(self.results) >= self.max_steps
        return self._observation(result), result.reward, terminated, truncated, {"result": result}

    def render(self) -> str | None:
        """With ``render_mode="ansi"``, the last report as text."""
        return self._feedback if self.render_mode == "ansi" else None

    def close(self) -> None:
        """Release the sandbox."""
        self.sandbox.close()

    # ------------------------------------------------------------------ episode state

    @property
    def script(self) -> str:
        """The current script: what the next diff applies to by default."""
        script = self.scripts[self.current]
        assert script is not None
        return script

    @property
    def episode_dir(self) -> Path:
        """This episode's artifact folder (made at its first step)."""
        return self.record.path

    def _new_episode(self, seed: int | None = None) -> None:
        self.scripts: list[str | None] = [self.baseline]
        self.results: list[RunResult] = []
        self.current = 0
        self._feedback = ""
        meta = {"task": self.task.id, "smoke": self.smoke, "seed": seed, "sandbox": self.sandbox.name,
                "reward": self.settings.reward, "verify": self.settings.verify}  # fmt: skip
        self.record = EpisodeRecord(self.runs_dir, self.task.name, meta)

    def _run_step(
        self, action: Any, index: int, seeds: list[int], started: float
    ) -> tuple[RunResult, str | None]:
        """Police, run and record one step; return its result and the script it made (if any)."""
        runner = self.runner
        try:
            record = self.record.step(index)
        except OSError as e:  # a full disk, a read-only runs_dir: the environment broke
            msg = f"could not create the step's folder under {self.record.path}: {e}"
            return runner.failed(index, Outcome.INFRA_ERROR, msg, seeds[0], started), None
        script: str | None = None
        base: int | None = None
        try:
            try:
                act = coerce_action(action, self.task.max_patch_bytes)
                record.write_action(act.model_dump())
                base = self.current if act.base is None else act.base
                base_script = self._base_script(base, index)
                applied = build_script(act, base_script, self.baseline, self.task)
            except (PatchError, PolicyError) as e:
                if not (record.path / "action.json").exists():
                    record.write_action({"unreadable": repr(action)[:10_000]})
                outcome = Outcome.REJECTED if isinstance(e, PolicyError) else Outcome.PATCH_FAILED
                result = runner.failed(index, outcome, str(e), seeds[0], started)
            else:
                script = applied.script
                record.write_text(self.task.script, script)
                record.write_text("patch.diff", make_diff(base_script, script, self.task.script))
                if (err := syntax_error(script, self.task.script)) is not None:
                    result = runner.failed(index, Outcome.CRASHED, err, seeds[0], started)
                else:
                    result = runner.run(
                        script, step=index, seeds=seeds, record=record, progress=self.progress
                    )
                result = result.model_copy(update={"notes": applied.notes + result.notes})
            result = result.model_copy(update={"base": base, "artifacts_dir": str(record.path)})
            record.finish(result)
        except Exception as e:  # the harness broke (disk, sandbox bug): never the agent's fault
            log.exception("step %d failed inside the harness", index)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                msg = f"the disk under {self.runs_dir} is full ({e}); free space and step again"
            else:
                msg = f"harness error: {e!r} (see the log of the harness)"
            result = runner.failed(index, Outcome.INFRA_ERROR, msg, seeds[0], started)
            result = result.model_copy(update={"base": base, "artifacts_dir": str(record.path)})
            try:
                record.finish(result)
            except OSError:
                log.exception("could not write %s", record.path)
        return result, script

    def _base_script(self, base: int, index: int) -> str:
        if base >= index:
            raise PatchError(
                f"base={base} names a step that has not run; steps 0..{index - 1} exist"
            )
        script = self.scripts[base]
        if script is None:
            raise PatchError(f"step {base} made no script (its action failed); pick another base")
        return script

    def _observation(self, result: RunResult | None) -> dict[str, Any]:
        curve = np.zeros((MAX_CURVE_POINTS, 3), dtype=np.float64)
        rows = [] if result is None else result.val_curve
        if len(rows) > MAX_CURVE_POINTS:  # keep the last point, thin the rest evenly
            picks = np.linspace(0, len(rows) - 1, MAX_CURVE_POINTS).round().astype(int)
            rows = [rows[i] for i in picks]
        for i, p in enumerate(rows):
            curve[i] = (p.step, _real(p.train_time_s), _real(p.val_loss))
        fb = self._feedback
        if len(fb) > MAX_FEEDBACK_CHARS:
            fb = fb[: MAX_FEEDBACK_CHARS - 20] + "\n[... truncated]"
        return {
            "script": self.script,
            "feedback": fb,
            "outcome": "" if result is None else result.outcome.value,
            "val_loss": np.array(_real(None if result is None else result.val_loss)),
            "train_time_s": np.array(_real(None if result is None else result.train_time_s)),
            "curve": curve,
            "curve_points": np.int64(len(rows)),
        }


def _real(x: float | None) -> float:
    """None and NaN become inf: "no usable number" (NaN is outside every Box)."""
    return math.inf if x is None or math.isnan(x) else float(x)


__all__ = ["Action", "SpeedrunEnv"]
