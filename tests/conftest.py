"""Shared fixtures. Markers: `docker` (needs a Docker engine), `slow` (real training),
`alone` (runs with no other test beside it).

A marker's tests skip on a user's machine that lacks the part, and fail instead when the
environment says the part must be there (CI sets NANOENV_REQUIRE_DOCKER=1).

The suite runs in parallel (pytest-xdist, one worker per core; a smoke run takes one core).
Every test holds a shared lock on the machine while it runs, setup and teardown included; an
`alone` test holds it exclusively, so nothing runs beside a test that compares wall times or
clears every container.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanoenv.data import prepare

REQUIRE_DOCKER = os.environ.get("NANOENV_REQUIRE_DOCKER") == "1"

FIXTURES = Path(__file__).parent / "fixtures"
SPEEDRUN_LOGS = sorted((FIXTURES / "modded-nanogpt-logs").glob("*.txt"))


@contextlib.contextmanager
def _hold_the_machine(exclusive: bool) -> Iterator[None]:
    """A readers-writer lock over the test run's workers. The turnstile keeps a waiting
    exclusive test from being starved by the other workers' next tests (flock prefers none)."""
    folder = Path(tempfile.gettempdir()) / f"nanoenv-tests-{os.environ['PYTEST_XDIST_TESTRUNUID']}"
    folder.mkdir(exist_ok=True)
    with open(folder / "turnstile", "w") as turnstile, open(folder / "machine", "w") as machine:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(machine, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield  # closing the files releases both locks


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under xdist: every test shares the machine, an `alone` test has it to itself."""
    if "PYTEST_XDIST_TESTRUNUID" not in os.environ:
        yield
        return
    with _hold_the_machine(exclusive=item.get_closest_marker("alone") is not None):
        yield


def pytest_collection_modifyitems(config, items):
    """The modules that train most go first, so the many quick tests fill the end of a parallel
    run (xdist hands out whole modules in this order: `--no-loadscope-reorder`) instead of one
    worker finishing a long module alone while the other idles. A module's weight is its `slow`
    tests' cost in smoke steps: one each, or N for `@pytest.mark.slow(steps=N)`."""
    weight: dict[str, float] = {}
    for item in items:
        module, mark = item.nodeid.split("::")[0], item.get_closest_marker("slow")
        weight[module] = weight.get(module, 0) + (mark.kwargs.get("steps", 1) if mark else 0)
    items.sort(key=lambda item: -weight[item.nodeid.split("::")[0]])  # stable within a module


def own_containers(client) -> list:
    """The nanoenv containers this test process owns, or whose owner is gone: what a test may
    have left behind. A parallel worker's live containers are not this test's."""
    from nanoenv.liveness import owner_alive, owner_id
    from nanoenv.sandbox.docker import LABEL

    me = owner_id()
    return [
        c
        for c in client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True)
        if (owner := c.labels.get(f"{LABEL}.owner", "")) == me or not owner_alive(owner)
    ]


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


@pytest.fixture(scope="module")
def unstepped(tiny_data, tmp_path_factory):
    """A smoke env that has run nothing: for refusals, which come before anything runs."""
    import gymnasium as gym

    import nanoenv  # noqa: F401

    env = gym.make("nanoenv/Speedrun-Tiny-v0", smoke=True, max_steps=1000, disable_env_checker=True,
                   runs_dir=tmp_path_factory.mktemp("runs"))  # fmt: skip
    env.reset(seed=0)
    yield env
    env.close()


@pytest.fixture(scope="session")
def track_data() -> Path:
    """The default track's dataset (tasks.DEFAULT_TASK), prepared once."""
    from nanoenv.tasks import DEFAULT_TASK, load_task

    return prepare(load_task(DEFAULT_TASK).data.dataset)


@pytest.fixture(scope="module")
def unstepped_track(track_data, tmp_path_factory):
    """An unstepped smoke env of the default track, for refusals (which come before any run)."""
    import gymnasium as gym

    from nanoenv.tasks import DEFAULT_TASK, NAMESPACE

    env = gym.make(NAMESPACE + DEFAULT_TASK, smoke=True, max_steps=1000, disable_env_checker=True,
                   runs_dir=tmp_path_factory.mktemp("runs"))  # fmt: skip
    env.reset(seed=0)
    yield env
    env.close()


def _docker_missing(reason: str):
    """Fail where Docker is required (CI), skip elsewhere."""
    if REQUIRE_DOCKER:
        pytest.fail(f"Docker is required here (NANOENV_REQUIRE_DOCKER=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client():
    """A client of a reachable Docker engine."""
    try:
        from nanoenv.sandbox.docker import connect

        client = connect()
    except Exception as e:  # no SDK, no daemon
        _docker_missing(f"no Docker engine: {e}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def docker_image(docker_client) -> str:
    """The CPU sandbox image, built now if it is missing (once; later runs reuse it)."""
    from nanoenv.data import cache_dir
    from nanoenv.sandbox.images import build_image, image_exists, plan_image

    plan = plan_image()
    if not image_exists(docker_client, plan.tag):
        try:
            build_image(
                plan, docker_client, out=None, log_path=cache_dir() / "logs" / "test-build.log"
            )
        except Exception as e:
            _docker_missing(f"the sandbox image {plan.tag} is missing and could not be built: {e}")
    return plan.tag


@pytest.fixture
def no_leftovers(docker_client):
    """After the test: no nanoenv container of this process (or of a dead owner) is left."""
    yield
    left = own_containers(docker_client)
    assert left == [], f"containers left behind: {[c.name for c in left]}"


@pytest.fixture
def fake_llm():
    """A chat stand-in (tests/chat_standin.py) that answers every chat with one real diff, the
    tiny baseline's learning rate raised, in prose and a fence as models write it."""
    from chat_standin import ChatStandIn

    from nanoenv.actions.patching import make_diff
    from nanoenv.tasks import baseline_script, load_task

    base = baseline_script(load_task("tiny"))
    diff = make_diff(
        base, base.replace("learning_rate: float = 3e-3", "learning_rate: float = 4e-3")
    )
    stand_in = ChatStandIn(lambda body: f"Raise the learning rate.\n```diff\n{diff}```")
    yield stand_in
    stand_in.close()
