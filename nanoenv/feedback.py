"""The text an agent reads: the task's brief at reset, and a report of every step.

Written for a language model to read as it is: the outcome first, then what failed and where,
then the numbers. A program should read ``info["result"]`` instead.
"""

from __future__ import annotations

import math

from nanoenv.judging.timing import CORES_SLACK
from nanoenv.settings import RunSettings
from nanoenv.types import Outcome, RunResult, TaskSpec, VerifyLevel

_CURVE_ROWS = 16


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "n/a" if x is None else (str(x) if not math.isfinite(x) else format(x, fmt))


def brief(
    task: TaskSpec,
    settings: RunSettings,
    *,
    sandbox: str,
    max_steps: int,
    measured_on: str = "",
    containment: str = "",
    start: str = "baseline",
) -> str:
    """The task's brief: goal, target, rules, budget, and the baseline's numbers."""
    size = " (smoke size: a few-seconds version for tests)" if settings.smoke else ""
    if settings.level is VerifyLevel.FULL:
        verify = (
            "The loss is re-measured by the harness: it loads your saved model through your "
            "build_model and scores it on the public val tokens and on hidden ones, and checks "
            "causality, determinism and that the reported loss is the model's; a failed check "
            "rejects the run."
        )
        if settings.scores_hidden:
            verify += (
                " The loss the target and the reward use is the model's loss on the hidden val "
                "windows (never mounted while you train), not the one your log prints."
            )
    elif settings.level is VerifyLevel.LOG:
        verify = (
            "Verification level `log`: the harness times the run and checks the data and the "
            "protected regions, but does not reload your model (the baseline defines no "
            "build_model(config), or verify='log' was asked for): losses are taken from your log."
        )
    else:
        verify = "verify='none': losses are taken from your log, unverified."
    if settings.repeats > 1:
        verify += (
            f" Each step runs {settings.repeats} times; the target counts as met only if the "
            "mean loss is below it with p < 0.01 (one-sided t-test)."
        )
    if settings.record_label != "baseline":
        verify += (
            f" The record to beat here is {settings.record_label} of the record book: "
            f"{settings.record_train_time_s:.1f} s on this machine ({settings.record_time_ratio:.3f} "
            "of the baseline's time)."
        )
    if start != "baseline":
        verify += f" This episode starts from {start}'s script (base=0)."
    return f"""# {task.title or task.id}{size}

{task.description.strip()}

Goal: reach val_loss <= {settings.target_val_loss:.4f} in less training time than the baseline
({settings.baseline_train_time_s:.1f} s, final val_loss {settings.baseline_val_loss:.4f}, measured on
{measured_on or task.baseline.hardware or "the reference machine"}). Reward: {settings.reward}.

Actions: an edit of the current script `{task.script}` (an empty string reruns it): a unified
diff (a bare `@@` hunk header is fine), an apply_patch envelope (`*** Begin Patch`) or
SEARCH/REPLACE blocks; or nanoenv.Action(script=...) for a whole new script, with base=k to start from step k's
script (0 = the baseline). Each step runs the script once, for at most {settings.timeout_s:.0f} s, in the
`{sandbox}` sandbox. The episode is truncated after {max_steps} steps.

{rules_text(task)}

How runs are measured: time by the harness's own clock, from the process's start to its
`saved model to` line (without one, until every process of the run has exited): evaluations,
work after the last val line and saving included.{_cores(task, settings)}
{verify}
Sandbox: {containment or sandbox}.
"""


def _cores(task: TaskSpec, settings: RunSettings) -> str:
    """What the brief says of the run's cores (timing.cores_check holds a verified run to them)."""
    if not task.limits.cpus or settings.level is VerifyLevel.NONE:
        return ""
    return (
        f" A run has {task.limits.cpus:g} CPU core(s) (OMP_NUM_THREADS says how many threads): one"
        f" whose CPU time is more than {CORES_SLACK:g} x that many cores for its wall time is"
        " rejected."
    )


def rules_text(task: TaskSpec) -> str:
    """The track's rules as the brief states them (a claim's rule reviewer reads the same)."""
    protected = "\n".join(f"  - [{r.name}]: {r.why}" for r in task.protected) or "  (none)"
    beside = (
        f" (beside it, unchanged: {', '.join(f'`{m}`' for m in sorted(task.modules))})"
        if task.modules
        else ""
    )
    if task.data.record_layout:
        beside += (
            f"; the data is in NANOENV_DATA_DIR and also at `{task.data.record_layout}*.bin` in the"
            " working directory, where the speedrun's records read it"
        )
    return f"""Rules: only `{task.script}` may change{beside}; a patch is at most {task.max_patch_bytes:,} bytes. These
protected regions must stay exactly as they are:
{protected}
The script must print speedrun log lines (`step:S/N val_loss:X train_time:Tms step_avg:Ams`),
define build_model(config), and write model.safetensors and model.json to NANOENV_OUT_DIR. The run
ends at the line `saved model to ...`: print it once both files are written."""


def _curve(result: RunResult) -> str:
    vals = result.val_curve
    if not vals:
        return ""
    if len(vals) > _CURVE_ROWS:  # keep the first, the last, and evenly spaced rows between
        idx = sorted({round(i * (len(vals) - 1) / (_CURVE_ROWS - 1)) for i in range(_CURVE_ROWS)})
        vals = [vals[i] for i in idx]
    rows = "\n".join(
        f"  {p.step:>6}  {_num(p.train_time_s, '8.1f')} s  {_num(p.val_loss)}" for p in vals
    )
    return f"\nVal curve (step, reported train time, val_loss):\n{rows}\n"


