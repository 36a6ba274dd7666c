"""The judging rules on their own: how a job ended, the target, rejections, repeated runs."""

import math
from pathlib import Path

import pytest

from nanoenv.judging.rules import (
    against_target,
    aggregate,
    classify_job,
    died_exiting,
    ended_early,
    first_error,
    log_tail,
    rejection_message,
)
from nanoenv.judging.telemetry import LogParser
from nanoenv.types import Check, JobResult, Outcome, RunResult, StampedLine, Verdict


def parser_with(*lines: str) -> LogParser:
    p = LogParser()
    for i, line in enumerate(lines):
        p.feed(line, float(i))
    return p


VAL = "step:10/10 val_loss:2.5000 train_time:1000ms step_avg:100.00ms"


@pytest.mark.parametrize(
    ("job", "outcome", "words"),
    [
        (JobResult(infra_error="start dockerd"), Outcome.INFRA_ERROR, "start dockerd"),
        (JobResult(timed_out=True, wall_time_s=61), Outcome.TIMED_OUT, "deadline (61 s)"),
        (JobResult(output_truncated=True), Outcome.CRASHED, "more output"),
        (JobResult(oom=True, exit_code=137), Outcome.CRASHED, "out of memory"),
        (JobResult(exit_code=3), Outcome.CRASHED, "code 3"),
    ],
)
def test_a_bad_ending_names_what_went_wrong(job, outcome, words):
    got = classify_job(job, parser_with(VAL))
    assert got is not None
    assert got[0] is outcome and words in got[1]


def test_exit_zero_without_a_val_line_is_a_crash_and_with_one_is_judged():
    no_val = classify_job(JobResult(exit_code=0), parser_with("hello"))
    assert no_val is not None and no_val[0] is Outcome.CRASHED and "val_loss" in no_val[1]
    assert classify_job(JobResult(exit_code=0), parser_with(VAL)) is None


def test_against_target_is_inclusive_and_divergence_misses():
    assert against_target(2.5, 2.5)[0] is Outcome.OK
    assert against_target(2.5001, 2.5)[0] is Outcome.MISSED_TARGET
    outcome, message = against_target(math.nan, 2.5)
    assert outcome is Outcome.MISSED_TARGET and "diverged" in message
    assert against_target(None, 2.5)[0] is Outcome.MISSED_TARGET


def test_rejection_message_gives_the_first_failure_its_numbers_and_the_count():
    verdict = Verdict(
        level="full",
        checks=[
            Check(name="causality", passed=True, detail="ok"),
            Check(name="hidden_gap", passed=False, detail="a gap under 0.1", numbers={"gap": 0.37}),
            Check(name="determinism", passed=False, detail="the same logits twice"),
        ],
    )
    msg = rejection_message(verdict)
    assert msg.startswith("the harness's check hidden_gap failed (and 1 more)")
    assert "gap=0.37" in msg


def test_log_tail_marks_stderr_and_keeps_the_last_lines():
    lines = [StampedLine(t=i, stream="stdout", text=f"line {i}") for i in range(50)]
    lines.append(StampedLine(t=50, stream="stderr", text="Traceback"))
    tail = log_tail(lines, n=3).splitlines()
    assert tail == ["line 48", "line 49", "[stderr] Traceback"]


def run(step: int, loss: float | None, t: float | None, outcome=Outcome.OK, msg="") -> RunResult:
    return RunResult(
        step=step, outcome=outcome, val_loss=loss, train_time_s=t, message=msg,
        verdict=Verdict(level="none", checks=[Check(name="data_integrity", passed=True, detail="")]),
    )  # fmt: skip


def test_repeats_clearly_under_the_target_are_ok_with_means():
    got = aggregate([run(1, 2.40, 10.0), run(1, 2.41, 12.0), run(1, 2.405, 11.0)], target=2.5)
    assert got.outcome is Outcome.OK
    assert got.val_loss == pytest.approx(2.405)
    assert got.train_time_s == pytest.approx(11.0)
    assert got.significance is not None and got.significance.p_value < 0.01
    assert [c.name for c in got.verdict.checks] == [f"run {k}: data_integrity" for k in (1, 2, 3)]


def test_repeats_whose_mean_is_under_but_not_significantly_miss():
    got = aggregate([run(1, 2.30, 10.0), run(1, 2.69, 10.0)], target=2.5)
    assert got.outcome is Outcome.MISSED_TARGET
    assert "p < 0.01" in got.message


