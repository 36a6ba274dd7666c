"""Pydantic models shared by every room of nanoenv.

This module imports only pydantic and the standard library (a boundary of the layout), so the
sandbox backends, the CLI and users' own code can all speak these types cheaply.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# NaN and inf are real measurements here (a diverged run); keep them in JSON as the
# constants Python's json module reads back, not as null.
_MODEL_CONFIG = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class Outcome(str, Enum):
    """How a step ended. The values are public strings: observations, records and the store
    carry them, and they never change meaning."""

    OK = "ok"
    MISSED_TARGET = "missed_target"
    PATCH_FAILED = "patch_failed"
    REJECTED = "rejected"
    CRASHED = "crashed"
    TIMED_OUT = "timed_out"
    INFRA_ERROR = "infra_error"

    def __str__(self) -> str:
        return self.value


# --------------------------------------------------------------------------- actions


class Action(BaseModel):
    """One move of the agent: a unified diff or a whole script, optionally from an earlier step.

    Attributes:
        diff: An edit of the base script: a unified diff (bare ``@@`` hunks too), an
            apply_patch envelope or SEARCH/REPLACE blocks. An empty string is a no-op.
        script: The whole new script, instead of a diff.
        base: The step whose script the change applies to (0 = the baseline). ``None``
            means the script of the previous step, so edits accumulate.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    diff: str | None = None
    script: str | None = None
    base: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_change(self) -> Action:
        if self.diff is not None and self.script is not None:
            raise ValueError("give either `diff` or `script`, not both")
        return self

    @property
    def is_noop(self) -> bool:
        """True when the action changes nothing (it reruns its base script)."""
        return self.script is None and not (self.diff or "").strip()


# --------------------------------------------------------------------------- telemetry


class LossPoint(BaseModel):
    """One `step:` log line of a training script, as reported, plus the harness receipt time.

    A line that carries only timing (``step:5/100 train_time:.. step_avg:..``) is a point
    with neither loss set.
    """

    model_config = _MODEL_CONFIG

    step: int
    total_steps: int | None = None
    val_loss: float | None = None
    train_loss: float | None = None
    train_time_ms: float | None = None
    step_avg_ms: float | None = None
    received_s: float | None = None
    extra: dict[str, str] = Field(default_factory=dict)

    @property
    def train_time_s(self) -> float | None:
        """The reported training time in seconds."""
        return None if self.train_time_ms is None else self.train_time_ms / 1000.0


class StampedLine(BaseModel):
    """A line of a job's output with the harness clock (seconds since the job started)."""

    model_config = ConfigDict(extra="forbid")

    t: float
    stream: Literal["stdout", "stderr"] = "stdout"
    text: str


# --------------------------------------------------------------------------- verification


class Check(BaseModel):
    """One verification or integrity check and its numbers."""

    model_config = _MODEL_CONFIG

    name: str
    passed: bool
    detail: str = ""
    numbers: dict[str, float] = Field(default_factory=dict)


class VerifyLevel(str, Enum):
    """How much of a run the harness re-measures: asked for by the user, lowered to ``log``
    when the baseline cannot be reloaded, and recorded in every verdict."""

    NONE = "none"  # the loss is as the script reported it; only the run's end is judged
    LOG = "log"  # the clock, the data and the protected regions are checked; the model is not reloaded
    FULL = "full"  # the saved model is re-evaluated (public and hidden val), with every check

    @classmethod
    def parse(cls, value: str | VerifyLevel) -> VerifyLevel:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(repr(v.value) for v in cls)
            raise ValueError(f"verify must be one of {names}, got {value!r}") from None


class Verdict(BaseModel):
    """What the harness could confirm about a run.

    ``level`` is what was attempted: ``none`` (nothing re-measured), ``log`` (the log was
    read and policed but the model was not re-evaluated), ``full`` (independent evaluation).
    """

    model_config = _MODEL_CONFIG

    level: VerifyLevel = VerifyLevel.NONE
    verified: bool = False
    reason: str = ""
    checks: list[Check] = Field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        """The checks that did not pass."""
        return [c for c in self.checks if not c.passed]


# --------------------------------------------------------------------------- results


class Significance(BaseModel):
    """Repeated runs against the target: a one-sided t-test, the speedrun's rule (p < 0.01)."""

    model_config = _MODEL_CONFIG

    n: int
    losses: list[float]
    times_s: list[float]
    mean: float
    std: float
    target: float
    p_value: float | None = None
    significant: bool = False


