"""The rules that turn what the harness measured into an outcome and a message.

Pure functions, no sandbox and no I/O: the runner (runner.py) gathers a job's result, the
parsed log and the verifier's checks, and these decide how the run ended, whether it met the
target, what the agent is told, and how repeated runs combine into one step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection

import numpy as np

from nanoenv.judging.significance import significance
from nanoenv.judging.telemetry import END_LINE, LogParser
from nanoenv.types import Check, JobResult, Outcome, RunResult, StampedLine, Verdict

LOG_TAIL_LINES = 40
# torchrun's prefix on a worker's lines, and the launcher's own exception, which only says that
# a worker failed: the worker's exception is the root cause the agent needs.
_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")
_LAUNCHER_ERRORS = ("ChildFailedError",)
ERROR_FRAMES = 4
MAX_ERROR_CHARS = 3000
MAX_TRACEBACKS = 50
TRACEBACK_WINDOW = 2000  # lines after a traceback's first line in which it must end
# Repeats whose losses agree this closely came from one run, not from several seeds.
IDENTICAL_LOSSES = 1e-9


def classify_job(job: JobResult, parser: LogParser) -> tuple[Outcome, str] | None:
    """How a job ended badly, or None if it ended well enough to be judged on its numbers."""
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
    if job.exit_code != 0 and not died_exiting(job, parser):
        found = first_error(job.lines)
        why = f": {found.splitlines()[-1][:300]}" if found else ""
        if not found and (fatal := fatal_error(job.lines)):
            why = f": {fatal}"
        if need := network_need(job.lines):
            why += f". {need[0].upper()}{need[1:]}"
        return Outcome.CRASHED, f"the script exited with code {job.exit_code}{why}"
    if parser.last_val is None:
        return Outcome.CRASHED, "the script exited 0 but printed no `val_loss` line"
    return None


def against_target(loss: float | None, target: float) -> tuple[Outcome, str]:
    """ok or missed_target, for a final loss."""
    if loss is None or not math.isfinite(loss):
        return Outcome.MISSED_TARGET, f"the final val_loss is {loss} (training diverged)"
    if loss > target:
        return Outcome.MISSED_TARGET, f"final val_loss {loss:.4f} > target {target:.4f}"
    return Outcome.OK, f"final val_loss {loss:.4f} <= target {target:.4f}"


def log_tail(lines: list[StampedLine], n: int = LOG_TAIL_LINES) -> str:
    """The last ``n`` lines of output, stderr marked, for the agent to read."""
    return "\n".join(
        ("[stderr] " if ln.stream == "stderr" else "") + ln.text[:500] for ln in lines[-n:]
    )


def _first_traceback(
    lines: list[StampedLine],
) -> tuple[str, list[str], str, list[str]] | None:
    """The first worker traceback in the output: its first line, its frame lines (its own
    rank's only), its exception line, and its rank's lines from there on (where the exceptions
    chained to it follow); None if there is none."""
    texts = [ln.text for ln in lines]
    starts = [i for i, t in enumerate(texts) if "Traceback (most recent call last):" in t]
    # Bounded work whatever a script prints: the first tracebacks, a window of lines each.
    for i in starts[:MAX_TRACEBACKS]:
        text = texts[i]
        body = _RANK_PREFIX.sub("", text)
        if not body.startswith("Traceback (most recent call last):"):
            continue
        prefix = text[: len(text) - len(body)]
        window = texts[i + 1 : i + 1 + TRACEBACK_WINDOW]
        own = [t[len(prefix) :] for t in window if t.startswith(prefix)]
        end = next((k for k, t in enumerate(own) if t and not t[0].isspace()), None)
        if end is None:
            continue
        exception = own[end]
        if exception.startswith("Traceback") or any(n in exception for n in _LAUNCHER_ERRORS):
            continue
        return body, own[:end], exception, own
    return None


def first_error(lines: list[StampedLine], frames: int = ERROR_FRAMES) -> str:
    """The first Python exception in the output with its last ``frames`` frames, or "".

    Under torchrun the last lines are the launcher's ChildFailedError summary, which names no
    cause; the workers' tracebacks come before it, each line marked with its rank. This finds
    the first traceback that is not the launcher's, reads only its rank's lines (two ranks'
    tracebacks may interleave), and keeps the exception line, so the agent sees the root cause.
    """
    found = _first_traceback(lines)
    if found is None:
        return ""
    body, stack, exception, _ = found
    files = [k for k, t in enumerate(stack) if t.startswith("  File ")]
    kept = stack[files[-frames] :] if len(files) > frames else stack
    skipped = len(files) - frames
    head = [body] + ([f"  ... ({skipped} earlier frames)"] if skipped > 0 else [])
    return "\n".join(head + kept + [exception])[:MAX_ERROR_CHARS]


_FATAL = "Fatal Python error: "
_FRAME = re.compile(r'^\s*File "(?:.*/)?([^/"]+)", line (\d+) in (\S+)')
_WHAT = re.compile(r"^\s*what\(\):\s*(.*)")


def fatal_error(lines: list[StampedLine]) -> str:
    """Where a process died of a signal, from faulthandler's dump (every job runs with
    PYTHONFAULTHANDLER=1), and why where C++ said so: "Fatal Python error: Aborted, at train.py
    line 12 in step", "Fatal Python error: Aborted, in a thread outside Python (terminate called
    without an active exception)", or "".

    libstdc++ writes "terminate called ..." (and the exception's what()) when a C++ exception or a
    running std::thread outlives its owner, as gloo's threads may at interpreter exit."""
    texts = [_RANK_PREFIX.sub("", ln.text) for ln in lines[-TRACEBACK_WINDOW:]]
    i = next((k for k, t in enumerate(texts) if t.startswith(_FATAL)), None)
    if i is None:
        return ""
    site, cause = _crash_site(texts[i + 1 : i + 200]), _terminate_cause(texts[max(0, i - 6) : i])
    return f"{texts[i][:200]}{site}{cause}"


def _crash_site(dump: list[str]) -> str:
    """Where the crashed thread was (", at train.py line 12 in step"), from its block of a
    faulthandler dump: the other threads' frames say nothing of the crash."""
    dump = dump[: next((k for k, t in enumerate(dump) if t.startswith(_FATAL)), len(dump))]
    current = next((k for k, t in enumerate(dump) if t.startswith("Current thread")), None)
    if current is None:  # faulthandler names no current thread when one of C++'s own crashed
        return (
            ", in a thread outside Python" if any(t.startswith("Thread 0x") for t in dump) else ""
        )
    body = dump[current + 1 : current + 40]
    if frame := next((m for t in body if (m := _FRAME.match(t))), None):
        return f", at {frame[1]} line {frame[2]} in {frame[3]}"
    if body and "<no Python frame>" in body[0]:
        return ", outside Python code (a library's thread, or the interpreter exiting)"
    return ""


def _terminate_cause(before: list[str]) -> str:
    """What libstdc++ wrote just before the dump when C++ ended the process (" (terminate called
    after throwing an instance of 'gloo::IoException': Connection closed by peer)"), else ""."""
    k = next((k for k, t in enumerate(before) if t.startswith("terminate called")), None)
    if k is None:
        return ""
    what = next((w[1] for t in before[k + 1 :] if (w := _WHAT.match(t))), "")
    return f" ({before[k][:200]}{': ' + what[:200] if what else ''})"


def ended_early(job: JobResult, parser: LogParser, written: Collection[str]) -> str:
    """A note when the harness ended a run at its end line before the run was done: the model
    files not yet written, or the last val line short of the steps the log announced (a
    checkpoint message that reads like the end line, printed mid-run), else "". ``written``:
    the names of the files the run left in its out dir."""
    if not job.ended_at_end_line:
        return ""
    last = parser.last_val
    unwritten = [n for n in ("model.safetensors", "model.json") if n not in written]
    short = last is not None and last.total_steps is not None and last.step < last.total_steps
    if not unwritten and not short:
        return ""
    at = f" after step {last.step} of {last.total_steps}" if short and last is not None else ""
    missing = f", before {' and '.join(unwritten)} existed" if unwritten else ""
    return (
        f"the harness ended the run at its `{END_LINE.strip()}` line{at}{missing}: a run ends "
        "there (print it once, after both model files are written)"
    )


def died_exiting(job: JobResult, parser: LogParser) -> str:
    """A note when the script finished and then died as its interpreter exited, else "".

    gloo's and DDP's C++ threads can outlive the Python objects that own them when those are
    module globals (as in the records); at exit libstdc++ then aborts ("terminate called without
    an active exception"), in 3 of 53 two-rank gloo runs with a module-level DDP model here
    (torch 2.13), the records' shape; the next rank is then killed by torchrun. The run's numbers
    and files were all written by then, so the run is judged on them, and verification still
    re-scores the model. Only a dump in which no thread of any crashed process runs Python code
    counts: a crash anywhere in the script leaves its line in the dump, and a Python traceback
    (first_error) rules this out. Nothing is gained by dying so rather than exiting 0."""
    if job.exit_code == 0 or not job.ended_on_its_own or parser.last_val is None:
        return ""
    if first_error(job.lines):
        return ""
    texts = [_RANK_PREFIX.sub("", ln.text) for ln in job.lines[-TRACEBACK_WINDOW:]]
    starts = [k for k, t in enumerate(texts) if t.startswith(_FATAL)]
    if not starts or not all(_no_python_frame(texts[k + 1 : k + 200]) for k in starts):
        return ""
    return (
        f"the script finished, then died as Python exited ({fatal_error(job.lines)}): a crash "
        "of the libraries' teardown, not of the run, which is judged on its numbers"
    )


def _no_python_frame(dump: list[str]) -> bool:
    """Whether every thread of a faulthandler dump runs no Python code: the interpreter was
    exiting. The dump ends at the first line that is not part of it."""
    heads = []
    for k, text in enumerate(dump):
        if text.startswith(("Current thread 0x", "Thread 0x")):
            heads.append(k)
        elif text.strip() and not text.startswith(("  ", "Extension modules:", "Python runtime")):
            dump = dump[:k]
            break
    return bool(heads) and all(
        k + 1 < len(dump) and dump[k + 1].strip() == "<no Python frame>" for k in heads
    )


# What a failed download says (urllib, requests, httpx, huggingface_hub offline), and who in the
# stack was downloading: the records fetch kernels and tokenizer files at import.
_NETWORK_SIGNS = (
    "Temporary failure in name resolution", "Name or service not known", "NameResolutionError",
    "Failed to resolve", "Network is unreachable", "No route to host", "URLError",
    "ConnectError", "ConnectionError", "ConnectTimeout", "LocalEntryNotFoundError",
    "OfflineModeIsEnabled", "check your internet connection", "check your connection",
)  # fmt: skip
_NETWORK_USERS = (
    ("kernels", "a compiled kernel from the Hugging Face hub (kernels.get_kernel)"),
    ("tiktoken", "tiktoken's BPE files (tiktoken.get_encoding downloads them)"),
    ("huggingface_hub", "a file from the Hugging Face hub"),
    ("torch/hub", "a torch.hub download"),
)
_HOST = re.compile(r"host='([\w.-]+)'|https?://([\w.-]+)")


def network_need(lines: list[StampedLine]) -> str:
    """A sentence naming what the script tried to download, when its first error is a failed
    network call (the sandbox has none), else ""."""
    found = _first_traceback(lines)
    if found is None:
        return ""
    text = "\n".join(found[3])  # the chain: who was downloading is often in a later traceback
    if not any(sign in text for sign in _NETWORK_SIGNS):
        return ""
    users = [what for module, what in _NETWORK_USERS if f"/{module}/" in text]
    hosts = sorted({a or b for a, b in _HOST.findall(text)})
    named = "; ".join(users[:1] + [f"host {', '.join(hosts[:3])}"] * bool(hosts))
    return (
        f"it needed the network ({named or 'a download'}), and jobs run without one: put what "
        "it downloads in the sandbox image or ship it beside the script (a baseline folder's "
        "files travel with every job), and load it from there"
    )


def aggregate(runs: list[RunResult], target: float) -> RunResult:
    """One result for repeated runs: the mean loss and time, and the t-test against the target."""
    first = runs[0]
    checks = [
        c.model_copy(update={"name": f"run {k}: {c.name}"})
        for k, r in enumerate(runs, 1)
        for c in r.verdict.checks
    ]
    verdict = first.verdict.model_copy(
        update={"checks": checks, "verified": all(r.verdict.verified for r in runs)}
    )
    bad = next((r for r in runs if r.outcome not in (Outcome.OK, Outcome.MISSED_TARGET)), None)
    if bad is not None:
        return bad.model_copy(
            update={
                "message": f"run {runs.index(bad) + 1} of {len(runs)}: {bad.message}",
                "verdict": verdict,
            }
        )
    losses = [r.val_loss if r.val_loss is not None else math.inf for r in runs]
    times = [r.train_time_s if r.train_time_s is not None else math.inf for r in runs]
    if len(runs) > 1 and max(losses) - min(losses) <= IDENTICAL_LOSSES:
        check = Check(
            name="independent_repeats", passed=False,
            detail="repeats with different NANOENV_SEED values to give different losses (a "
            "script that ignores its seed repeats one run, and the t-test would see no noise)",
            numbers={"runs": float(len(runs)), "loss": losses[0],
                     "seeds_distinct": float(len({r.seed for r in runs}))},
        )  # fmt: skip
        verdict = verdict.model_copy(update={"checks": [*checks, check], "verified": False})
        return first.model_copy(update={
            "outcome": Outcome.REJECTED, "verdict": verdict,
            "message": rejection_message(verdict.model_copy(update={"checks": [check]})),
        })  # fmt: skip
    sig = significance(losses, times, target)
    if sig.significant:
        outcome = Outcome.OK
        message = f"mean val_loss {sig.mean:.4f} < target {sig.target:.4f} over {sig.n} runs (p = {sig.p_value:.2g})"
    else:
        outcome = Outcome.MISSED_TARGET
        message = f"mean val_loss {sig.mean:.4f} is not below target {sig.target:.4f} with p < 0.01 over {sig.n} runs (p = {sig.p_value:.2g})"
    return first.model_copy(update={
        "outcome": outcome, "message": message, "verdict": verdict, "significance": sig,
        "val_loss": sig.mean, "train_time_s": float(np.mean(times)),
        "hidden_val_loss": _mean([r.hidden_val_loss for r in runs]),
    })  # fmt: skip


def integrity_ok(checks: list[Check]) -> bool:
    return all(c.passed for c in checks if c.name == "data_integrity")


def _mean(values: list[float | None]) -> float | None:
    real = [v for v in values if v is not None]
    return float(np.mean(real)) if real else None


def rejection_message(verdict: Verdict) -> str:
    """What the agent is told when a check failed: the first failure, its numbers, how many more."""
    first = verdict.failed[0]
    nums = ", ".join(f"{k}={v:.4g}" for k, v in first.numbers.items())
    others = f" (and {len(verdict.failed) - 1} more)" if len(verdict.failed) > 1 else ""
    return f"the harness's check {first.name} failed{others}: expected {first.detail}" + (
        f" ({nums})" if nums else ""
    )
