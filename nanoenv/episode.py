"""An episode's history, and one step in two halves: prepare (now) and execute (maybe later).

Preparing a step is quick and happens in order: the action is read, applied to its base
script and policed, and the episode's history learns the new script at once, so the next
action can build on it. Executing it (the sandbox run, verification, the record) can happen in
a worker thread: that is what lets a research loop keep several experiments in flight.
"""

from __future__ import annotations

import errno
import logging
import reprlib
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from nanoenv.actions.accept import build_script, coerce_action, syntax_error
from nanoenv.actions.patching import make_diff
from nanoenv.errors import PatchError, PolicyError
from nanoenv.judging.progress import (
    Reference,
    added_hypervolume,
    counts,
    record_fields,
    summary,
    time_points,
)
from nanoenv.judging.rewards import EPISODE_REWARDS
from nanoenv.judging.runner import ProgressFn, Runner
from nanoenv.records.artifacts import EpisodeRecord, StepRecord
from nanoenv.records.store import RunStore
from nanoenv.sandbox.base import CANCELLED
from nanoenv.types import Outcome, RunResult, TaskSpec

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """A prepared step: either a script to run, or a result already decided (a bad patch)."""

    index: int
    seeds: list[int]
    started: float
    record: StepRecord | None
    script: str | None = None
    result: RunResult | None = None
    base: int | None = None
    notes: list[str] = field(default_factory=list)
    action: dict[str, Any] = field(default_factory=dict)