def test_one_failed_repeat_decides_the_step():
    bad = run(1, None, None, Outcome.CRASHED, "the script exited with code 1")
    got = aggregate([run(1, 2.4, 10.0), bad], target=2.5)
    assert got.outcome is Outcome.CRASHED
    assert got.message == "run 2 of 2: the script exited with code 1"


def _lines(text: str, stream: str = "stderr") -> list[StampedLine]:
    return [StampedLine(t=i, stream=stream, text=t) for i, t in enumerate(text.splitlines())]


# torchrun 2.13's real stderr for two ranks that crash differently (a gloo job on this machine,
# paths shortened): the workers' tracebacks, then the launcher's own and its summary.
TORCHRUN = (Path(__file__).parent / "fixtures" / "torchrun_two_ranks_crash.txt").read_text()


def test_first_error_is_the_workers_exception_not_the_launchers_summary():
    """The root cause of a torchrun crash is rank 0's exception; the ChildFailedError summary
    (the last 15 lines, all the feedback showed before) names none."""
    assert "ChildFailedError" in "".join(TORCHRUN.splitlines()[-30:])
    found = first_error(_lines(TORCHRUN))
    assert found.splitlines()[0] == "Traceback (most recent call last):"
    assert found.splitlines()[-1] == "ValueError: boom in rank 0: the loss is a tuple"
    assert "line 6, in step" in found and "[rank" not in found
    assert "ZeroDivisionError" not in found and "ChildFailedError" not in found
    job = JobResult(exit_code=1, lines=_lines(TORCHRUN))
    outcome, message = classify_job(job, parser_with())
    assert outcome is Outcome.CRASHED
    assert message.endswith("code 1: ValueError: boom in rank 0: the loss is a tuple")


def test_first_error_reads_one_rank_when_tracebacks_interleave():
    """Two ranks writing at once: the first traceback is read from its own rank's lines."""
    text = "\n".join(
        [
            "[rank1]: Traceback (most recent call last):",
            "[rank0]: Traceback (most recent call last):",
            '[rank1]:   File "train.py", line 3, in <module>',
            '[rank0]:   File "train.py", line 9, in <module>',
            "[rank0]:     step()",
            "[rank1]: KeyError: 'lr'",
            "[rank0]: RuntimeError: rank 0 failed",
        ]
    )
    found = first_error(_lines(text))
    assert found.splitlines() == [
        "Traceback (most recent call last):",
        '  File "train.py", line 3, in <module>',
        "KeyError: 'lr'",
    ]


def test_first_error_keeps_the_last_frames_of_a_deep_stack():
    frames = [f'  File "train.py", line {i}, in f{i}\n    f{i + 1}()' for i in range(30)]
    text = "\n".join(["Traceback (most recent call last):", *frames, "RecursionError: deep"])
    found = first_error(_lines(text), frames=4)
    assert "(26 earlier frames)" in found and "in f29" in found and "in f25" not in found
    assert found.endswith("RecursionError: deep")


def test_first_error_is_empty_without_a_python_exception():
    """A launcher-only traceback, a truncated one, or a plain nonzero exit: nothing to show."""
    launcher = TORCHRUN[TORCHRUN.index('Traceback (most recent call last):\n  File "/venv') :]
    assert first_error(_lines(launcher)) == ""
    assert first_error(_lines("Traceback (most recent call last):\n  File x")) == ""
    assert first_error(_lines("Segmentation fault (core dumped)")) == ""
    assert (
        classify_job(JobResult(exit_code=139), parser_with())[1]
        == "the script exited with code 139"
    )


# torchrun 2.13's real stderr when a 2-rank gloo job with a module-level DDP model finished and
# rank 1 then aborted as Python exited (3 runs in 53 here; paths shortened).
GLOO_EXIT_ABORT = (Path(__file__).parent / "fixtures" / "gloo_exit_abort.txt").read_text()
CRASHED_WHILE_RUNNING = GLOO_EXIT_ABORT.replace(
    "  <no Python frame>", '  File "/work/train_gpt.py", line 229 in <module>'
)


