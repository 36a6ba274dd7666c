"""`nanoenv serve`: the environment over OpenEnv's WebSocket protocol, driven by OpenEnv's own
clients (GenericEnvClient, and SpeedrunClient, an EnvClient).

The server's mechanics (sessions, limits, idle timeout, tokens, bad messages) run on the fake
sandbox; what a client leaving mid-step does to a real job, and the command itself, run for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("openenv")

import uvicorn  # after the skip: the openenv extra may be missing
from openenv.core import GenericEnvClient

from nanoenv.integrations.openenv import (
    SpeedrunAction,
    SpeedrunClient,
    SpeedrunEnvironment,
    make_app,
)
from nanoenv.liveness import descendants
from nanoenv.records.store import RunStore
from nanoenv.sandbox.fake import FakeSandbox
from nanoenv.tasks import DEFAULT_TASK


class Served:
    """An app served by uvicorn in a thread of the test, on a free loopback port."""

    def __init__(self, app) -> None:
        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    @property
    def sessions(self):
        return self.app.state.sessions

    def get(self, path: str, token: str | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=90)


def wait_for(condition, timeout_s: float = 20.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.05)


async def until(condition, timeout_s: float = 20.0, what: str = "the condition") -> None:
    """wait_for, inside a client's event loop (which must keep running meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        await asyncio.sleep(0.05)


@pytest.fixture
def serve(track_data, tmp_path):
    """serve(wall_s, **make_app kwargs) -> Served: on the fake sandbox (each job taking wall_s
    real seconds) unless an env_factory is given."""
    started = []

    def start(wall_s: float = 0.0, **kwargs):
        kwargs.setdefault(
            "env_factory",
            lambda runs: SpeedrunEnvironment(
                runs,
                task=DEFAULT_TASK,
                smoke=True,
                verify="none",
                sandbox=FakeSandbox(wall_s=wall_s),
            ),
        )
        served = Served(make_app(tmp_path / "served", **kwargs))
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def with_directives(script: str, *lines: str) -> str:
    return script + "".join(f"\n# fake: {ln}" for ln in lines) + "\n"


def test_a_session_resets_steps_and_keeps_state(serve):
    """Reset gives the brief and the baseline; a step gives nanoenv's own result and reward (the
    reward in the message is the one on disk); state says where the episode stands."""
    served = serve()
    with SpeedrunClient(served.url).sync() as env:
        first = env.reset(seed=0)
        assert "tiny CPU track (v1)" in first.observation.feedback and first.observation.step == 0
        assert first.reward is None and not first.done
        script = with_directives(first.observation.script, "val_loss=3.5")
        result = env.step(SpeedrunAction(script=script))
        obs = result.observation
        assert (obs.step, obs.outcome, obs.val_loss) == (1, "ok", pytest.approx(3.501, abs=0.01))
        on_disk = json.loads((Path(obs.result["artifacts_dir"]) / "result.json").read_text())
        assert result.reward == pytest.approx(on_disk["reward"]) and result.reward > 0
        assert obs.curve[0][0] == 0 and obs.curve[-1][2] == pytest.approx(obs.val_loss)
        assert obs.progress["best_val_loss"] == pytest.approx(obs.val_loss)
        state = env.state()
        assert (state.step_count, state.current, state.outcomes) == (1, 1, ["ok"])
        assert state.task == "Speedrun-Tiny-v1" and not state.running


def test_generic_client_speaks_the_same_protocol(serve):
    """OpenEnv's GenericEnvClient, with plain dicts: a bare edit as `diff` and a no-op."""
    served = serve()
    with GenericEnvClient(base_url=served.url).sync() as env:
        first = env.reset(seed=1)
        assert first.observation["script"].startswith('"""Speedrun-Tiny-v1 baseline')
        rerun = env.step({"diff": ""})
        assert rerun.observation["outcome"] == "ok" and isinstance(rerun.reward, float)
        assert env.state()["step_count"] == 1


def test_bad_messages_are_answered_and_the_session_goes_on(serve):
    """Invalid JSON, an unknown message, an action of the wrong shape: an error each, and the
    session still steps. A patch that does not apply is a step (patch_failed), not an error."""
    served = serve()

    async def scenario():
        client = GenericEnvClient(base_url=served.url, message_timeout_s=30)
        await client.connect()
        ws = client._ws
        answers = []
        for raw in ("{not json", json.dumps({"type": "dance"}),
                    json.dumps({"type": "step", "data": {"diff": 42}})):  # fmt: skip
            await ws.send(raw)
            answers.append(json.loads(await ws.recv()))
        await client.reset(seed=0)
        failed = await client.step(
            {"diff": "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-nope\n+x\n"}
        )
        both = await client.step({"diff": "", "script": "print(1)\n"})
        await client.disconnect()
        return answers, failed, both

    answers, failed, both = asyncio.run(scenario())
    codes = [a["data"]["code"] for a in answers]
    assert all(a["type"] == "error" for a in answers)
    assert codes == ["INVALID_JSON", "UNKNOWN_TYPE", "VALIDATION_ERROR"]
    assert failed.observation["outcome"] == "patch_failed" and failed.reward == -1.0
    assert both.observation["outcome"] == "patch_failed"  # diff and script: a step, not an error
    assert "not both" in both.observation["feedback"]


