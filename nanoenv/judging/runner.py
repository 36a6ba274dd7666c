"""Run a candidate script, judge it with what the harness measured, and reward it.

The environment (env.py) keeps the episode's history and calls :meth:`Runner.run`; this
module never touches gymnasium and knows sandboxes only through their protocol. A run is
judged in this order: did the job end well (exit, deadline, memory, output); did the data
stay intact; is there a timed window; and, with ``verify="full"``, does the re-evaluated
model agree with what the script reported. Only then is its loss held against the target.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from nanoenv.data import Manifest, prepare, verify_dataset
from nanoenv.errors import DataError, SandboxError
from nanoenv.judging import verify
from nanoenv.judging.gpu_telemetry import GpuSampler
from nanoenv.judging.rewards import get_reward
from nanoenv.judging.rules import (
    against_target,
    aggregate,
    classify_job,
    died_exiting,
    ended_early,
    first_error,
    integrity_ok,
    log_tail,
    rejection_message,
)
from nanoenv.judging.steps import tokens_to_target
from nanoenv.judging.telemetry import END_LINE, LogParser
from nanoenv.judging.timing import cores_check, harness_time, timing_checks
from nanoenv.sandbox.base import Sandbox, capabilities
from nanoenv.sandbox.gpus import GpuPool
from nanoenv.sandbox.slots import CpuPool
from nanoenv.settings import RunSettings, VerifyLevel
from nanoenv.types import (
    Check,
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
LOG_LEVEL_REASON = (
    "the baseline script defines no build_model(config), so the harness cannot reload its model "
    "(or verify='log' was asked for): the loss is as reported (verification level `log`); the "
    "clock and the data are still checked"
)


class Runner:
    """Runs candidate scripts of one task in one sandbox, and judges them."""

    def __init__(
        self,
        task: TaskSpec,
        sandbox: Sandbox,
        data_root: Path,
        manifest: Manifest,
        settings: RunSettings,
    ) -> None:
        self.task = task
        self.sandbox = sandbox
        self.data_root = data_root
        self.manifest = manifest
        self.settings = settings
        self.reward_fn = get_reward(settings.reward)
        self.damaged: str | None = None
        self._gpu_pool: GpuPool | None = None
        self._cpu_pool: CpuPool | None = None

    def job(self, script: str, seed: int, out_dir: Path) -> Job:
        """The sandbox job that runs ``script`` with the task's contract environment."""
        env = {
            "NANOENV_SEED": str(seed), "NANOENV_DEVICE": self.task.device, **self.task.env,
            # The training time the baseline took (+5%), on the clock the reward uses: a run
            # for loss_at_budget must have exited by then.
            "NANOENV_TIME_BUDGET_S": f"{self.settings.reward_context.budget_s:.3f}",
        }  # fmt: skip
        if self.settings.script_overrides:
            env["NANOENV_OVERRIDES"] = json.dumps(self.settings.script_overrides)
        limits = self.task.limits.model_copy(update={"timeout_s": self.settings.timeout_s})
        command = [part.replace("{procs}", str(self.task.processes)) for part in self.task.command]
        return Job(
            files={**self.task.modules, self.task.script: script},
            command=command,
            env=env,
            data_dir=self.data_root / "public",
            data_links=self.task.data.record_layout,
            masked=[self.data_root / "hidden"],  # never in reach while a run trains
            out_dir=out_dir,
            limits=limits,
            gpus=self.task.gpus,
            labels={"nanoenv.task": self.task.id, "nanoenv.role": "train"},
            end_line=END_LINE,
        )

    def run_job(self, job: Job, on_line: Any, cancel: threading.Event | None) -> JobResult:
        """Run a job in the sandbox, on GPUs and CPU cores no other nanoenv job is using.

        Ray places jobs itself. A local or docker job first takes k free GPU ids and then its
        CPU slots from the machine's pools (GPUs first, so no job holds cores while it waits),
        held until the job ends however it ends. The wait is not part of the job's time. While
        it runs, its GPUs' utilisation and memory are sampled into its telemetry (not on Ray,
        whose GPU ids the harness does not know).
        """
        if capabilities(self.sandbox).schedules_resources:
            return self.sandbox.run(job, on_line, cancel)
        k = job.gpus if isinstance(job.gpus, int) else 0
        t0 = time.monotonic()
        try:
            with ExitStack() as held:
                if k:
                    self._gpu_pool = self._gpu_pool or GpuPool()
                    ids = held.enter_context(
                        self._gpu_pool.allocate(k, timeout_s=job.limits.timeout_s, cancel=cancel)
                    )
                    job = job.model_copy(update={"gpus": ids})
                self._cpu_pool = self._cpu_pool or CpuPool()
                held.enter_context(
                    self._cpu_pool.allocate(
                        self._cpu_pool.slots_for(job.limits.cpus), cancel=cancel
                    )
                )
                waited = time.monotonic() - t0
                # The harness reads the job's GPUs itself (NVML), from outside the job.
                gpu = held.enter_context(GpuSampler(job.gpus if k else []))
                result = self.sandbox.run(job, on_line, cancel)
        except SandboxError as e:
            return JobResult(infra_error=str(e))
        result.telemetry.update(gpu.summary())
        if waited >= 0.5:
            result.telemetry["slot_wait_s"] = round(waited, 2)
        return result

    # ------------------------------------------------------------------ one step

    def run(
        self,
        script: str,
        *,
        step: int,
        seeds: list[int],
        record: Any,
        progress: ProgressFn | None,
        cancel: threading.Event | None = None,
    ) -> RunResult:
        """Run ``script`` once per seed, judge every run, and reward the step."""
        if len(seeds) == 1:
            return self.rewarded(self.run_once(script, step, seeds[0], record, progress, cancel))
        runs = []
        for k, seed in enumerate(seeds, start=1):
            sub = record.sub(f"repeat-{k}")
            result = self.run_once(script, step, seed, sub, progress, cancel)
            sub.finish(result)
            runs.append(result)
            if result.outcome not in (Outcome.OK, Outcome.MISSED_TARGET):
                break  # one failed run decides the step; the rest would cost time for nothing
        result = aggregate(runs, self.settings.target_val_loss)
        curves = [r.curve for r in runs]
        tokens = tokens_to_target(curves, self.task.target_val_loss)
        return self.rewarded(result.model_copy(update={"tokens_to_target": tokens}))

    def run_once(
        self,
        script: str,
        step: int,
        seed: int,
        record: Any,
        progress: ProgressFn | None,
        cancel: threading.Event | None = None,
    ) -> RunResult:
        """One run in the sandbox, judged (not yet rewarded)."""
        if self.damaged:
            return self.failed(step, Outcome.INFRA_ERROR, self.damaged, seed, time.monotonic())
        parser = LogParser()

        def on_line(line: StampedLine) -> None:
            record.log_line(line)
            point = parser.feed(line.text, line.t) if line.stream == "stdout" else None
            if point is not None and progress is not None:
                progress(step, point)

        record.open_log()
        try:
            job_result = self.run_job(self.job(script, seed, record.out_dir), on_line, cancel)
        finally:
            record.close_log()
        clock = harness_time(parser.points, self.task.timing, job_result.exit_s)
        last = parser.last_val
        result = RunResult(
            step=step,
            outcome=Outcome.OK,
            val_loss=last.val_loss if last else None,
            reported_val_loss=last.val_loss if last else None,
            train_time_s=clock.train_s,
            reported_train_time_s=clock.reported_s,
            wall_time_s=job_result.wall_time_s,
            curve=parser.points,
            log_tail=log_tail(job_result.lines),
            error=first_error(job_result.lines) if job_result.exit_code else "",
            exit_code=job_result.exit_code,
            seed=seed,
            script_sha256=hashlib.sha256(script.encode()).hexdigest(),
            # on the reported curve, so against the target of the reported loss
            tokens_to_target=tokens_to_target([parser.points], self.task.target_val_loss),
            telemetry={
                **job_result.telemetry,
                **({"untimed_s": clock.untimed_s} if clock.untimed_s is not None else {}),
                **({"harness_window_s": clock.window_s} if clock.window_s is not None else {}),
                **(
                    {"after_last_val_s": clock.after_last_val_s}
                    if clock.after_last_val_s is not None
                    else {}
                ),
                **({"ended_at_end_line": 1.0} if job_result.ended_at_end_line else {}),
            },
            notes=list(job_result.notes),
        )
        checks: list[Check] = []
        if (integrity := self._check_data()) is not None:
            checks.append(integrity)
        ended = classify_job(job_result, parser)
        if exited_badly := died_exiting(job_result, parser):
            result.notes.append(exited_badly)
        written = {p.name for p in record.out_dir.iterdir()} if record.out_dir.is_dir() else set()
        if cut_short := ended_early(job_result, parser, written):
            result.notes.append(cut_short)
        if ended is not None:
            outcome, message = ended
            verdict = Verdict(
                level=VerifyLevel.NONE,
                reason="the run did not finish: nothing to verify",
                checks=checks,
            )
            if not integrity_ok(checks):
                outcome, message = (
                    Outcome.REJECTED,
                    f"the harness's check data_integrity failed: expected {checks[0].detail}",
                )
            return result.model_copy(
                update={"outcome": outcome, "message": message, "verdict": verdict}
            )
        level = self.settings.level
        if level is not VerifyLevel.NONE:
            checks += timing_checks(clock, self.task.timing)
            cpu_s = job_result.telemetry.get("cpu_time_s")
            if cores := cores_check(cpu_s, job_result.wall_time_s, self.task.limits.cpus):
                checks.append(cores)
        if level is VerifyLevel.LOG:
            verdict = Verdict(level=level, checks=checks, reason=LOG_LEVEL_REASON)
        elif level is VerifyLevel.FULL:
            try:
                result, verdict = self._verify(result, script, record, checks, cancel)
            except _InfraError as e:
                return result.model_copy(update={"outcome": Outcome.INFRA_ERROR, "message": str(e)})
        else:
            verdict = Verdict(
                level=VerifyLevel.NONE,
                checks=checks,
                reason="verify='none': the loss is as the script reported it; the harness did "
                "not re-evaluate the model",
            )
        if verdict.failed:
            return result.model_copy(update={
                "outcome": Outcome.REJECTED, "message": rejection_message(verdict), "verdict": verdict,
            })  # fmt: skip
        outcome, message = against_target(result.val_loss, self.settings.target_val_loss)
        return result.model_copy(
            update={"outcome": outcome, "message": message, "verdict": verdict}
        )

    def _verify(
        self,
        result: RunResult,
        script: str,
        record: Any,
        checks: list[Check],
        cancel: threading.Event | None = None,
    ) -> tuple[RunResult, Verdict]:
        """Re-evaluate the model in a fresh sandbox; the verified loss replaces the reported one."""
        # Windows, twins and cuts come from a seed the candidate cannot know (not its own).
        seed = secrets.randbits(32)
        rng = np.random.default_rng(seed)
        eval_set = verify.load_eval_set(self.data_root, self.manifest, self.task.verify, rng)
        found = verify.reevaluate(
            lambda job: self.run_job(job, None, cancel),
            self.task,
            script,
            record.out_dir,
            eval_set,
            rng,
            keep_dir=record.path / "verify",
            masked=[self.data_root],
        )
        if found.infra_error:
            raise _InfraError(found.infra_error)
        if found.error:
            detail = f"the saved model to load through build_model; found: {found.error}"
            checks.append(Check(name="model_loads", passed=False, detail=detail))
            return result, Verdict(level=VerifyLevel.FULL, verified=False, checks=checks,
                                   reason=f"the harness could not re-evaluate the model: {found.error}")  # fmt: skip
        n = found.numbers
        checks.append(Check(name="model_loads", passed=True, detail="build_model + the checkpoint",
                            numbers={"parameters": n["parameters"], "verify_seed": float(seed)}))  # fmt: skip
        checks += verify.model_checks(n, result.reported_val_loss, self.task.verify)
        if (
            tp := verify.throughput_check(
                result.curve, n["parameters"], result.train_time_s or 0, self.task.verify
            )
        ) is not None:
            checks.append(tp)
        verified = all(c.passed for c in checks)
        verdict = Verdict(level=VerifyLevel.FULL, verified=verified, checks=checks,
                          reason="" if verified else "a check failed")  # fmt: skip
        # Every position was scored (or audited): the verified loss replaces the reported one.
        update = {"hidden_val_loss": n["hidden_loss"]}
        update["val_loss"] = n["hidden_loss"] if self.settings.scores_hidden else n["public_loss"]
        return result.model_copy(update=update), verdict

    def _check_data(self) -> Check | None:
        """Every shard must still match its sha256; damaged data is rebuilt or blocks the env."""
        try:
            verify_dataset(self.data_root, full=True)
            return None
        except DataError as e:
            detail = f"every data shard to keep its sha256 through the run; found: {e}"
        log.error(detail)
        if self.task.data.auto_prepare:
            try:
                prepare(self.task.data.dataset, force=True)
            except Exception as e:  # repairing failed: every later step must say so
                self.damaged = f"the dataset is damaged and could not be rebuilt ({e}); run `nanoenv data prepare --force`"
        else:
            self.damaged = f"the dataset is damaged; run `nanoenv data prepare {self.task.data.dataset} --force`"
        return Check(name="data_integrity", passed=False, detail=detail)

    # ------------------------------------------------------------------ rewards

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
        """A result for a step that never reached (or never finished in) the sandbox."""
        return self.rewarded(
            RunResult(
                step=step,
                outcome=outcome,
                message=message,
                wall_time_s=round(time.monotonic() - started, 4),
                seed=seed,
                verdict=Verdict(level=VerifyLevel.NONE, reason="the script did not run"),
            )
        )


class _InfraError(Exception):
    """The verifier's sandbox failed: the step is an infra error, not the agent's fault."""