class RunResult(BaseModel):
    """Everything the harness knows about one step. Written last as ``result.json``."""

    model_config = _MODEL_CONFIG

    step: int
    outcome: Outcome
    reward: float = 0.0
    message: str = ""
    val_loss: float | None = None
    train_time_s: float | None = None
    wall_time_s: float = 0.0
    reported_val_loss: float | None = None
    reported_train_time_s: float | None = None
    hidden_val_loss: float | None = None
    curve: list[LossPoint] = Field(default_factory=list)
    verdict: Verdict = Field(default_factory=Verdict)
    significance: Significance | None = None
    log_tail: str = ""
    # The first exception in the output and its last frames (a torchrun worker's, not the
    # launcher's summary), for a run that crashed.
    error: str = ""
    artifacts_dir: str | None = None
    exit_code: int | None = None
    seed: int | None = None
    base: int | None = None
    script_sha256: str | None = None
    telemetry: dict[str, float] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    # The steps objective (nanoenv.judging.steps): training tokens at the first val point at or below
    # the target on the reported curve (with repeats, significantly below). As reported: no
    # reward reads it.
    tokens_to_target: int | None = None

    @property
    def val_curve(self) -> list[LossPoint]:
        """The points of the curve that carry a validation loss."""
        return [p for p in self.curve if p.val_loss is not None]

    @property
    def finite_val_loss(self) -> bool:
        """True when the final validation loss is a real number."""
        return self.val_loss is not None and math.isfinite(self.val_loss)


# --------------------------------------------------------------------------- sandbox jobs


class Limits(BaseModel):
    """Resource limits of one job."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = 600.0
    memory_mb: int | None = None
    cpus: float | None = None
    pids: int | None = 1024
    max_output_bytes: int = 16 * 1024 * 1024
    max_file_bytes: int = 4 * 1024**3
    # What a job may leave in NANOENV_OUT_DIR for the host to keep: the rest is dropped, noted.
    max_out_bytes: int = 2 * 1024**3
    max_out_files: int = 64
    shm_mb: int = 256


class Job(BaseModel):
    """A command to run in a fresh workspace holding ``files``.

    ``data_dir`` and ``input_dir`` are exposed read-only as ``NANOENV_DATA_DIR`` and
    ``NANOENV_INPUT_DIR``; ``out_dir`` on the host receives what the job wrote to
    ``NANOENV_OUT_DIR``. ``masked`` host paths must not be visible to the job (a sandbox that
    shares the host's file system hides them; one that does not, never shows them).
    """

    model_config = ConfigDict(extra="forbid")

    files: dict[str, str]
    command: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    data_dir: Path | None = None
    input_dir: Path | None = None
    out_dir: Path | None = None
    masked: list[Path] = Field(default_factory=list)
    # Each shard NAME of data_dir is also linked read-only at data_links + NAME in the job's
    # working directory (DataSpec.record_layout).
    data_links: str | None = None
    limits: Limits = Field(default_factory=Limits)
    gpus: int | list[int] = 0
    network: bool = False
    labels: dict[str, str] = Field(default_factory=dict)
    # A stdout line that begins with this ends the job: the sandbox stops every process of it
    # at once and the job counts as having exited 0 (telemetry.END_LINE, for training runs).
    end_line: str | None = None


class JobResult(BaseModel):
    """What came back from a job. ``infra_error`` is set when the sandbox, not the job, failed."""

    model_config = ConfigDict(extra="forbid")

    exit_code: int | None = None
    lines: list[StampedLine] = Field(default_factory=list)
    wall_time_s: float = 0.0
    timed_out: bool = False
    oom: bool = False
    output_truncated: bool = False
    infra_error: str | None = None
    notes: list[str] = Field(default_factory=list)
    telemetry: dict[str, float] = Field(default_factory=dict)
    # Harness clock (seconds since the job started) when every process of the job was gone:
    # the end of the work the reward times. None when the sandbox could not tell.
    exit_s: float | None = None
    # True when the job printed its end line (Job.end_line) and the sandbox ended it there.
    ended_at_end_line: bool = False

    @property
    def ended_on_its_own(self) -> bool:
        """True when the harness did not end the job (no deadline, memory or output kill, no
        infrastructure failure), whatever its exit code."""
        return (
            not self.timed_out
            and not self.oom
            and not self.output_truncated
            and self.infra_error is None
        )

    @property
    def ok(self) -> bool:
        """True when the job exited 0 on its own."""
        return self.exit_code == 0 and self.ended_on_its_own


# --------------------------------------------------------------------------- tasks


class DataSpec(BaseModel):
    """Which dataset a task trains on and the manifest hash it expects."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    manifest_sha256: str | None = None
    auto_prepare: bool = False
    # Where a modded-nanogpt record looks for the shards, relative to its working directory:
    # each public shard NAME is also offered there as PREFIX + NAME (train_000001.bin as
    # data/fineweb10B/fineweb_train_000001.bin), so a record runs without edits to its paths.
    record_layout: str | None = None


class BaselineSpec(BaseModel):
    """The baseline's numbers, measured on ``hardware``."""

    model_config = ConfigDict(extra="forbid")

    val_loss: float
    train_time_s: float
    # The baseline's verified loss on the hidden val windows (see TaskSpec.target_hidden_loss).
    hidden_loss: float | None = None
    # The training tokens the baseline trains on: the steps objective's yardstick.
    tokens: int | None = None
    wall_time_s: float | None = None
    hardware: str = ""
    measured: str = ""


class SmokeSpec(BaseModel):
    """A few-seconds version of the task, for tests: script overrides, its own numbers, and
    where it differs from the full task (a CPU device, a small dataset, fewer processes)."""

    model_config = ConfigDict(extra="forbid")

    overrides: dict[str, Any] = Field(default_factory=dict)
    target_val_loss: float
    target_hidden_loss: float | None = None
    baseline_train_time_s: float
    baseline_tokens: int | None = None
    timeout_s: float = 120.0
    dataset: str | None = None
    device: Literal["cpu", "cuda"] | None = None
    processes: int | None = None
    gpus: int | None = None
    env: dict[str, str] = Field(default_factory=dict)
    verify: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)


