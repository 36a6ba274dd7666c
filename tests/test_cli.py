"""The `nanoenv` command, run the way a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nanoenv.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_smoke(tiny_data, tmp_path, capsys):
    """`nanoenv demo --smoke`: baseline and the Muon patch, a table, a PNG, the last feedback."""
    assert main(["demo", "--smoke", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "baseline (no change)" in out and "muon" in out
    assert out.count(" ok ") >= 2  # both rows of the table
    png = next(tmp_path.glob("*/loss_curves.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "The last step's feedback" in out and "Step 2 (from step 1): ok" in out


def test_demo_patch_is_the_suites_muon_with_fewer_steps():
    """The demo's Muon for v1 is the fidelity suite's v1 Muon patch (no drift) trained for 800
    steps instead of 1,200, as the speedrun's Muon record cut its steps; v0 keeps its own."""
    from nanoenv.actions.patching import apply_diff
    from nanoenv.cli import demo_patch
    from nanoenv.tasks import baseline_script, load_task

    task = load_task("Speedrun-Tiny-v1")
    base = baseline_script(task)
    demo = apply_diff(base, demo_patch("nanoenv/Speedrun-Tiny-v1").read_text(), task.script)
    suite = REPO / "benchmarks" / "fidelity_suite" / "tiny-v1" / "muon.diff"
    muon = apply_diff(base, suite.read_text(), task.script).script
    assert demo.script == muon.replace(
        "    num_iterations: int = 1200\n",
        "    num_iterations: int = 800  # Muon reaches the target in fewer steps: train fewer\n",
    )
    assert demo_patch("nanoenv/Speedrun-Tiny-v0") == REPO / "examples" / "patches" / "muon.diff"


@pytest.mark.slow
def test_run_smoke_prints_val_lines(tiny_data, tmp_path, capsys):
    """`nanoenv run --smoke` prints the val_loss lines and the feedback, exit code 0."""
    from nanoenv.tasks import DEFAULT_TASK, load_task

    assert main(["run", "--smoke", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    size = load_task(DEFAULT_TASK).smoke.overrides  # one val line per val_every, and step 0
    assert out.count("val_loss:") == size["num_iterations"] // size["val_every"] + 1
    assert "Step 1 (from step 0): ok" in out


def test_run_with_a_bad_patch_exits_nonzero(tiny_data, tmp_path, capsys):
    """A patch that does not apply: exit 1 and the reason."""
    bad = tmp_path / "bad.diff"
    bad.write_text("--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-nope\n+yes\n")
    assert main(["run", "--smoke", "--patch", str(bad), "--runs-dir", str(tmp_path)]) == 1
    assert "patch_failed" in capsys.readouterr().out


def test_data_commands(tiny_data, capsys):
    """`nanoenv data prepare tiny` is idempotent and `verify` checks every shard."""
    assert main(["data", "prepare", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "hidden_val" in out and "manifest sha256" in out
    assert main(["data", "verify", "tiny"]) == 0
    assert "OK, 7 shards match manifest" in capsys.readouterr().out


def test_errors_are_one_line_not_a_traceback(capsys):
    """A mistyped env id: exit 2 and a message that suggests the right one."""
    assert main(["run", "--env", "Speedrun-Tiy-v0"]) == 2
    assert "Did you mean: `Speedrun-Tiny`?" in capsys.readouterr().err


def test_console_script_is_installed():
    """The `nanoenv` entry point exists and answers --help."""
    exe = shutil.which("nanoenv") or str(Path(sys.executable).parent / "nanoenv")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "run" in out and "data" in out
