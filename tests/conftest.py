"""Shared fixtures. Markers: `docker` (needs a Docker engine), `slow` (a full-size run).

A marker's tests skip on a user's machine that lacks the part, and fail instead when the
environment says the part must be there (CI sets NANOENV_REQUIRE_DOCKER=1).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nanoenv.data import prepare

FIXTURES = Path(__file__).parent / "fixtures"
SPEEDRUN_LOGS = sorted((FIXTURES / "modded-nanogpt-logs").glob("*.txt"))


@pytest.fixture(scope="session")
def tiny_data() -> Path:
    """The tiny dataset, prepared once (in the user's cache, like a real run would)."""
    return prepare("tiny")


@pytest.fixture
def make_env(tiny_data, tmp_path):
    """Make smoke-size tiny envs that write their runs under the test's tmp folder."""
    import gymnasium as gym

    import nanoenv  # noqa: F401

    made = []

    def factory(**kwargs):
        kwargs.setdefault("smoke", True)
        kwargs.setdefault("runs_dir", tmp_path / "runs")
        env = gym.make("nanoenv/Speedrun-Tiny-v0", **kwargs)
        made.append(env)
        return env

    yield factory
    for env in made:
        env.close()
