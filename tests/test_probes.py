"""Probes: hostile actions on the tiny track, contained by the sandbox, leaving nothing behind.

Each probe is a real action: the baseline script with probe code at the top of `main()`. It
runs in the docker sandbox and, where the local sandbox makes the same promise, in the local
one (the local sandbox is not a security boundary: it does not promise to stop a fork bomb
run as root, nor to hide the host's files). Each test checks the probe was contained, the host
is unaffected, and nothing is left over; the last test steps normally in both.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import own_containers

from nanoenv import Action, Outcome
from nanoenv.data import dataset_root, verify_dataset
from nanoenv.tasks import baseline_script, load_task

BASELINE = baseline_script(load_task("tiny"))
LIMITS = {"timeout_s": 240, "memory_mb": 2048, "cpus": 1, "pids": 256}
DOCKER = pytest.param("docker", marks=pytest.mark.docker)
BOTH = ["local", DOCKER]


def probe(code: str) -> Action:
    """The baseline with `code` run first in main(), which then returns without training."""
    body = textwrap.indent(textwrap.dedent(code).strip() + "\nreturn\n", "    ")
    return Action(script=BASELINE.replace("def main():\n", "def main():\n" + body, 1))


@pytest.fixture(scope="module")
def private_data(tiny_data, tmp_path_factory):
    """A private copy of the tiny dataset, so a probe that escaped could damage only this."""
    cache = tmp_path_factory.mktemp("cache")
    shutil.copytree(tiny_data, cache / "datasets" / tiny_data.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NANOENV_CACHE_DIR", str(cache))
        yield dataset_root(tiny_data.name)


def _temp_dirs() -> set[str]:
    """This process's job folders (a parallel test worker's are its own)."""
    mine = (f"nanoenv-job-{os.getpid()}-", f"nanoenv-docker-job-{os.getpid()}-")
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith(mine)}


@pytest.fixture
def run_probe(private_data, tmp_path, request):
    """Step one probe in a fresh env; afterwards check no container, process or temp dir is left."""
    before = _temp_dirs()
    envs = []

    def run(sandbox: str, action: Action, timeout_s: float = 15):
        if sandbox == "docker":
            request.getfixturevalue("docker_image")
        import gymnasium as gym

        # Containment is under test, not verification: skip re-evaluating the models.
        env = gym.make("nanoenv/Speedrun-Tiny-v0", smoke=True, sandbox=sandbox, timeout_s=timeout_s,
                       limits=LIMITS, runs_dir=tmp_path / "runs", disable_env_checker=True, verify="none")  # fmt: skip
        envs.append(env)
        env.reset(seed=0)
        result = env.step(action)[4]["result"]
        assert result.outcome is not Outcome.INFRA_ERROR, result.message
        lines = (Path(result.artifacts_dir) / "log.txt").read_text().splitlines()
        return result, [ln.removeprefix("PROBE ") for ln in lines if ln.startswith("PROBE ")]

    yield run
    for env in envs:
        env.close()
    assert _temp_dirs() == before
    if any(env.unwrapped.sandbox.name == "docker" for env in envs):
        assert own_containers(request.getfixturevalue("docker_client")) == []
    verify_dataset(private_data)  # every shard still matches its sha256


def _host_processes(tag: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if tag in ln and "ps -eo" not in ln]


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", [DOCKER, pytest.param("local", marks=pytest.mark.skipif(
    os.geteuid() == 0, reason="the local sandbox cannot cap processes of root"))])  # fmt: skip
def test_fork_bomb(run_probe, sandbox):
    """Forking without end hits the pids limit; the host can still start processes."""
    result, lines = run_probe(sandbox, probe("""
        import os, time
        n = 0
        while n < 100000:
            try:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                n += 1
            except OSError as e:
                print("PROBE refused", e.errno, n, flush=True)
                break
        time.sleep(60)
    """), timeout_s=10)  # fmt: skip
    assert lines and lines[0].startswith("refused 11")  # EAGAIN
    assert int(lines[0].split()[2]) < LIMITS["pids"]
    assert result.outcome is Outcome.TIMED_OUT
    assert subprocess.run(["true"]).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", BOTH)
def test_memory_bomb(run_probe, sandbox):
    """Allocating without end ends the run as out of memory, not the host."""
    result, _ = run_probe(sandbox, probe("""
        x = []
        while True:
            x.append(b"\\x01" * (64 << 20))
    """))  # fmt: skip
    assert result.outcome is Outcome.CRASHED and "out of memory" in result.message


@pytest.mark.slow
@pytest.mark.alone  # it reads the host's free space, which a parallel test's files move
@pytest.mark.parametrize("sandbox", [DOCKER])
def test_filling_tmp(run_probe, sandbox):
    """/tmp is a capped tmpfs: writing without end gets ENOSPC; the host's /tmp is untouched."""
    free = shutil.disk_usage(tempfile.gettempdir()).free
    _, lines = run_probe(sandbox, probe("""
        written = 0
        try:
            with open("/tmp/fill", "wb") as f:
                while True:
                    f.write(b"\\x01" * (16 << 20))
                    f.flush()
                    written += 16
        except OSError as e:
            print("PROBE full", e.errno, written, flush=True)
    """))  # fmt: skip
    errno_, mb = lines[0].split()[1:]
    assert errno_ == "28" and int(mb) <= 1024
    assert abs(shutil.disk_usage(tempfile.gettempdir()).free - free) < 256 << 20


