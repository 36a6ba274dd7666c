"""SpeedrunEnv through gymnasium: the API contract, real smoke-size runs, branching, artifacts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import nanoenv
from nanoenv import Action, Outcome, RunResult
from nanoenv.actions.patching import make_diff
from nanoenv.sandbox.fake import FakeSandbox
from nanoenv.tasks import baseline_script, load_task

BASELINE = baseline_script(load_task("tiny"))
FASTER_LR = make_diff(
    BASELINE, BASELINE.replace("learning_rate: float = 3e-3", "learning_rate: float = 4e-3")
)


def test_registered_ids():
    """Importing nanoenv registers the tiny track with gymnasium."""
    assert "nanoenv/Speedrun-Tiny-v0" in gym.registry and "nanoenv/Speedrun-Tiny-v1" in gym.registry
    assert gym.spec("nanoenv/Speedrun-Tiny-v0").nondeterministic


def test_unknown_task_suggests_the_nearest():
    """A mistyped task id names the nearest ones."""
    with pytest.raises(
        nanoenv.TaskError, match="did you mean `Speedrun-Tiny-v1` or `Speedrun-Tiny-v0`"
    ):
        nanoenv.SpeedrunEnv(task="Speedrun-Tiny-v9")


def test_a_new_track_folder_is_a_new_id_with_no_code_change(tmp_path, monkeypatch):
    """Registration comes from discovery: a copied envs/tiny with a new id registers as is."""
    import shutil

    from nanoenv import tasks

    envs = tmp_path / "envs"
    shutil.copytree(tasks.resource_dir("envs") / "tiny", envs / "mine")
    toml = envs / "mine" / "task.toml"
    toml.write_text(toml.read_text().replace('id = "Speedrun-Tiny-v0"', 'id = "Speedrun-Mine-v3"'))
    monkeypatch.setattr(tasks, "resource_dir", lambda name: envs)
    tasks._discover.cache_clear()
    try:
        nanoenv._register_tracks()
        assert gym.spec("nanoenv/Speedrun-Mine-v3").kwargs == {"task": "Speedrun-Mine-v3"}
        assert tasks.task_ids() == ["Speedrun-Mine-v3"]
    finally:
        gym.registry.pop("nanoenv/Speedrun-Mine-v3", None)
        monkeypatch.undo()
        tasks._discover.cache_clear()


def test_a_candidate_track_loads_from_its_folder_unregistered(tmp_path):
    """A task folder outside envs/ (a track being calibrated) loads by path and is not an id."""
    import shutil

    from nanoenv.tasks import load_task, resource_dir

    shutil.copytree(resource_dir("envs") / "tiny", tmp_path / "tiny-next")
    task = load_task(str(tmp_path / "tiny-next"))
    assert task.task_dir == (tmp_path / "tiny-next").resolve() and task.id == "Speedrun-Tiny-v0"
    assert task.target_val_loss == load_task("Speedrun-Tiny-v0").target_val_loss


@pytest.mark.slow
def test_a_task_built_in_code_runs_as_given(tiny_data, tmp_path):
    """A TaskSpec (a loaded task at another size) is a task too: overrides are validated the
    same way, and the env runs that task, not the registered one of the same id."""
    from nanoenv.env import SpeedrunEnv
    from nanoenv.errors import TaskError

    task = load_task("tiny")
    assert load_task(task, max_steps=3).max_steps == 3 and task.max_steps != 3
    with pytest.raises(TaskError, match="is not valid"):
        load_task(task, max_steps="many")
    env = SpeedrunEnv(load_task(task, max_steps=1), smoke=True, verify="none",
                      runs_dir=tmp_path)  # fmt: skip
    try:
        env.reset(seed=0)
        *_, truncated, info = env.step({"diff": "", "base": 0})
        assert truncated is True  # the given task's max_steps, not the registered 20
        assert info["result"].outcome.value in ("ok", "missed_target")
    finally:
        env.close()


def test_check_env_passes(make_env):
    """gymnasium's own checker accepts the env (its sampled actions are malformed patches)."""
    check_env(make_env().unwrapped)


