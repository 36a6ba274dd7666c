"""Records survive what the harness cannot prevent: being killed mid-run, and a full disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nanoenv import Outcome
from nanoenv.cli import main as cli_main
from nanoenv.records.artifacts import load_result


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_killed_harness_leaves_an_interrupted_step_and_no_process(tiny_data, tmp_path, capsys):
    """SIGKILL the harness mid-run: the step's folder stays (no result.json) and the job dies too."""
    runs = tmp_path / "runs"
    code = textwrap.dedent(
        f"""
        import gymnasium as gym, nanoenv
        env = gym.make("nanoenv/Speedrun-Tiny-v0", runs_dir={str(runs)!r}, disable_env_checker=True)
        env.reset(seed=0)
        env.step("")  # the full-size baseline: it runs far longer than this test waits
        """
    )
    harness = subprocess.Popen([sys.executable, "-c", code])
    try:
        logs = lambda: list(runs.glob("*/step-0001/log.txt"))  # noqa: E731
        assert _wait_for(lambda: logs() and "val_loss" in logs()[0].read_text(), 60)
    finally:
        harness.kill()
        harness.wait()
    step_dir = logs()[0].parent
    assert load_result(step_dir) is None
    assert (step_dir / "train.py").exists() and (step_dir / "action.json").exists()
    assert "step:0/200 val_loss:" in (step_dir / "log.txt").read_text()
    # The job had PR_SET_PDEATHSIG: it dies with its harness, it does not train on unseen.
    assert _wait_for(lambda: not _marked_jobs(harness.pid), 5)
    assert cli_main(["runs", "list", "--runs-dir", str(runs)]) == 0
    assert "interrupted" in capsys.readouterr().out


def _marked_jobs(harness_pid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    if f"NANOENV_HARNESS_PID={harness_pid}".encode() in f.read():
                        pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs: a disk that can really fill up (needs root to mount)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.slow
def test_full_disk_is_an_infra_error_and_recoverable(make_env, small_disk):
    """With the runs disk full a step is infra_error (no penalty); once space is freed, steps work."""
    env = make_env(runs_dir=small_disk / "runs", verify="none")
    env.reset(seed=0)
    filler = small_disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    obs, reward, _, _, info = env.step("")
    assert info["result"].outcome is Outcome.INFRA_ERROR
    assert "No space left on device" in obs["feedback"] and reward == 0.0
    filler.unlink()
    obs, reward, _, _, info = env.step("")
    assert info["result"].outcome is Outcome.OK, obs["feedback"]
    assert load_result(Path(info["result"].artifacts_dir)) == info["result"]