WRITES = """
    import os
    data = os.environ["NANOENV_DATA_DIR"]
    for path, mode in {targets}:
        try:
            with open(path, mode) as f:
                f.write(b"x")
            print("PROBE wrote", path, flush=True)
        except OSError as e:
            print("PROBE refused", path, e.errno, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", BOTH)
def test_writing_data_and_root(run_probe, sandbox):
    """Neither the data (both sandboxes) nor the root fs (docker) can be written."""
    targets = [("data + '/train_000000.bin'", "'r+b'"), ("data + '/new.bin'", "'wb'")]
    if sandbox == "docker":  # the local sandbox runs on the host's own root fs
        targets += [("'/etc/probe'", "'wb'"), ("'/usr/probe'", "'wb'"), ("'/probe'", "'wb'")]
    code = WRITES.format(targets="[" + ", ".join(f"({p}, {m})" for p, m in targets) + "]")
    _, lines = run_probe(sandbox, probe(code))
    assert len(lines) == len(targets) and all(ln.startswith("refused") for ln in lines), lines


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", BOTH)
def test_a_download_fails_with_a_message_that_names_it(run_probe, sandbox):
    """A script that fetches at import (as the current records fetch a kernel and tiktoken's
    files) crashes, and the message names what it needed and says where to put it instead."""
    result, _ = run_probe(sandbox, probe("""
        import urllib.request
        urllib.request.urlopen("https://huggingface.co/api/kernels", timeout=10)
    """))  # fmt: skip
    assert result.outcome is Outcome.CRASHED
    # the first error is the root cause (the name lookup), its chain says who was fetching
    assert "Temporary failure in name resolution" in result.message, result.message
    assert "It needed the network (host huggingface.co), and jobs run without one" in result.message
    assert "ship it beside the script" in result.message


@pytest.mark.slow
def test_tiktoken_s_download_is_named(run_probe):
    """The current record's tokenizer fetch, in the local sandbox (where tiktoken is installed)."""
    result, _ = run_probe("local", probe("""
        import os, tempfile
        os.environ["TIKTOKEN_CACHE_DIR"] = tempfile.mkdtemp()  # nothing cached: it must fetch
        import tiktoken
        tiktoken.get_encoding("gpt2")
    """))  # fmt: skip
    assert result.outcome is Outcome.CRASHED
    assert "tiktoken's BPE files" in result.message, result.message
    assert "openaipublic.blob.core.windows.net" in result.message


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", BOTH)
def test_network(run_probe, sandbox):
    """There is no interface but loopback, and no connection leaves the machine."""
    _, lines = run_probe(sandbox, probe("""
        import socket
        print("PROBE interfaces", *sorted(name for _, name in socket.if_nameindex()), flush=True)
        for host, port in (("1.1.1.1", 53), ("8.8.8.8", 443), ("pypi.org", 443), ("172.17.0.1", 2375)):
            try:
                socket.create_connection((host, port), timeout=3).close()
                print("PROBE connected", host, flush=True)
            except OSError as e:
                print("PROBE refused", host, type(e).__name__, flush=True)
    """))  # fmt: skip
    assert lines[0] == "interfaces lo"
    assert [ln.split()[0] for ln in lines[1:]] == ["refused"] * 4


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", [DOCKER])
def test_reading_host_files(run_probe, sandbox, private_data):
    """The host's files (its home, the hidden val shard, the dataset root) are not in reach."""
    hidden = private_data / "hidden" / "hidden_val_000000.bin"
    _, lines = run_probe(sandbox, probe(f"""
        import os
        for path in ({str(hidden)!r}, {str(private_data)!r}, {os.path.expanduser("~")!r} + "/.bash_history",
                     "/data/../hidden", "/etc/shadow"):
            try:
                open(path, "rb").read(16)
                print("PROBE read", path, flush=True)
            except OSError as e:
                print("PROBE refused", path, e.errno, flush=True)
        print("PROBE hostname", open("/etc/hostname").read().strip(), flush=True)
    """))  # fmt: skip
    assert all(ln.startswith("refused") for ln in lines[:-1]), lines
    assert lines[-1] != f"hostname {socket.gethostname()}"


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", [DOCKER])
def test_privileges(run_probe, sandbox):
    """No capability, no-new-privileges set, setuid binaries and setuid() give nothing."""
    _, lines = run_probe(sandbox, probe("""
        import os, subprocess
        status = dict(ln.split(":", 1) for ln in open("/proc/self/status") if ":" in ln)
        print("PROBE capeff", status["CapEff"].strip(), "nnp", status["NoNewPrivs"].strip(), flush=True)
        try:
            os.setuid(0)
            print("PROBE setuid worked", flush=True)
        except PermissionError:
            print("PROBE setuid refused", flush=True)
        setuid_bins = [p for d in ("/bin", "/usr/bin", "/sbin", "/usr/sbin") if os.path.isdir(d)
                       for p in (os.path.join(d, n) for n in os.listdir(d)) if os.stat(p).st_mode & 0o4000]
        print("PROBE setuid-binaries", len(setuid_bins), flush=True)
        for cmd in (["su", "-c", "id -u", "root"], ["mount", "-t", "tmpfs", "none", "/tmp"]):
            r = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL)
            print("PROBE ran", cmd[0], "exit", r.returncode, flush=True)
    """))  # fmt: skip
    assert lines[0] == "capeff 0000000000000000 nnp 1"
    assert lines[1] == "setuid refused"
    assert int(lines[2].split()[1]) > 0  # there are setuid binaries to try
    assert all(not ln.endswith("exit 0") for ln in lines[3:]), lines


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", BOTH)
def test_lingering_processes(run_probe, sandbox):
    """A child that ignores SIGTERM and a double-forked daemon do not outlive the deadline."""
    tag = f"nanoenv-probe-linger-{sandbox}"
    result, lines = run_probe(sandbox, probe(f"""
        import os, signal, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)", {tag!r}])
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(300)", {tag!r}])
            os._exit(0)
        print("PROBE started", flush=True)
        time.sleep(300)
    """), timeout_s=8)  # fmt: skip
    assert lines == ["started"]  # both were started before the deadline came
    assert result.outcome is Outcome.TIMED_OUT
    assert _host_processes(tag) == []


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", BOTH)
def test_stdout_flood(run_probe, sandbox):
    """A gigabyte to stdout is cut at the output cap; the log on disk stays small."""
    result, _ = run_probe(sandbox, probe("""
        import sys
        line = b"x" * 1023 + b"\\n"
        for _ in range(1 << 20):
            sys.stdout.buffer.write(line)
    """), timeout_s=60)  # fmt: skip
    assert result.outcome is Outcome.CRASHED and "more output than allowed" in result.message
    assert (Path(result.artifacts_dir) / "log.txt").stat().st_size <= LIMITS.get(
        "max_output_bytes", 16 << 20
    )


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", BOTH)
def test_symlink_in_out_dir(run_probe, sandbox):
    """A link to a host file left in the out dir is not followed or copied; real files are."""
    result, _ = run_probe(sandbox, probe("""
        import os
        out = os.environ["NANOENV_OUT_DIR"]
        open(os.path.join(out, "model.json"), "w").write("{}")
        os.symlink("/etc/passwd", os.path.join(out, "passwd"))
        os.symlink("/", os.path.join(out, "root"))
    """))  # fmt: skip
    out = Path(result.artifacts_dir) / "out"
    assert sorted(p.name for p in out.iterdir()) == ["model.json"]
    assert not any(p.is_symlink() for p in out.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", BOTH)
def test_next_step_is_normal(run_probe, sandbox):
    """After the probes, a normal step runs and meets the target."""
    result, _ = run_probe(sandbox, Action(diff=""), timeout_s=90)
    assert result.outcome is Outcome.OK, result.message