class Episode:
    """The scripts and results of one episode; thread-safe."""

    def __init__(
        self,
        task: TaskSpec,
        baseline: str,
        runner: Runner,
        record: EpisodeRecord,
        store: RunStore | None = None,
    ) -> None:
        self.task = task
        self.runner = runner
        self.record = record
        self.store = store
        self.scripts: list[str | None] = [baseline]
        self.results: list[RunResult | None] = []
        self.current = 0
        self._lock = threading.Lock()
        # info["progress"] of each finished step: the episode's progress when it finished
        self.progress: dict[int, dict[str, Any]] = {}

    @property
    def baseline(self) -> str:
        script = self.scripts[0]
        assert script is not None
        return script

    @property
    def script(self) -> str:
        """The current script: what the next diff applies to by default."""
        script = self.scripts[self.current]
        assert script is not None
        return script

    def prepare(self, action: Any, seeds: list[int]) -> Pending:
        """Read, apply and police an action; give it the next step number. Never raises."""
        with self._lock:
            index = len(self.scripts)
            pending = Pending(index=index, seeds=seeds, started=time.monotonic(), record=None)
            self.scripts.append(None)
            self.results.append(None)
            try:
                self._prepare(pending, action)
            except Exception as e:  # a harness bug: the step still ends, on the record
                log.exception("preparing step %d failed inside the harness", index)
                pending.script = None
                pending.result = self.runner.failed(
                    index, Outcome.INFRA_ERROR, _harness_message(e, self.record), seeds[0],
                    pending.started,
                )  # fmt: skip
            folder = str(pending.record.path) if pending.record else None
            self._index(
                "begin", episode=self.record.episode_id, step=index, meta=self.record.meta,
                action=pending.action, artifacts_dir=folder,
            )  # fmt: skip
            self.scripts[index] = pending.script
            if pending.script is not None:
                self.current = index
        return pending

    def _prepare(self, p: Pending, action: Any) -> None:
        runner = self.runner
        try:
            p.record = self.record.step(p.index)
        except OSError as e:  # a full disk, a read-only runs_dir: the environment broke
            msg = f"could not create the step's folder under {self.record.path}: {e}"
            p.result = runner.failed(p.index, Outcome.INFRA_ERROR, msg, p.seeds[0], p.started)
            return
        try:
            act = coerce_action(action, self.task.max_patch_bytes, self.task.max_script_bytes)
            p.action = act.model_dump()
            p.record.write_action(p.action)
            p.base = self.current if act.base is None else act.base
            base_script = self._base_script(p.base, p.index)
            applied = build_script(act, base_script, self.baseline, self.task)
            p.script, p.notes = applied.script, applied.notes
            p.record.write_text(self.task.script, applied.script)
            p.record.write_text(
                "patch.diff", make_diff(base_script, applied.script, self.task.script)
            )
        except (PatchError, PolicyError) as e:
            if not (p.record.path / "action.json").exists():
                p.action = {"unreadable": _excerpt(action)}
                p.record.write_action(p.action)
            outcome = Outcome.REJECTED if isinstance(e, PolicyError) else Outcome.PATCH_FAILED
            p.result = runner.failed(p.index, outcome, str(e), p.seeds[0], p.started)
            return
        except OSError as e:  # the disk filled up or the runs dir went away mid-write
            msg = _harness_message(e, self.record)
            p.result = runner.failed(p.index, Outcome.INFRA_ERROR, msg, p.seeds[0], p.started)
            return
        if (err := syntax_error(applied.script, self.task.script)) is not None:
            p.result = runner.failed(p.index, Outcome.CRASHED, err, p.seeds[0], p.started)

    def _base_script(self, base: int, index: int) -> str:
        if base >= index:
            raise PatchError(
                f"base={base} names a step that has not run; steps 0..{index - 1} exist"
            )
        script = self.scripts[base]
        if script is None:
            raise PatchError(f"step {base} made no script (its action failed); pick another base")
        return script

    def execute(
        self, p: Pending, progress: ProgressFn | None = None, cancel: threading.Event | None = None
    ) -> RunResult:
        """Run a prepared step (if there is anything to run), record it, and keep its result."""
        result = p.result
        try:
            if result is None:
                assert p.script is not None and p.record is not None
                if cancel is not None and cancel.is_set():
                    result = self.runner.failed(
                        p.index, Outcome.INFRA_ERROR, CANCELLED, p.seeds[0], p.started
                    )
                else:
                    result = self.runner.run(p.script, step=p.index, seeds=p.seeds, record=p.record,
                                             progress=progress, cancel=cancel)  # fmt: skip
            result = result.model_copy(update={"notes": p.notes + result.notes})
            if p.record is not None:
                result = result.model_copy(
                    update={"base": p.base, "artifacts_dir": str(p.record.path)}
                )
                p.record.finish(result)
        except Exception as e:  # the harness broke (disk, sandbox bug): never the agent's fault
            log.exception("step %d failed inside the harness", p.index)
            result = self.runner.failed(
                p.index,
                Outcome.INFRA_ERROR,
                _harness_message(e, self.record),
                p.seeds[0],
                p.started,
            )
            if p.record is not None:
                result = result.model_copy(
                    update={"base": p.base, "artifacts_dir": str(p.record.path)}
                )
                try:
                    p.record.finish(result)
                except OSError:
                    log.exception("could not write %s", p.record.path)
        with self._lock:  # the frontier before and after this run, as one update
            pays = self.runner.settings.reward in EPISODE_REWARDS and result.train_time_s
            if pays and counts(result, self._trusted):
                prior = [self._baseline_point(), *time_points(self._done(), self._trusted)]
                new = (result.train_time_s, result.val_loss, result.step)
                gain = added_hypervolume(prior, new, self._reference())  # type: ignore[arg-type]
                result = result.model_copy(update={"reward": gain})
            self.results[p.index - 1] = result
            episode = self._progress()
            self.progress[p.index] = episode
        if p.record is not None and self.runner.settings.reward in EPISODE_REWARDS:
            try:
                p.record.finish(result)  # result.json with the reward the agent got
            except OSError:
                log.exception("could not write %s", p.record.path)
        self._index("finish", episode=self.record.episode_id, result=result,
                    progress=record_fields(episode))  # fmt: skip
        try:
            self.record.append_trajectory({
                "step": p.index, "action": p.action, "outcome": result.outcome.value,
                "reward": result.reward, "val_loss": result.val_loss,
                "train_time_s": result.train_time_s, "seed": result.seed,
                "script_sha256": result.script_sha256,
                "progress": record_fields(episode),
            })  # fmt: skip
        except OSError:
            log.exception("could not append to the trajectory of %s", self.record.path)
        return result

    @property
    def _trusted(self) -> bool:
        return self.runner.settings.trusts_log

    def summary(self) -> dict[str, Any]:
        """The episode's progress now (best loss, frontiers, hypervolumes)."""
        with self._lock:
            return self._progress()

    def _done(self) -> list[RunResult]:
        return [r for r in self.results if r is not None]

    def _reference(self) -> Reference:
        s = self.runner.settings
        return Reference.from_baseline(s.baseline_train_time_s, s.baseline_tokens,
                                       s.baseline_val_loss)  # fmt: skip

    def _baseline_point(self) -> tuple[float, float, int]:
        s = self.runner.settings
        return (s.baseline_train_time_s, s.baseline_val_loss, 0)

    def _progress(self) -> dict[str, Any]:
        """The episode's best loss, frontiers and hypervolumes over its finished steps."""
        s = self.runner.settings
        baseline = (s.baseline_train_time_s, s.baseline_tokens, s.baseline_val_loss)
        return summary(self._done(), self._reference(), baseline, self._trusted)

    def _index(self, what: str, **kwargs: Any) -> None:
        """Write to the run store; a store that fails costs the index a row, never the step."""
        if self.store is None:
            return
        try:
            getattr(self.store, what)(**kwargs)
        except Exception:
            log.exception("the run store %s could not be written", self.store.path)

    @property
    def finished(self) -> list[RunResult]:
        """The results of the steps that have finished, in step order."""
        with self._lock:
            return [r for r in self.results if r is not None]


def _excerpt(action: Any) -> str:
    """A bounded repr of an action that could not be read (it may be gigabytes)."""
    if isinstance(action, str | bytes | bytearray):
        return repr(action[:10_000])
    return reprlib.repr(action)


def _harness_message(e: Exception, record: EpisodeRecord) -> str:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"the disk under {record.runs_dir} is full ({e}); free space and step again"
    return f"harness error: {e!r} (see the log of the harness)"


class StepHandle:
    """A step in flight: ``done()``, ``result()`` (the five values of ``step``), ``cancel()``."""

    def __init__(self, future: Future, cancel_event: threading.Event, index: int) -> None:
        self._future = future
        self._cancel = cancel_event
        self.index = index

    def done(self) -> bool:
        """True once the step has finished (in any way)."""
        return self._future.done()

    def result(
        self, timeout: float | None = None
    ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Wait for the step; return ``(observation, reward, terminated, truncated, info)``."""
        return self._future.result(timeout)

    def cancel(self) -> None:
        """Stop the step: its run is killed and it ends as infra_error (no cost)."""
        self._cancel.set()
