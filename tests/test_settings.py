"""One place decides how a run is configured (nanoenv.settings), and backends say what they
can do (nanoenv.sandbox's capabilities), so nothing downstream re-derives either."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from nanoenv.sandbox import BACKENDS, Capabilities, backend_class, capabilities, make_sandbox
from nanoenv.sandbox.base import job_environment
from nanoenv.sandbox.fake import FakeSandbox
from nanoenv.settings import VerifyLevel, resolve
from nanoenv.tasks import baseline_script, load_task
from nanoenv.types import Job, Limits

NO_BUILD_MODEL = "# fake: val_loss=2.5\nprint('a script of my own')\n"


def test_resolve_lowers_full_to_log_where_the_baseline_cannot_be_reloaded(tmp_path):
    own = tmp_path / "mine.py"
    own.write_text(NO_BUILD_MODEL)
    r = resolve("Speedrun-Tiny-v0", sandbox="fake", baseline=own, smoke=True, paired_baseline=False)
    assert r.settings.level is VerifyLevel.LOG
    assert r.settings.smoke and r.baseline == NO_BUILD_MODEL
    assert r.task.protected == []  # it marks no protected regions, so none are enforced
    # Hidden val needs a re-evaluated model: the target is the reported-loss one.
    assert not r.settings.scores_hidden
    assert r.settings.target_val_loss == r.task.target_val_loss


def test_resolve_scores_hidden_val_only_at_the_full_level():
    full = resolve("Speedrun-Tiny-v0", sandbox="fake", paired_baseline=False)
    none = resolve("Speedrun-Tiny-v0", sandbox="fake", verify="none", paired_baseline=False)
    assert full.settings.level is VerifyLevel.FULL and full.settings.scores_hidden
    assert full.settings.target_val_loss == full.task.target_hidden_loss
    assert none.settings.trusts_log and not none.settings.scores_hidden
    assert none.settings.target_val_loss == none.task.target_val_loss
    assert full.baseline == baseline_script(full.task)


def test_resolve_applies_the_users_arguments_once():
    r = resolve(
        "Speedrun-Tiny-v0", sandbox="fake", smoke=True, timeout_s=7, max_steps=3,
        repeats=2, reward="loss_at_budget", overrides={"title": "mine"}, paired_baseline=False,
    )  # fmt: skip
    s = r.settings
    assert (s.timeout_s, s.repeats, s.reward, r.max_steps) == (7.0, 2, "loss_at_budget", 3)
    assert r.task.title == "mine"
    # smoke size: the smoke hyperparameters reach the script, the smoke target is the target
    assert s.script_overrides == load_task("Speedrun-Tiny-v0").smoke.overrides
    assert r.task.baseline.train_time_s == s.baseline_train_time_s
    assert "task.toml" in r.measured_on


def test_a_bad_verification_level_is_named():
    with pytest.raises(ValueError, match="verify must be one of 'none', 'log', 'full', got 'ful'"):
        resolve("Speedrun-Tiny-v0", sandbox="fake", verify="ful", paired_baseline=False)


def test_task_files_no_longer_carry_a_verification_level(tmp_path):
    """VerifySpec.level was set by every task.toml and read by nothing: it is gone, and a task
    that still sets it is told so (the level is the user's, resolved per env)."""
    from nanoenv.errors import TaskError

    task = load_task("Speedrun-Tiny-v0")
    folder = tmp_path / "track"
    folder.mkdir()
    toml = (
        (task.task_dir / "task.toml")
        .read_text()
        .replace("[verify]\n", '[verify]\nlevel = "full"\n')
    )
    (folder / "task.toml").write_text(toml)
    (folder / task.script).write_text(baseline_script(task))
    with pytest.raises((TaskError, ValueError), match="level"):
        load_task(str(folder))


def test_verify_log_through_the_env_checks_the_log_and_says_so(make_env):
    env = make_env(verify="log", sandbox=FakeSandbox())
    obs, _ = env.reset(seed=0)
    assert "Verification level `log`" in obs["feedback"]
    _, _, _, _, info = env.step("")
    verdict = info["result"].verdict
    assert verdict.level is VerifyLevel.LOG and not verdict.verified
    assert {"untimed_work", "reported_time"} <= {
        c.name for c in verdict.checks
    }  # the clock, checked
    # no verification job was asked of the sandbox (it would have refused one)
    assert all(j.labels.get("nanoenv.role") != "verify" for j in env.unwrapped.sandbox.jobs)


class SchedulingSandbox(FakeSandbox):
    """A fake that says it places jobs itself and holds three runs by default."""

    capabilities = Capabilities(schedules_resources=True, default_in_flight=3)

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def run(self, job, on_line=None, cancel=None):
        self.threads.add(threading.current_thread().name)
        return super().run(job, on_line, cancel)


def test_the_env_and_runner_read_a_backends_declared_capabilities(make_env):
    sandbox = SchedulingSandbox()
    env = make_env(verify="none", sandbox=sandbox)
    assert env.unwrapped._pool._max_workers == 3  # its default_in_flight, not a name's
    env.reset(seed=0)
    env.step("")
    # It schedules resources itself: the runner took no CPU slots for it.
    assert env.unwrapped.runner._cpu_pool is None
    plain = make_env(verify="none", sandbox=FakeSandbox())
    plain.reset(seed=0)
    plain.step("")
    assert plain.unwrapped._pool._max_workers == 1
    assert plain.unwrapped.runner._cpu_pool is not None


def test_every_registered_backend_declares_its_capabilities():
    for name in BACKENDS:
        caps = capabilities(backend_class(name))
        assert isinstance(caps, Capabilities) and caps.summary, name
    assert capabilities(object()) == Capabilities()  # a third-party sandbox: the defaults
    with pytest.raises(
        ValueError, match="unknown sandbox 'podman'; choose one of local, docker, ray"
    ):
        make_sandbox("podman")


def test_gpus_are_requested_only_from_a_backend_that_needs_asking():
    """make_sandbox(gpus=True) passes docker's gpu flag; local takes none (it would fail)."""
    local = make_sandbox("local", gpus=True)
    assert local.name == "local"
    docker = make_sandbox("docker", gpus=True, client=object())
    assert docker.gpu is True
    assert make_sandbox("docker", client=object()).gpu is False


def test_local_and_docker_give_a_job_the_same_contract(tmp_path):
    """One builder of the job environment: the same variables, with each backend's paths."""
    from nanoenv.sandbox.docker import DockerSandbox
    from nanoenv.sandbox.local import LocalSandbox

    job = Job(
        files={"train.py": ""}, command=["python", "train.py"], env={"NANOENV_SEED": "3", "OMP_NUM_THREADS": "9"},
        data_dir=tmp_path, input_dir=tmp_path, out_dir=tmp_path / "out", limits=Limits(cpus=1),
    )  # fmt: skip
    local = LocalSandbox()._env(job, tmp_path / "ws", tmp_path / "ws" / "out", "id")
    docker = DockerSandbox(client=object()).exec_env(job, host_cpus=2)
    contract = set(job_environment(job, home="h", tmp="t", out_dir="o", data_dir="d",
                                   input_dir="i", host_cpus=2))  # fmt: skip
    assert contract <= set(local) and contract <= set(docker)
    assert local["NANOENV_DATA_DIR"] == str(tmp_path) and docker["NANOENV_DATA_DIR"] == "/data"
    # the job's own variables win over the contract's defaults, in both
    assert local["OMP_NUM_THREADS"] == docker["OMP_NUM_THREADS"] == "9"
    assert local["NANOENV_SEED"] == docker["NANOENV_SEED"] == "3"


def test_the_cli_lists_the_registered_backends():
    out = subprocess.run([sys.executable, "-m", "nanoenv.cli", "sandbox", "list"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    for name in BACKENDS:
        assert out.splitlines()[list(BACKENDS).index(name)].startswith(name)
    assert "places jobs on CPUs and GPUs itself" in out  # ray's declared capability
