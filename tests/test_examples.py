"""The examples, each run at smoke size as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script: str, *args: str, env: dict | None = None, cwd: Path) -> str:
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                         cwd=cwd, env={**os.environ, **(env or {})}, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_quickstart(tiny_data, tmp_path):
    """make, reset, one patch, the observation printed."""
    out = run("quickstart.py", "--smoke", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert "Goal: reach val_loss" in out and "outcome=" in out and "VERIFIED" in out


@pytest.mark.slow
def test_replay_speedrun_history(tiny_data, tmp_path):
    """The first ideas of the history, in order, each measured; JSON and frontier written."""
    out = run("replay_speedrun_history.py", "--smoke", "--limit", "2", "--json", "h.json", "--png", "f.png",
              "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)  # fmt: skip
    steps = json.loads((tmp_path / "h.json").read_text())
    assert [s["idea"] for s in steps] == ["baseline", "01-rope", "02-muon"]
    assert all(s["outcome"] in ("ok", "missed_target") and s["verified"] for s in steps)
    assert steps[0]["val_loss"] and steps[0]["train_time_s"]
    assert (tmp_path / "f.png").stat().st_size > 10_000 and "to target s" in out
    assert len(sorted((EXAMPLES / "history").glob("*.diff"))) >= 6


@pytest.mark.slow
def test_search_agent(tiny_data, tmp_path):
    """Hill climbing through patches: each proposal runs; the best is reported."""
    out = run(
        "search_agent.py",
        "--smoke",
        "--steps",
        "1",
        "--runs-dir",
        str(tmp_path / "runs"),
        cwd=tmp_path,
    )
    assert out.count("step ") >= 2 and "best: step" in out


@pytest.mark.slow
def test_rl_vector(tiny_data, tmp_path):
    """Two async envs and a random policy over discrete moves."""
    out = run(
        "rl_vector.py",
        "--smoke",
        "--envs",
        "2",
        "--steps",
        "1",
        "--runs-dir",
        str(tmp_path / "runs"),
        cwd=tmp_path,
    )
    assert "t=0:" in out and "returns" in out


@pytest.mark.slow
def test_llm_agent_against_a_stand_in_server(tiny_data, tmp_path, fake_llm):
    """The agent loop talks to the endpoint through the openai SDK; its diffs become real,
    verified steps."""
    env = {
        "OPENAI_BASE_URL": fake_llm.url,
        "OPENAI_API_KEY": "test-key",
        "NANOENV_LLM_MODEL": "stand-in",
    }
    out = run(
        "llm_agent.py",
        "--smoke",
        "--steps",
        "1",
        "--runs-dir",
        str(tmp_path / "runs"),
        env=env,
        cwd=tmp_path,
    )
    (req,) = fake_llm.requests
    assert (
        req["path"] == "/v1/chat/completions"
        and req["body"]["model"] == "stand-in"
        and req["auth"] == "Bearer test-key"
        and req["user_agent"].startswith("OpenAI/Python")
    )
    assert "Current script" in req["body"]["messages"][1]["content"]
    assert "step 1: ok" in out or "step 1: missed_target" in out