def test_two_sessions_at_once_each_with_its_own_runs(serve):
    """Two clients step at the same time, each in its own runs folder; a third is refused
    while both are open (CAPACITY_REACHED), and gets in once one has left."""
    served = serve(wall_s=1.5, max_sessions=2)

    async def one(seed: int):
        async with SpeedrunClient(served.url) as env:
            first = await env.reset(seed=seed)
            script = with_directives(first.observation.script, f"val_loss={3.4 + seed / 10}")
            result = await env.step(SpeedrunAction(script=script))
            return result, await env.state()

    async def refused():
        await asyncio.sleep(0.5)  # both sessions are open by now
        client = GenericEnvClient(base_url=served.url)
        await client.connect()  # the server answers a session it cannot open before any request
        refusal = json.loads(await client._ws.recv())
        assert refusal["data"]["code"] == "CAPACITY_REACHED", refusal
        assert refusal["data"]["max_sessions"] == 2
        await client.disconnect()

    async def scenario():
        return await asyncio.gather(one(1), one(2), refused())

    (a, state_a), (b, state_b), _ = asyncio.run(scenario())
    assert (a.observation.outcome, b.observation.outcome) == ("ok", "ok")
    assert a.observation.val_loss != b.observation.val_loss
    assert state_a.runs_dir != state_b.runs_dir
    for state in (state_a, state_b):
        rows = RunStore(Path(state.runs_dir)).rows()
        assert [r["outcome"] for r in rows] == ["ok"]
    wait_for(lambda: not served.sessions.open, what="both sessions closing")
    with GenericEnvClient(base_url=served.url).sync() as env:
        assert env.reset().observation["outcome"] == ""


def test_closed_sessions_leave_no_file_open(serve):
    """A server lives through many sessions: once they have closed, it holds no file of their
    runs folders (each step's run store connection is closed, not left to the collector)."""
    served = serve()
    for seed in range(3):
        with SpeedrunClient(served.url).sync() as env:
            env.reset(seed=seed)
            env.step(SpeedrunAction(diff=""))
            env.step(SpeedrunAction(diff="not a diff"))
    wait_for(lambda: not served.sessions.open, what="the sessions closing")
    root = str(served.sessions.runs_dir)
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith(root):
                held.append(target)
    assert held == []


def test_an_idle_session_is_closed(serve):
    """A session with no message and no running step past the timeout is closed: its env is
    closed, its slot freed, and its client told why (close code 1001, "idle")."""
    served = serve(idle_timeout_s=0.5)

    async def scenario():
        client = SpeedrunClient(served.url, message_timeout_s=10)
        await client.reset(seed=0)
        [session] = served.sessions.open.values()
        await until(lambda: not served.sessions.open, what="the idle session closing")
        await asyncio.wait_for(client._ws.wait_closed(), timeout=10)
        return session, client._ws.close_code, client._ws.close_reason

    session, code, reason = asyncio.run(scenario())
    assert (code, session.closed, session.env._closed) == (1001, True, True)
    assert "idle" in reason
    assert served.get("/capacity")[1]["active_sessions"] == 0


def test_a_long_step_is_not_idle(serve):
    """A step that runs longer than the idle timeout keeps its session: busy is not idle."""
    served = serve(wall_s=2.0, idle_timeout_s=0.5)
    with SpeedrunClient(served.url).sync() as env:
        env.reset(seed=0)
        result = env.step(SpeedrunAction(diff=""))
        assert result.observation.outcome == "ok" and env.state().step_count == 1


def test_a_client_that_leaves_mid_step_has_its_run_cancelled(serve):
    """The client goes away while its step runs (a job that would never end): the run is
    cancelled at once, the step's record ends as infra_error "cancelled", the session closes."""
    served = serve()

    async def scenario():
        client = SpeedrunClient(served.url)
        first = await client.reset(seed=0)
        step = asyncio.ensure_future(
            client.step(SpeedrunAction(script=with_directives(first.observation.script, "hang")))
        )
        await until(
            lambda: any(s.busy for s in served.sessions.open.values()), what="the step starting"
        )
        await client._ws.close()
        with pytest.raises(Exception):  # noqa: B017 - the client's own socket error
            await step
        return first

    asyncio.run(scenario())
    wait_for(lambda: not served.sessions.open, what="the session closing")
    [runs] = list((served.sessions.runs_dir).iterdir())
    [row] = RunStore(runs).rows()
    assert row["status"] == "finished" and row["outcome"] == "infra_error"
    result = json.loads((Path(row["artifacts_dir"]) / "result.json").read_text())
    assert "cancelled" in result["message"]


