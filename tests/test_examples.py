"""The examples, each run at smoke size as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

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


class _FakeChat(BaseHTTPRequestHandler):
    """A stand-in for an OpenAI-compatible server: answers every chat with one diff."""

    diff = ""
    requests: ClassVar[list[dict]] = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        headers = {"auth": self.headers.get("Authorization"),
                   "user_agent": self.headers.get("User-Agent", "")}  # fmt: skip
        _FakeChat.requests.append({"path": self.path, **headers, **body})
        reply = {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": f"Raise the learning rate.\n```diff\n{self.diff}```",
                    }
                }
            ]
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_llm():
    from nanoenv.actions.patching import make_diff
    from nanoenv.tasks import baseline_script, load_task

    base = baseline_script(load_task("tiny"))
    _FakeChat.diff = make_diff(
        base, base.replace("learning_rate: float = 3e-3", "learning_rate: float = 4e-3")
    )
    _FakeChat.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


@pytest.mark.slow
def test_llm_agent_against_a_stand_in_server(tiny_data, tmp_path, fake_llm):
    """The agent loop talks to the endpoint through the openai SDK; its diffs become real,
    verified steps."""
    env = {
        "OPENAI_BASE_URL": fake_llm,
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
    (req,) = _FakeChat.requests
    assert (
        req["path"] == "/v1/chat/completions"
        and req["model"] == "stand-in"
        and req["auth"] == "Bearer test-key"
        and req["user_agent"].startswith("OpenAI/Python")
    )
    assert "Current script" in req["messages"][1]["content"]
    assert "step 1: ok" in out or "step 1: missed_target" in out
