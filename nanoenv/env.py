"""SpeedrunEnv: the gymnasium glue around a task, a sandbox and a runner."""

from __future__ import annotations

import logging
import math
import threading
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from nanoenv import feedback
from nanoenv.data import ensure_dataset
from nanoenv.episode import Episode, Pending, StepHandle
from nanoenv.judging.runner import ProgressFn, Runner
from nanoenv.records.artifacts import EpisodeRecord
from nanoenv.records.store import RunStore
from nanoenv.sandbox import Sandbox, capabilities, make_sandbox
from nanoenv.settings import resolve
from nanoenv.spaces import MAX_CURVE_POINTS, MAX_FEEDBACK_CHARS, action_space, observation_space
from nanoenv.tasks import DEFAULT_TASK
from nanoenv.types import Action, Outcome, RunResult, TaskSpec

log = logging.getLogger(__name__)
# How long close() waits for cancelled runs to end before it closes their sandbox.
CLOSE_WAIT_S = 60.0


class SpeedrunEnv(gym.Env[dict[str, Any], Any]):
    """## Description

        The NanoGPT speedrun as an environment. The state is a training script; an action patches
        it; a step runs the patched script in a sandbox on a fixed slice of data and reports the
        loss curve, the training time, a verdict and a reward. Research is open-ended, so an
        episode is a sequence of experiments: each step's script may build on the previous one,
        or branch from any earlier step.

        ## Action Space

        A ``str`` holding an edit of the current script (``""`` reruns it unchanged): a unified
        diff, an apply_patch envelope or SEARCH/REPLACE blocks (README, Actions),
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

        Computed from what the harness measured: the re-evaluated loss (``verify="full"``; on the
        tiny track the loss on hidden val windows, which no run sees) and the harness's clock
        (process start to the run's end line, or the exit of its last process).
        ``time_to_target`` (default): log(baseline time / time) when the outcome is ``ok`` (the
        target met, with repeats at p < 0.01), else a penalty from -0.05 to -1 growing with the
        miss. ``loss_at_budget``: the
        baseline's loss minus the run's verified loss, for a run that ended within the baseline's
        time + 5 % (``NANOENV_TIME_BUDGET_S``); an overrun is penalised. ``frontier``: the
        hypervolume a run adds to the episode's (time, loss) frontier (nanoenv.judging.progress), beyond
        noise. ``record``: log(record time / time) for a run that meets the target more than 5 %
        faster than the record book's current record here, 0 for one no faster (nanoenv.claims).
        Failures and rejections cost -1; ``infra_error`` 0. ``info["progress"]``: the best
        loss so far, both Pareto frontiers and their hypervolumes.

        ## Episode End

        ``truncated`` once ``max_steps`` steps are taken. ``terminated`` never, unless
        ``terminate_on_success=True``: then on the first verified step that meets the target
        (significantly, with repeats) faster than the baseline.

        ## Arguments

        ``task`` (an id, a task folder's path, or a TaskSpec), ``sandbox`` (``"local"``,
        ``"docker"``, ``"ray"`` or a Sandbox), ``verify`` (``"full"``: re-evaluate the model and
        run every check; ``"log"``: check the clock and the data, not the model; ``"none"``: trust
        the log; nanoenv.settings.resolve decides the rest from these), ``repeats`` (runs per step; with 2 or more,
        "meets the target" needs p < 0.01), ``reward``, ``runs_dir`` (default ``./nanoenv-runs``), ``smoke`` (a few-seconds size for
        tests), ``max_steps``, ``timeout_s`` (each run's deadline), ``baseline`` (your own script
        as the baseline, e.g. a modded-nanogpt record; without ``build_model`` it runs at
        verification level ``log``), ``progress`` (a callback ``(step, LossPoint)`` called as each log
        point arrives), ``terminate_on_success``, ``start`` (``"baseline"``, or ``"record"``: step 0 is
    the current record's script from ``runs_dir``'s record book); other keywords override
    task.toml fields.

        ## Version History

        * v0: first release. Since 2026-12-01 (anti-gaming rules, not a new task): time runs to
          the job's exit, the tiny track scores hidden val against ``target_hidden_loss``, the GPU
          tracks audit every position, identical repeats are rejected. Rewards from before are not
          comparable with later ones; paired baselines measured before are not reused.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}

    def __init__(
        self,
        task: str | TaskSpec = DEFAULT_TASK,
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
        max_in_flight: int | None = None,
        paired_baseline: bool | None = None,
        start: str = "baseline",
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        sandbox_name = sandbox if isinstance(sandbox, str) else sandbox.name
        resolved = resolve(
            task, sandbox=sandbox_name, verify=verify, repeats=repeats, reward=reward,
            smoke=smoke, max_steps=max_steps, timeout_s=timeout_s, baseline=baseline,
            paired_baseline=paired_baseline, overrides=overrides, start=start,
            runs_dir=runs_dir,
        )  # fmt: skip
        self.task, self.baseline, self.settings = (
            resolved.task,
            resolved.baseline,
            resolved.settings,
        )
        self.max_steps, self.baseline_measured_on = resolved.max_steps, resolved.measured_on
        self.start_script = resolved.start_script
        # what step 0 is: the baseline, or (start="record") the record it was taken from
        self.start_label = (
            "baseline" if self.start_script == self.baseline else self.settings.record_label
        )
        if isinstance(sandbox, str):
            self.sandbox = make_sandbox(sandbox, gpus=bool(self.task.gpus))
        else:
            self.sandbox = sandbox
        data_root, manifest = ensure_dataset(self.task.data)
        self.runner = Runner(self.task, self.sandbox, data_root, manifest, self.settings)
        self.runs_dir = Path(runs_dir) if runs_dir is not None else Path("nanoenv-runs")
        self.progress = progress
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.observation_space = observation_space(self.task.max_script_bytes)
        self.action_space = action_space(self.task.max_patch_bytes)
        # Runs in flight at once: as many as the backend says it can hold by default (a local
        # or docker sandbox shares this machine's cores, so one; Ray schedules by resources).
        in_flight = max_in_flight or capabilities(self.sandbox).default_in_flight
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="nanoenv-step")
        self._in_flight: dict[Future, threading.Event] = {}  # running or queued: their cancels
        self._new_episode()

    # ------------------------------------------------------------------ gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the baseline script and return the task's brief."""
        super().reset(seed=seed)
        self._new_episode(seed)
        self._feedback = feedback.brief(
            self.task, self.settings, sandbox=self.sandbox.name,
            max_steps=self.max_steps, measured_on=self.baseline_measured_on,
            containment=self.containment, start=self.start_label,
        )  # fmt: skip
        obs = self._observation(None)
        info = {
            "task": self.task.id,
            "target_val_loss": self.settings.target_val_loss,
            "baseline_train_time_s": self.settings.baseline_train_time_s,
            "baseline_measured_on": self.baseline_measured_on,
        }
        return obs, info

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Run one candidate script and report it. Never raises for what the agent sent."""
        return self.submit(action).result()

    def submit(self, action: Any) -> StepHandle:
        """Start a step and return at once: ``handle.result()`` gives what ``step`` would.

        The action is applied now, in order, so the next action builds on it; the run happens
        in a worker, with at most ``max_in_flight`` of this env's runs at a time.
        """
        seeds: list[int] = []
        while len(seeds) < self.settings.repeats:  # every repeat of a step has its own seed
            if (seed := int(self.np_random.integers(2**31 - 1))) not in seeds:
                seeds.append(seed)
        pending = self.episode.prepare(action, seeds)
        cancel = threading.Event()
        future = self._pool.submit(self._complete, self.episode, pending, cancel)
        self._in_flight[future] = cancel
        future.add_done_callback(lambda f: self._in_flight.pop(f, None))
        return StepHandle(future, cancel, pending.index)

    def _complete(
        self, episode: Episode, pending: Pending, cancel: threading.Event
    ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        result = episode.execute(pending, self.progress, cancel)
        report = feedback.report(result, self.settings, current_step=episode.current)
        if episode is self.episode:
            self._feedback = report
        # Success means a verified run (under verify="full") that meets the target (with
        # repeats, significantly) faster than the baseline.
        terminated = bool(
            self.terminate_on_success
            and result.outcome is Outcome.OK
            and result.reward > 0
            and (result.verdict.verified or self.settings.trusts_log)
        )
        truncated = pending.index >= self.max_steps
        script = pending.script if pending.script is not None else episode.script
        obs = self._observation(result, script=script, fb=report)
        # info["progress"], not info["episode"]: gymnasium's RecordEpisodeStatistics writes
        # "episode" at an episode's end and asserts that the env did not.
        info = {
            "result": result,
            "progress": episode.progress.get(pending.index) or episode.summary(),
        }
        return obs, result.reward, terminated, truncated, info

    def render(self) -> str | None:
        """With ``render_mode="ansi"``, the last report as text."""
        return self._feedback if self.render_mode == "ansi" else None

    def close(self) -> None:
        """Stop what is in flight and release the sandbox: queued steps never start, running
        ones are cancelled (their jobs killed, each step ending as infra_error with its record
        on disk), and the sandbox closes only once they have ended (or CLOSE_WAIT_S passed)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        running = dict(self._in_flight)
        for cancel in running.values():
            cancel.set()
        futures.wait(list(running), timeout=CLOSE_WAIT_S)
        self.sandbox.close()

    # ------------------------------------------------------------------ episode state

    @property
    def smoke(self) -> bool:
        """Whether the env runs the task at its smoke size (resolved into the settings)."""
        return self.settings.smoke

    @property
    def containment(self) -> str:
        """What isolates a run from the host, in a phrase (every brief says it)."""
        return str(getattr(self.sandbox, "containment", self.sandbox.name))

    @property
    def script(self) -> str:
        """The current script: what the next diff applies to by default."""
        return self.episode.script

    @property
    def scripts(self) -> list[str | None]:
        """The script of every step so far (index 0: the baseline; None: the action failed)."""
        return self.episode.scripts

    @property
    def results(self) -> list[RunResult]:
        """The results of the finished steps, in step order."""
        return self.episode.finished

    @property
    def current(self) -> int:
        """The step whose script the next diff applies to by default."""
        return self.episode.current

    @property
    def episode_dir(self) -> Path:
        """This episode's artifact folder (made at its first step)."""
        return self.episode.record.path

    def _new_episode(self, seed: int | None = None) -> None:
        meta = {"task": self.task.id, "smoke": self.smoke, "seed": seed, "sandbox": self.sandbox.name,
                "reward": self.settings.reward, "verify": self.settings.level.value,
                "repeats": self.settings.repeats, "fingerprint": self.baseline_measured_on,
                "target_val_loss": self.settings.target_val_loss,
                "curve_target": self.settings.curve_target,
                "start": self.start_label}  # fmt: skip
        record = EpisodeRecord(self.runs_dir, self.task.name, meta)
        store = RunStore(self.runs_dir)
        self.episode = Episode(self.task, self.start_script, self.runner, record, store)
        self._feedback = ""

    def _observation(
        self, result: RunResult | None, *, script: str | None = None, fb: str | None = None
    ) -> dict[str, Any]:
        curve = np.zeros((MAX_CURVE_POINTS, 3), dtype=np.float64)
        rows = [] if result is None else result.val_curve
        if len(rows) > MAX_CURVE_POINTS:  # keep the last point, thin the rest evenly
            picks = np.linspace(0, len(rows) - 1, MAX_CURVE_POINTS).round().astype(int)
            rows = [rows[i] for i in picks]
        for i, p in enumerate(rows):
            curve[i] = (p.step, _real(p.train_time_s), _real(p.val_loss))
        fb = self._feedback if fb is None else fb
        if len(fb) > MAX_FEEDBACK_CHARS:
            fb = fb[: MAX_FEEDBACK_CHARS - 20] + "\n[... truncated]"
        return {
            "script": self.script if script is None else script,
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