def test_an_abort_as_python_exits_is_judged_on_the_numbers():
    """A finished script whose gloo threads abort at interpreter exit is judged on what it
    wrote, with a note saying so (before, such honest record runs scored as crashes)."""
    job = JobResult(exit_code=1, lines=_lines(GLOO_EXIT_ABORT))
    assert classify_job(job, parser_with(VAL)) is None
    note = died_exiting(job, parser_with(VAL))
    assert note.startswith("the script finished, then died as Python exited (Fatal Python error:")
    assert "(terminate called without an active exception)" in note
    # killed by the harness, it is what the harness says
    timed = JobResult(exit_code=1, timed_out=True, lines=_lines(GLOO_EXIT_ABORT))
    assert died_exiting(timed, parser_with(VAL)) == ""
    assert classify_job(timed, parser_with(VAL))[0] is Outcome.TIMED_OUT
    # a finished script that printed no val line is still a crash, named as one
    outcome, message = classify_job(job, parser_with())
    assert outcome is Outcome.CRASHED
    assert message == (
        "the script exited with code 1: Fatal Python error: Aborted, in a thread outside Python "
        "(terminate called without an active exception)"
    )


def test_an_abort_while_python_runs_is_a_crash_at_its_line():
    """A dump in which a thread still runs Python code is a crash mid-run, named by its line."""
    job = JobResult(exit_code=1, lines=_lines(CRASHED_WHILE_RUNNING))
    assert died_exiting(job, parser_with(VAL)) == ""
    outcome, message = classify_job(job, parser_with(VAL))
    assert outcome is Outcome.CRASHED and message.endswith("in a thread outside Python "
        "(terminate called without an active exception)")  # fmt: skip
    current = CRASHED_WHILE_RUNNING.replace("\nThread 0x", "\nCurrent thread 0x")
    message = classify_job(JobResult(exit_code=-6, lines=_lines(current)), parser_with(VAL))[1]
    assert message == (
        "the script exited with code -6: Fatal Python error: Aborted, at train_gpt.py line 229 "
        "in <module> (terminate called without an active exception)"
    )


@pytest.mark.parametrize("ending", ["", VAL])
def test_faking_an_exit_abort_gains_nothing_over_exiting_0(ending):
    """The cheat: print a made-up dump and exit 1 (mid-run, say). It is judged exactly as the
    same output with exit 0 is, never better: no number the reward reads moves."""
    fake = JobResult(exit_code=1, lines=_lines(GLOO_EXIT_ABORT))
    honest = JobResult(exit_code=0, lines=_lines(GLOO_EXIT_ABORT))
    faked, exited_0 = (
        classify_job(fake, parser_with(ending)),
        classify_job(honest, parser_with(ending)),
    )
    assert (faked and faked[0]) == (exited_0 and exited_0[0])  # crashed both, or judged both


def test_first_error_reads_a_bounded_part_of_a_flood():
    """A script that prints 100,000 unfinished tracebacks: the search looks at the first 50,
    each over a window of lines, instead of rescanning the rest of the output for every one
    (which, at 100,000 squared, would not finish); nothing is found, and it says so."""
    flood = ["Traceback (most recent call last):"] * 100_000 + ["ValueError: late"]
    assert first_error(_lines("\n".join(flood))) == ""


def _ended(texts: list[str], ended: bool) -> tuple[JobResult, LogParser]:
    lines = [StampedLine(t=float(k), stream="stdout", text=t) for k, t in enumerate(texts)]
    parser = LogParser()
    for line in lines:
        parser.feed(line.text, line.t)
    return JobResult(exit_code=0, lines=lines, ended_at_end_line=ended), parser


def test_a_run_ended_at_its_end_line_mid_run_is_told_so():
    """A checkpoint message that reads like the end line, printed mid-run, ends the run there:
    the note says so, with the step and the files missing; a run that ended where it should,
    or that printed no end line, gets no note."""
    mid = ["step:0/40 val_loss:7.0", "step:20/40 val_loss:5.6", "saved model to ckpt"]
    note = ended_early(*_ended(mid, True), written=set())
    assert "after step 20 of 40" in note and "model.safetensors and model.json" in note, note
    files = {"model.safetensors", "model.json"}
    done = ["step:0/40 val_loss:7.0", "step:40/40 val_loss:5.4", "saved model to out"]
    assert ended_early(*_ended(done, True), files) == ""
    assert ended_early(*_ended(mid, False), set()) == ""
