"""Bad input gets a clear message and loses nothing; the env works normally afterwards.

One env walks through every kind of bad action in order (pytest runs a module's tests in file
order); each must give a non-ok outcome, a feedback that names the problem, a finite reward,
and a complete record on disk. The last test then runs a real step on the same env.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nanoenv import Action, Outcome
from nanoenv.actions.patching import make_diff
from nanoenv.tasks import baseline_script, load_task

BASELINE = baseline_script(load_task("tiny"))
LOOP = "        if last_step:\n            break\n"
assert LOOP in BASELINE
# Real failures inside the real training loop, after the step-5 val point of the smoke size.
CRASH_HALFWAY = BASELINE.replace(
    LOOP, LOOP + '        if step == 7:\n            raise RuntimeError("boom at step 7")\n'
)
NEVER_ENDS = make_diff(
    BASELINE, BASELINE.replace(LOOP, LOOP + "        while step == 3:\n            time.sleep(1)\n")
)
ABORT_HALFWAY = BASELINE.replace(LOOP, LOOP + "        if step == 7:\n            os.abort()\n")
SYNTAX_ERROR = BASELINE.replace("def get_lr(step):", "def get_lr(step:")

BAD_INPUTS = [
    ("prose", "Please make the model train faster.", Outcome.PATCH_FAILED, "not a unified diff"),
    (
        "other-file",
        make_diff("a\n", "b\n", "data.py"),
        Outcome.REJECTED,
        "only the script 'train.py' may change",
    ),
    (
        "hunk-mismatch",
        "--- a/train.py\n+++ b/train.py\n@@ -40,3 +40,3 @@\n-    learning_rate: float = 9e-9\n+    learning_rate: float = 1e-3\n",
        Outcome.PATCH_FAILED,
        "hunk 1 of 1 (@@ -40,3 +40,3 @@) does not apply",
    ),
    (
        "traversal",
        make_diff("root:x\n", "root::\n", "../../etc/passwd"),
        Outcome.REJECTED,
        "without `..`",
    ),
    ("binary-bytes", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", Outcome.REJECTED, "not valid UTF-8"),
    (
        "nul-in-text",
        "--- a/train.py\n+++ b/train.py\n\x00\x00",
        Outcome.REJECTED,
        "binary content: byte 0x00",
    ),
    (
        "ten-megabytes",
        "x" * (10 * 1024 * 1024),
        Outcome.REJECTED,
        "10,485,760 bytes; the limit is 262,144",
    ),
    (
        "invalid-utf8",
        b"--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-a\n+\xff\xfe\n",
        Outcome.REJECTED,
        "not valid UTF-8: byte 0xff",
    ),
    ("empty-script", Action(script=""), Outcome.REJECTED, "the script is empty"),
    ("whitespace-script", {"script": "  \n\n"}, Outcome.REJECTED, "the script is empty"),
    (
        "syntax-error",
        Action(script=SYNTAX_ERROR),
        Outcome.CRASHED,
        "SyntaxError in train.py at line",
    ),
    (
        "script-without-protected",
        Action(script="print('hi')\n"),
        Outcome.REJECTED,
        "protected region [data] is gone",
    ),
    ("wrong-type", 42, Outcome.PATCH_FAILED, "got int"),
    ("bad-dict", {"patch": "x"}, Outcome.PATCH_FAILED, "not a valid nanoenv.Action"),
    (
        "base-from-future",
        Action(diff="", base=99),
        Outcome.PATCH_FAILED,
        "base=99 names a step that has not run",
    ),
    (
        "unvalidated-action",  # model_construct skips pydantic's validation
        Action.model_construct(diff=123),
        Outcome.PATCH_FAILED,
        "not a valid nanoenv.Action",
    ),
    (
        "one-deep-expression",  # 100,000 unary minus signs: Python's parser gives up
        Action(script=BASELINE + "\nx = " + "-" * 100_000 + "1\n"),
        Outcome.CRASHED,
        "nested too deeply",
    ),
    ("never-ends", Action(diff=NEVER_ENDS, base=0), Outcome.TIMED_OUT, "deadline"),
    (
        "abort-halfway",  # a signal, no traceback: faulthandler's dump names the line
        Action(script=ABORT_HALFWAY),
        Outcome.CRASHED,
        f"code -6: Fatal Python error: Aborted, at train.py line {ABORT_HALFWAY.splitlines().index('            os.abort()') + 1} in main",
    ),
    ("crash-halfway", Action(script=CRASH_HALFWAY), Outcome.CRASHED, "exited with code 1"),
]


@pytest.fixture(scope="module")
def walk(tiny_data, tmp_path_factory):
    """One env, reset once, shared by the tests of this module in order."""
    import gymnasium as gym

    import nanoenv  # noqa: F401

    env = gym.make(
        "nanoenv/Speedrun-Tiny-v0",
        smoke=True,
        timeout_s=8,
        max_steps=100,
        runs_dir=tmp_path_factory.mktemp("runs"),
        disable_env_checker=True,
        render_mode="ansi",
    )
    env.reset(seed=0)
    yield env
    env.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "action", "outcome", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_is_answered(walk, name, action, outcome, message):
    """Each bad action: the expected non-ok outcome, a feedback naming it, a finite reward, a record."""
    script_before = walk.unwrapped.script
    obs, reward, _, _, info = walk.step(action)
    result = info["result"]
    assert result.outcome is outcome, obs["feedback"]
    assert message in result.message and message in obs["feedback"]
    assert math.isfinite(reward) and reward == -1.0
    assert walk.observation_space.contains(obs)
    step_dir = Path(result.artifacts_dir)
    assert json.loads((step_dir / "result.json").read_text())["outcome"] == outcome.value
    assert (step_dir / "action.json").exists()
    if name == "ten-megabytes":  # refused before it was kept: only an excerpt is on disk
        assert (step_dir / "action.json").stat().st_size < 20_000
    if outcome in (Outcome.PATCH_FAILED, Outcome.REJECTED):
        assert obs["script"] == script_before  # nothing changed, nothing lost
        assert "The script was not run" in obs["feedback"]


@pytest.mark.slow
def test_crash_keeps_the_curve_so_far(walk):
    """The script that crashed halfway kept its two val points and the traceback."""
    result = walk.unwrapped.results[-1]
    assert result.outcome is Outcome.CRASHED
    assert [p.step for p in result.val_curve] == [0, 5]
    assert "RuntimeError: boom at step 7" in result.log_tail
    assert "RuntimeError: boom at step 7" in walk.render()


@pytest.mark.slow
def test_an_abort_as_python_exits_is_judged_and_verified(walk):
    """A script that finished and then died of SIGABRT with no Python code running (as gloo's
    threads abort at exit, here C's abort() called by atexit) is judged on its numbers and
    verified, with a note; the same abort inside the loop was a crash (abort-halfway above).
    The script prints no end line (`saved model to`, where the sandbox would end it before
    Python exits), as a record run as it is prints none."""
    script = BASELINE.replace('print(f"saved model to {out_dir}"', 'print(f"wrote {out_dir}"')
    assert script != BASELINE
    script += "\nimport atexit, ctypes\natexit.register(ctypes.CDLL(None).abort)\n"
    _, reward, _, _, info = walk.step(Action(script=script))
    result = info["result"]
    assert result.exit_code == -6 and result.outcome is Outcome.OK, result.message
    assert result.verdict.verified and reward > -1.0
    assert any(
        n.startswith("the script finished, then died as Python exited") for n in result.notes
    )


@pytest.mark.slow
def test_timed_out_run_was_killed_at_its_deadline(walk):
    """The endless script was stopped at the 8 s deadline, not later, keeping its first point."""
    timed = next(r for r in walk.unwrapped.results if r.outcome is Outcome.TIMED_OUT)
    assert 8 <= timed.wall_time_s < 8 + 5
    assert [p.step for p in timed.val_curve] == [0]


@pytest.mark.slow
def test_absurd_step_numbers_are_plain_log(walk):
    """Val lines with 400- and 5000-digit step numbers (once an OverflowError in the
    observation, and a dead reader thread) are plain log: the run goes on and is judged."""
    digits = 'print("step:" + "9" * {n} + "/20 val_loss:0.1 train_time:1ms", flush=True)'
    script = BASELINE.replace(
        "def main():\n", "def main():\n    " + digits.format(n=400) + "\n    " + digits.format(n=5000) + "\n"
    )  # fmt: skip
    obs, reward, _, _, info = walk.step(Action(script=script))
    result = info["result"]
    assert result.outcome is Outcome.OK, obs["feedback"]
    assert walk.observation_space.contains(obs) and math.isfinite(reward)
    assert all(p.step <= 20 for p in result.curve)
    assert "9" * 400 in (Path(result.artifacts_dir) / "log.txt").read_text()


@pytest.mark.slow
def test_env_works_normally_afterwards(walk):
    """After all of that, a real step from the baseline runs and meets the target."""
    obs, reward, _, _, info = walk.step(Action(diff="", base=0))
    assert info["result"].outcome is Outcome.OK, obs["feedback"]
    assert obs["script"] == BASELINE and math.isfinite(reward)
    assert len(walk.unwrapped.results) == len(BAD_INPUTS) + 3  # + absurd steps, exit abort, this
