"""The Docker sandbox against a real Docker engine: hardening, GPU requests, failures as infra."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from nanoenv import Outcome
from nanoenv.cli import main as cli_main
from nanoenv.sandbox.docker import LABEL, WORK_TMPFS_MB, DockerSandbox
from nanoenv.types import Job, Limits

pytestmark = pytest.mark.docker


def _job(code: str = "print('hi')", **kw) -> Job:
    limits = Limits(
        **{"timeout_s": 30, "memory_mb": 1024, "cpus": 1.5, "pids": 128, **kw.pop("limits", {})}
    )
    return Job(
        files={"main.py": textwrap.dedent(code)},
        command=["{python}", "main.py"],
        limits=limits,
        **kw,
    )


def test_container_is_hardened(docker_client, docker_image, tmp_path, no_leftovers):
    """The container's own configuration, as the engine reports it, is the hardened one."""
    sandbox = DockerSandbox(image=docker_image, client=docker_client)
    config = sandbox.container_config(
        _job(data_dir=tmp_path, labels={"nanoenv.task": "t"}), tmp_path, "j1"
    )
    container = docker_client.containers.create(**config)
    try:
        host = container.attrs["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Init"] is True and host["Privileged"] is False
        assert host["PidsLimit"] == 128
        assert host["Memory"] == host["MemorySwap"] == 1024 * 1024**2  # no swap
        assert host["NanoCpus"] == 1_500_000_000
        assert host["ShmSize"] == 256 * 1024**2
        assert set(host["Tmpfs"]) == {"/work", "/tmp"} and "size=" in host["Tmpfs"]["/work"]
        assert host["LogConfig"]["Config"]["max-size"] == "10m"
        assert {m["Target"]: m["ReadOnly"] for m in host["Mounts"]} == {"/job": True, "/data": True}
        assert container.attrs["Config"]["User"] == "10002:10002"  # the idle keeper, not the job
        labels = container.attrs["Config"]["Labels"]
        assert labels[LABEL] == "1" and labels[f"{LABEL}.task"] == "t" and labels[f"{LABEL}.owner"]
    finally:
        container.remove(force=True)


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        (1, {"Count": 1, "DeviceIDs": []}),
        (8, {"Count": 8, "DeviceIDs": []}),
        ([2, 5], {"Count": 0, "DeviceIDs": ["2", "5"]}),
    ],
)
def test_gpu_device_requests(docker_client, docker_image, tmp_path, gpus, expected, no_leftovers):
    """A job asking for k GPUs (or for given ids) carries an NVIDIA device request for them."""
    # No GPU image here (nor GPU): the container's configuration is what is under test.
    sandbox = DockerSandbox(image=docker_image, client=docker_client, gpu=True)
    config = sandbox.container_config(_job(gpus=gpus, limits={"shm_mb": 16384}), tmp_path, "g1")
    container = docker_client.containers.create(**config)  # created, never started: no GPU here
    try:
        (request,) = container.attrs["HostConfig"]["DeviceRequests"]
        assert request["Driver"] == "nvidia" and request["Capabilities"] == [["gpu"]]
        assert {k: request[k] for k in expected} == expected
        assert container.attrs["HostConfig"]["ShmSize"] == 16384 * 1024**2
    finally:
        container.remove(force=True)


def test_no_gpu_no_device_request(docker_client, docker_image, tmp_path):
    """A CPU job asks for no device."""
    config = DockerSandbox(image=docker_image, client=docker_client).container_config(
        _job(), tmp_path, "c"
    )
    assert "device_requests" not in config


@pytest.mark.slow
def test_runs_streams_and_copies_out_safely(docker_client, docker_image, tmp_path, no_leftovers):
    """Lines stream with stamps; out files (and hard links among them) come back; a symlink to a
    host file does not."""
    lines = []
    job = _job(
        """
        import os, sys
        print("uid", os.getuid(), "cwd", os.getcwd(), flush=True)
        print("oops", file=sys.stderr, flush=True)
        out = os.environ["NANOENV_OUT_DIR"]
        open(out + "/model.json", "w").write("{}")
        os.symlink("/etc/passwd", out + "/passwd")
        os.link(out + "/model.json", out + "/hard.json")
        """,
        out_dir=tmp_path / "out",
    )
    result = DockerSandbox(image=docker_image, client=docker_client).run(job, on_line=lines.append)
    assert result.ok, result
    # Two streams: each keeps its order, but which arrives first is not defined.
    assert {(ln.stream, ln.text) for ln in lines} == {
        ("stdout", "uid 10001 cwd /work"),
        ("stderr", "oops"),
    }
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["hard.json", "model.json"]
    assert any("passwd" in n for n in result.notes)


