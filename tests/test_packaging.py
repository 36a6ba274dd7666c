"""A wheel built from the repo (not editable) carries envs/, sandbox/ and the demo's patches."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
    )
    return next(out.glob("nanoenv-*.whl"))


@pytest.mark.slow
def test_wheel_carries_the_data_rooms(wheel):
    """Task files, the sandbox build context and the patches are package data."""
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "nanoenv/_data/envs/tiny/task.toml" in names
    assert "nanoenv/_data/envs/tiny/train.py" in names
    assert "nanoenv/_data/envs/tiny-v1/task.toml" in names
    assert "nanoenv/_data/examples/patches/muon.diff" in names
    assert "nanoenv/_data/examples/patches/tiny-v1/muon.diff" in names
    assert any(n.startswith("nanoenv/_data/sandbox/") for n in names)
    assert "nanoenv/data/tiny_bpe1k.json" in names  # Speedrun-Tiny-v1's tokenizer


@pytest.mark.slow
def test_installed_wheel_runs_the_tiny_track(wheel, tiny_data, tmp_path):
    """Installed from the wheel alone (outside the repo), a smoke step of the tiny track runs."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    code = (
        "import nanoenv, nanoenv.tasks as t, gymnasium as gym;"
        f"assert nanoenv.__file__.startswith({str(target)!r}), nanoenv.__file__;"
        "print(t.resource_dir('envs'));"
        f"env = gym.make('nanoenv/Speedrun-Tiny-v0', smoke=True, runs_dir={str(tmp_path / 'runs')!r});"
        "env.reset(seed=0); print(env.step('')[4]['result'].outcome.value)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == str(target / "nanoenv" / "_data" / "envs")
    assert lines[-1] == "ok"


def test_the_fineweb_extra_asks_for_the_hub_the_fetch_needs():
    """pyproject's floor for huggingface_hub is the one the fetch code checks (0.36 fails)."""
    import re

    import tomllib

    from nanoenv.data.fineweb import MIN_HUB_VERSION

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    (req,) = [r for r in project["optional-dependencies"]["fineweb"] if "huggingface_hub" in r]
    floor = re.search(r">=\s*([\d.]+)", req).group(1)
    assert tuple(int(x) for x in floor.split(".")) == MIN_HUB_VERSION
