"""nanoenv as a verifiers environment, run by verifiers' own evaluation loop against a stand-in
OpenAI-compatible server that answers every turn with a real patch, at smoke size."""

from __future__ import annotations

import pytest

vf = pytest.importorskip("verifiers", reason="pip install -e '.[verifiers]'")

from nanoenv.integrations.verifiers import SpeedrunVerifiersEnv, load_environment  # noqa: E402
from nanoenv.records.store import RunStore  # noqa: E402


def test_a_wrong_task_or_rollout_reward_fails_at_load():
    """Mistakes are caught when the environment is made, not in the middle of an evaluation."""
    with pytest.raises(Exception, match="did you mean"):
        load_environment(task="nanoenv/Speedrun-Tiny-v9")
    with pytest.raises(ValueError, match="best, last or sum"):
        load_environment(rollout_reward="mean")
    # verifiers' own loader (vf-eval's) finds it by its module name
    assert isinstance(vf.load_environment("nanoenv.integrations.verifiers"), SpeedrunVerifiersEnv)


@pytest.mark.slow
def test_verifiers_evaluation_rewards_are_nanoenvs(tiny_data, tmp_path, fake_llm, monkeypatch):
    """2 rollouts x 2 turns through ``env.evaluate``: the model saw nanoenv's brief and script,
    every answer was an env step (the last one too), and each rollout's reward is the best of
    its verified, harness-timed step rewards, as nanoenv recorded them."""
    monkeypatch.setenv("STAND_IN_KEY", "test-key")
    env = load_environment(task="tiny", seeds=(0, 1), max_turns=2,
                           smoke=True, runs_dir=tmp_path / "runs")  # fmt: skip
    assert isinstance(env, SpeedrunVerifiersEnv) and isinstance(env, vf.MultiTurnEnv)
    client = vf.ClientConfig(api_base_url=fake_llm.url, api_key_var="STAND_IN_KEY", max_retries=0)
    out = env.evaluate_sync(client=client, model="stand-in", state_columns=["nanoenv"])

    states = out["outputs"]
    assert len(states) == 2 and len(fake_llm.requests) == 4
    # the two rollouts ask at once: first turns carry 2 messages, second turns 4
    firsts = [r["body"]["messages"] for r in fake_llm.requests if len(r["body"]["messages"]) == 2]
    seconds = [r["body"]["messages"] for r in fake_llm.requests if len(r["body"]["messages"]) == 4]
    assert len(firsts) == len(seconds) == 2
    for first in firsts:
        assert first[0]["role"] == "system" and "unified diff" in first[0]["content"]
        assert "## Current script" in first[1]["content"] and "val_loss" in first[1]["content"]
    for second in seconds:
        assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
        assert second[3]["content"].startswith("## Last report") and "4e-3" in second[3]["content"]
    with RunStore(tmp_path / "runs").connect() as con:
        recorded = con.execute("SELECT reward FROM steps").fetchall()
    assert len(recorded) == 4  # both turns of both rollouts ran
    for state in states:
        steps = state["nanoenv"]
        assert [s["step"] for s in steps] == [1, 2]
        # turn 1 raises the lr; turn 2 sends the same diff again, which no longer applies
        assert steps[0]["outcome"] in ("ok", "missed_target") and steps[0]["verified"]
        assert steps[1]["outcome"] == "patch_failed" and steps[1]["reward"] == -1.0
        assert state["reward"] == pytest.approx(max(s["reward"] for s in steps))
    assert sorted(r for (r,) in recorded) == sorted(
        s["reward"] for st in states for s in st["nanoenv"]
    )