@pytest.mark.slow
def test_a_job_asking_for_more_cpus_than_the_host_has_gets_all_of_them(
    docker_client, docker_image, no_leftovers
):
    """The 8xH100 track asks for 64 CPUs; on a smaller host Docker refuses such a container
    ("Range of CPUs is from 0.01 to 2.00"), so every step was an infra_error. The job now gets
    the host's CPUs, and its thread count says so."""
    host = int(docker_client.info()["NCPU"])
    job = _job("import os; print('threads', os.environ['OMP_NUM_THREADS'])", limits={"cpus": 64})
    result = DockerSandbox(image=docker_image, client=docker_client).run(job)
    assert result.ok, result
    assert [ln.text for ln in result.lines] == [f"threads {host}"]


@pytest.mark.slow
def test_the_out_dir_holds_all_a_job_may_leave(docker_client, docker_image, tmp_path, no_leftovers):
    """/work was a 2 GiB tmpfs whatever the job's max_out_bytes: the verifier's worker, allowed
    8 GiB of logits, failed with "Not enough free space" past 2 GiB and every run was rejected.
    /work now has room for the job's max_out_bytes on top of its scratch space."""
    size = (WORK_TMPFS_MB + 64) * 2**20
    job = _job(
        f"""
        import os
        chunk = b"\\x01" * (64 << 20)
        with open(os.environ["NANOENV_OUT_DIR"] + "/logits.npy", "wb") as f:
            for _ in range({size} // len(chunk)):
                f.write(chunk)
        """,
        out_dir=tmp_path / "out",
        limits={"memory_mb": 6144, "max_out_bytes": size + 2**20, "timeout_s": 120},
    )
    result = DockerSandbox(image=docker_image, client=docker_client).run(job)
    assert result.ok, [ln.text for ln in result.lines][-5:]
    assert (tmp_path / "out" / "logits.npy").stat().st_size == size


@pytest.mark.slow
def test_torch_compile_builds_its_kernels_in_the_sandbox(docker_client, docker_image, no_leftovers):
    """The baseline of the GPU tracks calls torch.compile, which builds kernels at run time; the
    image had no compiler, so every compiled run would crash in warm-up. Inductor on the CPU
    needs a C++ compiler: a small model compiles, and agrees with eager."""
    job = _job(
        """
        import torch
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
        x = torch.randn(16, 32)
        compiled = torch.compile(model)
        out = compiled(x)
        out.sum().backward()
        print("max diff", float((out - model(x)).abs().max()), flush=True)
        """,
        limits={"memory_mb": 4096, "timeout_s": 300, "cpus": 2},
    )
    result = DockerSandbox(image=docker_image, client=docker_client).run(job)
    text = [ln.text for ln in result.lines]
    assert result.ok, text[-20:]
    (said,) = [ln.text for ln in result.lines if ln.stream == "stdout"]
    assert said.startswith("max diff") and float(said.split()[-1]) < 1e-4, text


@pytest.mark.slow
def test_out_of_memory_is_reported(docker_client, docker_image, no_leftovers):
    """Allocating past the memory limit: OOM-killed, and the result says so."""
    job = _job(
        "x = []\nwhile True:\n    x.append(b'\\x01' * (64 << 20))\n", limits={"memory_mb": 512}
    )
    result = DockerSandbox(image=docker_image, client=docker_client).run(job)
    assert result.oom and not result.ok