def test_reset_returns_brief_and_baseline(make_env):
    """reset gives the baseline script and a brief with the goal, rules and baseline numbers."""
    env = make_env()
    obs, info = env.reset(seed=1)
    assert obs["script"] == BASELINE
    assert "Goal: reach val_loss <= 3.5300" in obs["feedback"]  # the smoke size's hidden target
    assert "hidden val windows" in obs["feedback"]
    assert "[data]" in obs["feedback"] and "[log]" in obs["feedback"]
    assert "A run has 1 CPU core(s)" in obs["feedback"]  # a smoke run's, held by cores_used
    assert obs["outcome"] == "" and math.isinf(obs["val_loss"]) and obs["curve_points"] == 0
    assert env.observation_space.contains(obs)
    assert info["task"] == "Speedrun-Tiny-v0"


@pytest.mark.slow
def test_a_real_step_end_to_end(make_env):
    """A no-op reruns the baseline: a real run, a curve, a reward, every artifact on disk."""
    env = make_env()
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("")
    result: RunResult = info["result"]
    assert result.outcome is Outcome.OK, obs["feedback"]
    assert env.observation_space.contains(obs)
    assert not terminated and not truncated
    assert math.isfinite(reward) and reward == result.reward
    assert len(result.val_curve) == 5  # steps 0, 5, 10, 15, 20 at smoke size
    assert obs["curve_points"] == 5
    last = result.val_curve[-1]
    np.testing.assert_allclose(obs["curve"][4], [20, last.train_time_s, last.val_loss])
    # The harness re-evaluated the model: on the script's own val tokens its loss is the
    # script's, to the reported digits; the reward's loss is the one on hidden val.
    assert result.verdict.verified and "VERIFIED" in obs["feedback"]
    region = next(c for c in result.verdict.checks if c.name == "reported_matches").numbers
    assert abs(region["verified"] - last.val_loss) < 1e-3
    assert result.val_loss == result.hidden_val_loss > 0
    # Harness time: process start to the exit of the job, more than the script's own clock
    # and more than the window up to the last val line (saving the model is work).
    assert result.train_time_s > result.reported_train_time_s == last.train_time_s
    assert (
        result.train_time_s > result.telemetry["harness_window_s"] + result.telemetry["untimed_s"]
    )
    assert result.telemetry["cpu_time_s"] > 0 and result.telemetry["peak_rss_mb"] > 50
    step_dir = Path(result.artifacts_dir)
    names = {p.name for p in step_dir.iterdir()}
    assert {
        "action.json",
        "train.py",
        "patch.diff",
        "log.txt",
        "lines.jsonl",
        "out",
        "result.json",
    } <= names
    assert {"model.safetensors", "model.json"} <= {p.name for p in (step_dir / "out").iterdir()}
    assert RunResult.model_validate_json((step_dir / "result.json").read_text()) == result
    assert (step_dir / "train.py").read_text() == BASELINE
    stamped = [json.loads(ln) for ln in (step_dir / "lines.jsonl").read_text().splitlines()]
    assert [s["t"] for s in stamped] == sorted(s["t"] for s in stamped)


@pytest.mark.slow
def test_edits_accumulate_and_branch(make_env):
    """Diffs apply to the previous step's script; base=k branches from step k."""
    # patching is under test here, not training: the fake sandbox replays a log
    env = make_env(verify="none", sandbox=FakeSandbox())
    env.reset(seed=0)
    obs, *_ = env.step(FASTER_LR)
    assert "learning_rate: float = 4e-3" in obs["script"]
    second = make_diff(
        obs["script"], obs["script"].replace("grad_clip: float = 1.0", "grad_clip: float = 0.5")
    )
    obs, *_ = env.step(second)
    assert "4e-3" in obs["script"] and "grad_clip: float = 0.5" in obs["script"]
    obs, _, _, _, info = env.step(Action(diff="", base=0))
    assert obs["script"] == BASELINE and info["result"].base == 0
    obs, _, _, _, info = env.step({"diff": second, "base": 1})
    assert info["result"].outcome is Outcome.OK
    assert "4e-3" in obs["script"] and "0.5" in obs["script"]


def test_truncates_after_max_steps(make_env):
    """The episode is truncated after max_steps steps; reset starts a fresh history."""
    env = make_env(max_steps=2, verify="none", sandbox=FakeSandbox())
    env.reset(seed=0)
    assert env.step("not a diff")[3] is False
    assert env.step("not a diff")[3] is True
    obs, _ = env.reset(seed=0)
    assert obs["script"] == BASELINE and env.unwrapped.results == []


