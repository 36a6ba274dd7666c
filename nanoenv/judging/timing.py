"""Harness time: the run's training time, from the harness's own clock.

The time the reward uses runs from the step-0 ``val_loss`` line (as the harness received it)
to the moment every process of the job was gone, which comes after the model file is complete:
work after the last val line (training on silently, then saving) is work, and it is timed. A
training job ends at its end line (telemetry.END_LINE, printed once the model is saved): the
sandbox kills it there, so the interpreter's teardown is not timed and nothing after it runs.
Warm-up before step 0 is free up to the task's allowance and charged beyond it, so training
moved before step 0 still counts. The window between the first and the last val line is what
the script's own ``train_time`` describes, and is only used to check that clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanoenv.types import Check, LossPoint, TimingSpec


@dataclass(frozen=True)
class HarnessTime:
    """The harness's reading of a run's clock."""

    window_s: float | None  # first to last val line; None when the log has no window
    untimed_s: float | None  # job start to the first val line
    train_s: float | None  # first val line to the job's exit, + untimed beyond the allowance
    reported_s: float | None  # the script's own final train_time
    after_last_val_s: float | None = None  # last val line to the job's exit


def harness_time(
    points: list[LossPoint], spec: TimingSpec, exit_s: float | None = None
) -> HarnessTime:
    """Read the clock from the val lines' receipt stamps and the job's exit (``exit_s``, the
    harness time when its last process was gone; None: the last val line ends the run)."""
    vals = [p for p in points if p.val_loss is not None and p.received_s is not None]
    reported = vals[-1].train_time_s if vals else None
    if len(vals) < 2 or vals[0].step != 0 or vals[-1].step <= vals[0].step:
        untimed = vals[0].received_s if vals else None
        return HarnessTime(None, untimed, None, reported)
    first, last = vals[0].received_s, vals[-1].received_s
    assert first is not None and last is not None
    window = last - first
    end = max(last, exit_s) if exit_s is not None else last
    charged = max(0.0, first - spec.untimed_allowance_s)
    return HarnessTime(
        round(window, 4), round(first, 4), round(end - first + charged, 4), reported,
        round(end - last, 4),
    )  # fmt: skip


def timing_checks(t: HarnessTime, spec: TimingSpec) -> list[Check]:
    """The window exists, warm-up stays within bounds, and the script's clock tells the truth."""
    if t.window_s is None:
        return [
            Check(
                name="timed_window",
                passed=False,
                detail="a val_loss line at step 0 and a later one: the harness times the run "
                "between them",
            )
        ]
    assert t.untimed_s is not None
    checks = [
        Check(name="untimed_work", passed=t.untimed_s <= spec.max_untimed_s,
              detail="work before the step-0 val line (imports, loading, warm-up) to stay short",
              numbers={"untimed_s": t.untimed_s, "max_untimed_s": spec.max_untimed_s}),
    ]  # fmt: skip
    if t.reported_s is not None:
        low = spec.min_reported_fraction * t.window_s - 0.1
        high = 1.05 * t.window_s + 0.5
        checks.append(
            Check(name="reported_time", passed=low <= t.reported_s <= high,
                  detail="the train_time the script reports to agree with the harness clock",
                  numbers={"reported_s": t.reported_s, "harness_window_s": t.window_s,
                           "low_s": round(low, 4), "high_s": round(high, 4)})
        )  # fmt: skip
    return checks


# Room over the cores a job was given: the sandbox's own processes and the sampling of CPU time
# (honest one-core runs measure 0.97-0.98 cores, a two-process GPT-2 smoke run 1.74 of 2).
CORES_SLACK = 1.25


def cores_check(
    cpu_time_s: float | None, wall_time_s: float | None, cpus: float | None
) -> Check | None:
    """The job used no more cores than it was given (its CPU time over its wall time). The
    local sandbox cannot cap a job's threads, and a script may raise its own: a run timed on
    cores it did not reserve buys time, and slows whatever runs beside it. None where there is
    nothing to compare (no CPU time measured, no limit, a run too short to read)."""
    if cpu_time_s is None or not wall_time_s or wall_time_s < 1.0 or not cpus:
        return None
    used = cpu_time_s / wall_time_s
    return Check(name="cores_used", passed=used <= CORES_SLACK * cpus,
                 detail=f"at most the {cpus:g} core(s) the job was given (CPU time / wall time): "
                 "do not raise torch's threads or start helper processes past them",
                 numbers={"cores_used": round(used, 2), "cores_given": cpus,
                          "max_cores": CORES_SLACK * cpus})  # fmt: skip


def harness_clock(points: list[LossPoint], allowance_s: float) -> list[tuple[float, LossPoint]]:
    """Each point the harness received at its time on the reward's clock: seconds since the job
    started, less the warm-up the allowance leaves free. At the last val line this is the time
    `harness_time` charges (the job's exit can add to it); the script's own ``train_time`` is
    not read."""
    stamped = [p for p in points if p.received_s is not None]
    vals = [p for p in stamped if p.val_loss is not None]
    if not vals:
        return []
    free = min(vals[0].received_s or 0.0, allowance_s)
    return [((p.received_s or 0.0) - free, p) for p in stamped]