def test_a_token_is_needed_off_loopback(serve, tmp_path, monkeypatch):
    """With a token every request but /health needs it; `nanoenv serve` refuses a public address
    without one."""
    served = serve(token="s3cret")
    assert served.get("/health") == (200, {"status": "healthy"})
    assert served.get("/schema")[0] == 401
    status, schema = served.get("/schema", token="s3cret")
    assert status == 200 and "diff" in schema["action"]["properties"]
    with pytest.raises(ConnectionError):
        asyncio.run(GenericEnvClient(base_url=served.url).connect())
    with SpeedrunClient(served.url, token="s3cret").sync() as env:
        assert env.reset(seed=0).observation.step == 0
    from nanoenv.cli import main

    monkeypatch.delenv("NANOENV_SERVE_TOKEN", raising=False)
    assert main(["serve", "--env", "nanoenv/Nope-v0", "--runs-dir", str(tmp_path)]) == 2
    assert main(["serve", "--host", "0.0.0.0", "--runs-dir", str(tmp_path)]) == 2


@pytest.mark.slow
def test_a_client_leaving_mid_step_kills_the_real_job(serve):
    """A real training job in the local sandbox, patched to sleep: the client leaves, and the
    job's processes are gone within seconds, the step recorded as cancelled."""
    served = serve(
        env_factory=lambda runs: SpeedrunEnvironment(
            runs, task=DEFAULT_TASK, smoke=True, verify="none"
        ),
    )
    before = set(descendants(os.getpid()))

    async def scenario():
        client = SpeedrunClient(served.url)
        first = await client.reset(seed=0)
        script = first.observation.script.replace(
            'if __name__ == "__main__":', 'if __name__ == "__main__":\n    time.sleep(300)', 1
        )
        assert script != first.observation.script
        step = asyncio.ensure_future(client.step(SpeedrunAction(script=script)))
        # the job waits for free cores first (the machine-wide slots): give it time to start
        await until(
            lambda: len(set(descendants(os.getpid())) - before) >= 2,
            timeout_s=180,
            what="the job starting",
        )
        await client._ws.close()
        with pytest.raises(Exception):  # noqa: B017
            await step

    asyncio.run(scenario())
    wait_for(lambda: not served.sessions.open, what="the session closing")
    wait_for(
        lambda: not set(descendants(os.getpid())) - before,
        timeout_s=60,
        what="the job's processes ending",
    )
    [runs] = list(served.sessions.runs_dir.iterdir())
    [row] = RunStore(runs).rows()
    assert (row["status"], row["outcome"]) == ("finished", "infra_error")
    result = json.loads((Path(row["artifacts_dir"]) / "result.json").read_text())
    assert "cancelled" in result["message"]


@pytest.mark.docker
def test_a_client_leaving_mid_step_leaves_no_container(
    serve, docker_client, docker_image, no_leftovers
):
    """The same in the Docker sandbox: the step's container is removed once the client leaves."""
    from conftest import own_containers

    served = serve(
        env_factory=lambda runs: SpeedrunEnvironment(
            runs, task=DEFAULT_TASK, smoke=True, verify="none", sandbox="docker"
        ),
    )

    def containers() -> list:
        return own_containers(docker_client)

    async def scenario():
        client = SpeedrunClient(served.url)
        first = await client.reset(seed=0)
        script = first.observation.script.replace(
            'if __name__ == "__main__":', 'if __name__ == "__main__":\n    time.sleep(300)', 1
        )
        step = asyncio.ensure_future(client.step(SpeedrunAction(script=script)))
        await until(lambda: bool(containers()), timeout_s=180, what="the step's container starting")
        await client._ws.close()
        with pytest.raises(Exception):  # noqa: B017
            await step

    asyncio.run(scenario())
    wait_for(lambda: not served.sessions.open, timeout_s=60, what="the session closing")
    assert containers() == []
    [runs] = list(served.sessions.runs_dir.iterdir())
    [row] = RunStore(runs).rows()
    assert (row["status"], row["outcome"]) == ("finished", "infra_error")


@pytest.mark.slow
def test_nanoenv_serve_runs_a_real_step(track_data, tmp_path):
    """The command itself, as a user starts it: /health answers, a real smoke step through it
    is verified, and SIGINT stops it cleanly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nanoenv.cli",
            "serve",
            "--smoke",
            "--port",
            str(port),
            "--runs-dir",
            str(tmp_path / "served"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                assert server.poll() is None, server.stdout.read()
                return False

        wait_for(healthy, timeout_s=60, what="the server answering /health")
        with SpeedrunClient(url).sync() as env:
            env.reset(seed=0)
            result = env.step(SpeedrunAction(diff=""))
        obs = result.observation
        assert obs.outcome == "ok", obs.feedback
        assert obs.result["verdict"]["verified"] is True
        assert result.reward == pytest.approx(obs.result["reward"])
    finally:
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=60)
    assert server.returncode == 0, out
    assert f"ws://127.0.0.1:{port}/ws" in out