@pytest.mark.slow
def test_deadline_from_the_host(docker_client, docker_image, no_leftovers):
    """A job that never ends is killed at its deadline by the host."""
    result = DockerSandbox(image=docker_image, client=docker_client).run(
        _job("import time\nprint('start', flush=True)\ntime.sleep(600)\n", limits={"timeout_s": 3})
    )
    assert result.timed_out and 3 <= result.wall_time_s < 10
    assert [ln.text for ln in result.lines] == ["start"]


def test_missing_image_is_an_infra_error_that_says_what_to_do(docker_client, no_leftovers):
    """An image that is not built: infra_error, telling the user to build it."""
    result = DockerSandbox(image="nanoenv-sandbox:does-not-exist", client=docker_client).run(_job())
    assert result.infra_error and "nanoenv sandbox build" in result.infra_error


def test_unreachable_daemon_is_infra_error_in_the_env(make_env, monkeypatch):
    """With no daemon, a step is infra_error with reward 0 and a hint to start dockerd."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    env = make_env(sandbox="docker")
    env.reset(seed=0)
    obs, reward, _, _, info = env.step("")
    assert info["result"].outcome is Outcome.INFRA_ERROR and reward == 0.0
    assert "cannot reach the Docker daemon" in obs["feedback"] and "dockerd" in obs["feedback"]
    assert "costs nothing" in obs["feedback"]


@pytest.mark.slow
@pytest.mark.alone  # `sandbox clean --all` removes every nanoenv container, a parallel test's too
def test_sweeps_containers_of_dead_processes(docker_client, docker_image):
    """A container left by a process of this host that died is removed when a sandbox starts
    work; one owned by a live process stays until `nanoenv sandbox clean --all`."""
    sandbox = DockerSandbox(image=docker_image, client=docker_client)
    dead_owner = f"{socket.gethostname()}:999999999:1"
    left, mine = (
        docker_client.containers.create(
            docker_image, command=["sleep", "600"], labels={LABEL: "1", f"{LABEL}.owner": owner}
        )
        for owner in (dead_owner, sandbox.owner)
    )
    assert sandbox.run(_job()).ok
    names = {c.name for c in docker_client.containers.list(all=True, filters={"label": LABEL})}
    assert left.name not in names and mine.name in names
    assert cli_main(["sandbox", "clean", "--all"]) == 0
    assert docker_client.containers.list(all=True, filters={"label": LABEL}) == []


@pytest.mark.slow
def test_docker_and_local_agree(make_env, docker_image, no_leftovers):
    """The same seed gives the same curve in both sandboxes (same torch, same data)."""
    curves = {}
    for sandbox in ("local", "docker"):
        env = make_env(sandbox=sandbox, verify="none")  # the runs themselves are compared
        env.reset(seed=3)
        _, _, _, _, info = env.step("")
        assert info["result"].outcome is Outcome.OK, info["result"].message
        curves[sandbox] = [p.val_loss for p in info["result"].val_curve]
    assert curves["docker"] == curves["local"]
    assert Path(info["result"].artifacts_dir, "out", "model.safetensors").exists()


def test_the_end_line_ends_the_job_and_keeps_its_out_dir(docker_client, docker_image, tmp_path,
                                                         no_leftovers, monkeypatch):  # fmt: skip
    """In a container, the end line stops the job's processes (not the container, whose out
    dir is read next): exit 0, nothing after the line, the files written before it kept. Its
    CPU time and memory come from the container's own cgroup counters, read in it (the
    engine's statistics, the fallback, wait a second for a sample on every job)."""
    from test_sandbox_local import AFTER_THE_END

    import nanoenv.sandbox.docker as docker_sandbox

    def no_fallback(container):
        raise AssertionError("the cgroup counters could not be read in the container")

    monkeypatch.setattr(docker_sandbox, "_engine_usage", no_fallback)
    job = _job(AFTER_THE_END, out_dir=tmp_path / "out", end_line="saved model to ")
    result = DockerSandbox(image=docker_image, client=docker_client).run(job)
    assert result.telemetry["cpu_time_s"] > 0.05 and result.telemetry["peak_rss_mb"] > 1
    assert result.ok and result.exit_code == 0 and result.ended_at_end_line, result
    assert not result.timed_out and result.wall_time_s < 15
    assert [ln.text for ln in result.lines if ln.stream == "stdout"] == ["saved model to out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.json"]