@pytest.mark.slow
def test_async_vector_env_runs_two_at_once(tiny_data, tmp_path):
    """gymnasium's AsyncVectorEnv with 2 envs, default shared memory, real runs in both."""
    fns = [
        lambda: gym.make("nanoenv/Speedrun-Tiny-v0", smoke=True, runs_dir=tmp_path / "runs")
        for _ in range(2)
    ]
    envs = gym.vector.AsyncVectorEnv(fns)
    try:
        obs, _ = envs.reset(seed=[1, 2])
        assert obs["script"] == (BASELINE, BASELINE)
        obs, rewards, _, _, infos = envs.step(["", "junk"])
        assert obs["outcome"] == ("ok", "patch_failed")
        assert np.isfinite(rewards).all() and rewards[1] == -1.0
        assert infos["result"][0].outcome is Outcome.OK
        assert math.isfinite(obs["val_loss"][0]) and math.isinf(obs["val_loss"][1])
        # the progress stacks across envs though only one has a run on record (None did not)
        assert infos["progress"]["best_step"].tolist() == [1, -1]
    finally:
        envs.close()


def test_unicode_survives_vector_shared_memory(tiny_data, tmp_path):
    """A script with non-ASCII text comes back intact through AsyncVectorEnv's shared memory
    (the text is the subject, so the fake sandbox runs it)."""
    script = BASELINE.replace("# Hyperparameters", "# Hyperparameters — ReLU² später 🚀")
    fns = [lambda: gym.make("nanoenv/Speedrun-Tiny-v0", smoke=True, runs_dir=tmp_path / "r",
                            sandbox=FakeSandbox(), verify="none")]  # fmt: skip
    envs = gym.vector.AsyncVectorEnv(fns)
    try:
        envs.reset(seed=0)
        obs, *_ = envs.step([Action(script=script)])
        assert obs["script"][0] == script
    finally:
        envs.close()


def test_loss_at_budget_reward(make_env):
    """With reward='loss_at_budget' the reward is the baseline loss minus the run's loss, for a
    run that ended within the budget (the baseline's time + 5 %); past it, a penalty that grows
    with the overrun. The fake sandbox's clock is exact, so both branches are checked."""
    env = make_env(reward="loss_at_budget", verify="none", sandbox=FakeSandbox())
    env.reset(seed=0)
    ctx = env.unwrapped.settings.reward_context
    assert ctx.budget_s == pytest.approx(1.05 * env.unwrapped.settings.baseline_train_time_s)
    _, reward, _, _, info = env.step("")
    result = info["result"]
    assert result.train_time_s <= ctx.budget_s
    assert reward == pytest.approx(max(-1, min(1, ctx.baseline_val_loss - result.val_loss)))
    slow = {"script": BASELINE + "\n# fake: step_s=1.0\n"}  # 10 steps of a second each
    _, reward, _, _, info = env.step(slow)
    result = info["result"]
    overrun = (result.train_time_s - ctx.budget_s) / ctx.budget_s
    assert overrun > 0 and reward == pytest.approx(-min(1.0, 0.05 + 10 * overrun))


def test_steps_objective_is_measured_on_the_reported_curve_and_reported(make_env):
    """Every run carries the steps objective: the training tokens at the first val point at or
    below the reported-loss target (nanoenv.judging.steps), and the feedback says it is no reward."""
    env = make_env(verify="none", sandbox=FakeSandbox())
    env.reset(seed=0)
    obs, _, _, _, info = env.step("")
    result = info["result"]
    target = env.unwrapped.task.target_val_loss
    first = next((p for p in result.val_curve if p.val_loss <= target), None)
    assert first is not None, "the smoke baseline meets its own target"
    assert result.tokens_to_target == int(first.extra["tokens"])
    assert "Steps objective (as your log reports it, not a reward)" in obs["feedback"]
    assert env.unwrapped.settings.baseline_tokens == env.unwrapped.task.baseline.tokens == 20480


def test_a_folder_in_the_cwd_never_shadows_a_track(tmp_path, monkeypatch):
    """load_task("tiny") means envs/tiny even where the cwd holds a task folder named tiny."""
    import shutil

    from nanoenv.tasks import load_task, resource_dir

    shutil.copytree(resource_dir("envs") / "tiny", tmp_path / "tiny")
    toml = tmp_path / "tiny" / "task.toml"
    toml.write_text(toml.read_text().replace('id = "Speedrun-Tiny-v0"', 'id = "Speedrun-Other-v1"'))
    monkeypatch.chdir(tmp_path)
    assert load_task("tiny").id == "Speedrun-Tiny-v0"
    assert load_task("./tiny").id == "Speedrun-Other-v1"