class TimingSpec(BaseModel):
    """How the harness times a run from the receipt stamps of its log lines.

    The timed window runs from the first ``val_loss`` line (step 0, after warm-up such as
    compilation) to the last; evaluations inside it count, for the baseline and candidates
    alike. Work before the window is free up to ``untimed_allowance_s`` and charged beyond
    it; past ``max_untimed_s`` the run is rejected.
    """

    model_config = ConfigDict(extra="forbid")

    window: Literal["first_val_to_last_val"] = "first_val_to_last_val"
    untimed_allowance_s: float = 10.0  # free warm-up; beyond it, time is charged
    max_untimed_s: float = 60.0  # beyond this, the run is rejected
    # The script's own train_time leaves evaluations out; below this share of the harness
    # window it no longer describes the run (a frozen clock, a replayed log).
    min_reported_fraction: float = 0.3


class VerifySpec(BaseModel):
    """How the harness re-evaluates a run's model (see nanoenv.judging.verify)."""

    model_config = ConfigDict(extra="forbid")

    eval_seq_len: int = 128
    public_tokens: int = 16384  # the first ones of public val: what the script reports on
    hidden_tokens: int = 16384  # windows drawn across hidden val, and as many across public val
    batch_size: int = 32
    causal_pairs: int = 16
    duplicates: int = 16
    # Big vocabularies (GPT-2's: the logits of every position would be gigabytes) are audited
    # instead: the worker returns the log-prob of every next token, and a second, fresh worker
    # returns raw logits at this many positions drawn only after the first has answered; the
    # harness's own log-softmax there must match (see nanoenv.judging.audit). None: raw logits at every
    # position, scored by the harness alone.
    audit_positions: int | None = None
    # The autocast dtype the model is evaluated in on CUDA (the speedrun evaluates in bfloat16).
    autocast: Literal["bfloat16", "float16"] | None = None
    timeout_s: float = 180.0
    logprob_tolerance: float = 2e-3
    report_tolerance: float = 0.01
    # hidden val (spread) may score this much worse than public val drawn the same way
    max_gap: float = 0.1
    # the reported region may score this much better than public val at large: a few passages
    # are easier or harder than the average, so this allows what honest recipes were measured at
    max_region_gap: float = 0.3
    min_val_loss: float = 0.0
    peak_flops: float | None = None


class ProtectedRegion(BaseModel):
    """A named region of the script, between marker comments, that a patch may not change."""

    model_config = ConfigDict(extra="forbid")

    name: str
    why: str = ""


class TaskSpec(BaseModel):
    """A task: loaded from ``envs/<task>/task.toml`` by :mod:`nanoenv.tasks`."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    title: str = ""
    description: str = ""
    script: str = "train.py"
    source: str | None = None  # the baseline's file, relative to the task folder (default: script)
    command: list[str]
    device: Literal["cpu", "cuda"] = "cpu"
    gpus: int = 0
    processes: int = 1  # {procs} in the command: torchrun's --nproc_per_node
    # The target on the loss the script reports (its own val tokens): the speedrun's rule, and
    # what verify="none" holds a run against, and every fully verified run without a hidden target.
    target_val_loss: float
    # The target on the hidden val windows. When set, a fully verified run is scored there: the
    # script never saw those tokens, so nothing it memorised or shaped can move the reward.
    target_hidden_loss: float | None = None
    data: DataSpec
    baseline: BaselineSpec
    limits: Limits = Field(default_factory=Limits)
    smoke: SmokeSpec | None = None
    protected: list[ProtectedRegion] = Field(default_factory=list)
    timing: TimingSpec = Field(default_factory=TimingSpec)
    verify: VerifySpec = Field(default_factory=VerifySpec)
    max_patch_bytes: int = 256 * 1024
    max_script_bytes: int = 256 * 1024
    max_steps: int = 20
    env: dict[str, str] = Field(default_factory=dict)
    # Files shipped beside the script in every job, unchanged by actions: the modules of a
    # baseline given as a folder (tasks.own_baseline).
    modules: dict[str, str] = Field(default_factory=dict)
    task_dir: Path | None = None
