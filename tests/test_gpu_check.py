"""benchmarks/gpu_check.py, the first thing a session lent a GPU runs: its whole path (data
made locally, the GPT-2 track's own script through the env, full verification, the report) at
its CPU size, and its answer where no GPU is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nanoenv.data import prepare

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpt2_data():
    return prepare("shakespeare-gpt2")


@pytest.mark.slow(steps=3)  # a GPT-2 run, its data and an audit
def test_the_check_trains_verifies_and_reports_on_the_cpu_path(gpt2_data, tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--steps", "8", "--device-batch", "4",
         "--accum", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    assert r["outcome"] == "ok" and r["verified"] is True and r["failure"] is None
    assert r["task"] == "Speedrun-GPT2-1xH100-v0" and r["tokens_per_step"] == 4 * 2 * 64
    # step time and throughput come from the run's own log, the projection from the track's
    # baseline tokens (10B) at that throughput
    assert r["step_ms"] > 0 and r["tokens_per_s"] == pytest.approx(512 / (r["step_ms"] / 1000))
    assert r["projected_1x_h"] == pytest.approx(9_999_745_024 / r["tokens_per_s"] / 3600)
    assert r["mfu"] is None  # no bf16 peak is known for a CPU
    assert "the GPU path trained and verified" in proc.stdout


@pytest.mark.slow
def test_without_a_gpu_the_check_says_so_and_fails(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert "no CUDA device is visible" in proc.stdout
    assert json.loads(out.read_text())["card"]["cuda_available"] is False