def _verdict_lines(result: RunResult) -> list[str]:
    verdict = result.verdict
    if verdict.verified:
        hidden = (
            f", hidden val_loss {_num(result.hidden_val_loss)}"
            if result.hidden_val_loss is not None
            else ""
        )
        region = next((c.numbers.get("verified") for c in verdict.checks
                       if c.name == "reported_matches"), None)  # fmt: skip
        lines = [
            f"VERIFIED: the harness re-evaluated the saved model: val_loss {_num(region)} on your "
            f"val tokens (you reported {_num(result.reported_val_loss)}){hidden}; causality and "
            "determinism hold."
        ]
    elif verdict.level is VerifyLevel.FULL and verdict.failed:
        lines = ["NOT VERIFIED: a check of the harness failed."]
    else:
        lines = [f"UNVERIFIED: {verdict.reason}"]
    for check in verdict.failed:
        nums = ", ".join(f"{k}={v:.4g}" for k, v in check.numbers.items())
        lines.append(
            f"  check failed: {check.name}: expected {check.detail}"
            + (f" ({nums})" if nums else "")
        )
    return lines


def report(result: RunResult, settings: RunSettings, *, current_step: int) -> str:
    """A readable report of one step."""
    base = "" if result.base is None else f" (from step {result.base})"
    head = f"Step {result.step}{base}: {result.outcome.value} - {result.message}"
    lines = [head]
    if result.outcome is Outcome.OK:
        speed = settings.baseline_train_time_s / max(result.train_time_s or math.inf, 1e-9)
        lines.append(
            f"val_loss {_num(result.val_loss)} (target {settings.target_val_loss:.4f}) in "
            f"{_num(result.train_time_s, '.2f')} s of training; baseline "
            f"{settings.baseline_train_time_s:.2f} s ({speed:.2f}x)."
        )
    elif result.outcome is Outcome.MISSED_TARGET:
        lines.append(
            f"val_loss {_num(result.val_loss)} after {_num(result.train_time_s, '.2f')} s; the "
            f"target is {settings.target_val_loss:.4f} (baseline {settings.baseline_train_time_s:.2f} s)."
        )
    elif result.outcome in (Outcome.PATCH_FAILED, Outcome.REJECTED):
        lines.append(f"The script was not run. The current script is still step {current_step}'s.")
    elif result.outcome is Outcome.INFRA_ERROR:
        lines.append("The environment failed, not your script: this step costs nothing.")
    lines.append(f"Reward ({settings.reward}): {result.reward:+.4f}")
    if result.tokens_to_target is not None and settings.baseline_tokens:
        lines.append(
            f"Steps objective (as your log reports it, not a reward): {result.tokens_to_target:,} "
            f"training tokens to {settings.curve_target:.4f} on your val curve; the baseline "
            f"trains on {settings.baseline_tokens:,}."
        )
    lines += _verdict_lines(result)
    if result.train_time_s is not None and result.reported_train_time_s is not None:
        lines.append(
            f"Training time {result.train_time_s:.2f} s by the harness clock (process start, "
            "less the task's free warm-up, to the `saved model to` line, or without one to the "
            "exit of the run's last process; evaluations and saving included); the script "
            f"reported {result.reported_train_time_s:.2f} s."
        )
    if (sig := result.significance) is not None:
        p = "n/a" if sig.p_value is None else f"{sig.p_value:.3g}"
        lines.append(
            f"Repeats: {sig.n} runs, val_loss {sig.mean:.4f} +/- {sig.std:.4f}, one-sided t-test "
            f"against {sig.target:.4f}: p = {p} ({'significant' if sig.significant else 'not significant'} at 0.01)."
        )
    text = "\n".join(lines) + "\n" + _curve(result)
    if result.notes:
        text += "\nNotes:\n" + "\n".join(f"  - {n}" for n in result.notes) + "\n"
    if (
        result.outcome in (Outcome.CRASHED, Outcome.TIMED_OUT, Outcome.MISSED_TARGET)
        and result.log_tail
    ):
        if result.error:
            text += (
                "\nThe first error in the output:\n"
                + "\n".join(f"  {t}" for t in result.error.splitlines())
                + "\n"
            )
        tail = result.log_tail.splitlines()[-15:]
        text += "\nLast lines of output:\n" + "\n".join(f"  {t}" for t in tail) + "\n"
    tel = result.telemetry
    parts = [f"Wall time {result.wall_time_s:.1f} s"]
    if "cpu_time_s" in tel:
        parts.append(f"CPU time {tel['cpu_time_s']:.1f} s")
    if "peak_rss_mb" in tel:
        parts.append(f"peak memory {tel['peak_rss_mb']:.0f} MB")
    if "gpu_util_mean_pct" in tel:
        parts.append(f"GPU utilisation {tel['gpu_util_mean_pct']:.0f} % mean, "
                     f"{tel['gpu_util_peak_pct']:.0f} % peak")  # fmt: skip
        parts.append(f"GPU memory peak {tel['gpu_mem_peak_mb']:,.0f} of "
                     f"{tel['gpu_mem_total_mb']:,.0f} MiB")  # fmt: skip
    if result.wall_time_s or tel:
        text += "\n" + "; ".join(parts) + "."
        if result.artifacts_dir:
            text += f" Artifacts: {result.artifacts_dir}"
        text += "\n"
    return text
