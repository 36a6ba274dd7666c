"""The fake sandbox: the env's mechanics in milliseconds, with nothing trained.

The subject here is what surrounds a run (outcomes, rewards, feedback, records, cancel), so
the run itself is a replayed log; training is tested for real elsewhere.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from nanoenv.env import SpeedrunEnv
from nanoenv.sandbox.fake import FakeSandbox, directives
from nanoenv.types import Job, Limits, Outcome


@pytest.fixture
def fake_env(tiny_data, tmp_path):
    envs = []

    def make(**kwargs):
        kwargs.setdefault("sandbox", FakeSandbox())
        env = SpeedrunEnv("Speedrun-Tiny-v0", smoke=True, verify="none", runs_dir=tmp_path,
                          **kwargs)  # fmt: skip
        envs.append(env)
        env.reset(seed=0)
        return env

    yield make
    for env in envs:
        env.close()


def with_directives(env, *lines: str) -> dict:
    return {"script": env.scripts[0] + "".join(f"\n# fake: {ln}" for ln in lines) + "\n"}


def test_directives_are_read_from_comment_lines():
    script = "x = 1\n# fake: val_loss=3.25\n  #fake: print=hello world\n# fake: hang\n# fake: print=again\n"
    assert directives(script) == {"val_loss": ["3.25"], "print": ["hello world", "again"],
                                  "hang": [""]}  # fmt: skip


def test_a_replayed_run_is_judged_and_rewarded_like_a_real_one(fake_env):
    env = fake_env()
    t = time.monotonic()
    _, r0, *_, i0 = env.step("")
    obs, r1, *_, i1 = env.step(with_directives(env, "val_loss=1.0", "steps=20", "step_s=0.02"))
    assert time.monotonic() - t < 10
    base, fast = i0["result"], i1["result"]
    assert base.outcome is fast.outcome is Outcome.OK
    # the virtual clock: 20 steps of 0.02 s from the step-0 val line to the exit (+0.05), and
    # the second of start-up before step 0, which the tiny track charges (no allowance)
    assert fast.train_time_s == pytest.approx(1.0 + 0.45)
    assert fast.val_loss == pytest.approx(1.0, abs=0.01)
    assert r1 > r0  # faster to the target: a larger time_to_target reward
    assert [p.step for p in fast.val_curve] == [0, 10, 20]
    assert "final val_loss" in obs["feedback"]
    step_dir = Path(fast.artifacts_dir)
    assert json.loads((step_dir / "result.json").read_text())["outcome"] == "ok"
    assert (step_dir / "out" / "model.safetensors").exists()


def test_two_seeds_give_two_losses_and_a_t_test(fake_env):
    env = fake_env(repeats=2)
    *_, info = env.step("")
    result = info["result"]
    assert result.outcome in (Outcome.OK, Outcome.MISSED_TARGET), result.message
    assert result.significance is not None  # two seeds, two different losses: a t-test ran


def test_failures_are_told_apart(fake_env):
    env = fake_env(timeout_s=1)
    crashed = env.step(with_directives(env, "exit=1"))[4]["result"]
    assert crashed.outcome is Outcome.CRASHED
    assert "RuntimeError: the fake script was told to fail" in crashed.message
    hung = env.step(with_directives(env, "hang"))[4]["result"]
    assert hung.outcome is Outcome.TIMED_OUT
    no_model = env.step(with_directives(env, "no_model"))[4]["result"]
    # verify="none" trusts the log: the model is never read, so its absence changes nothing
    assert no_model.outcome is Outcome.OK
    assert not (Path(no_model.artifacts_dir) / "out" / "model.safetensors").exists()


def test_cancel_ends_a_hanging_fake_run(fake_env):
    env = fake_env()
    handle = env.submit(with_directives(env, "hang"))
    time.sleep(0.3)
    handle.cancel()
    *_, info = handle.result(timeout=10)
    assert info["result"].outcome is Outcome.INFRA_ERROR


def test_verification_jobs_are_refused_with_a_reason():
    job = Job(files={"w.py": ""}, command=["python", "w.py"], limits=Limits(timeout_s=5),
              labels={"nanoenv.role": "verify"})  # fmt: skip
    result = FakeSandbox().run(job, None, threading.Event())
    assert 'use verify="none"' in (result.infra_error or "")
