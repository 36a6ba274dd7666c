"""The local sandbox: streaming with harness stamps, deadlines, caps, limits, safe copy-out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from nanoenv.sandbox.base import OutputPump, copy_out, extract_tar
from nanoenv.sandbox.isolation import bwrap, namespace_support
from nanoenv.sandbox.local import LocalSandbox
from nanoenv.types import Job, Limits


def run(code: str, **limits):
    lines = []
    job = Job(
        files={"main.py": textwrap.dedent(code)},
        command=["{python}", "main.py"],
        limits=Limits(**{"timeout_s": 20, **limits}),
    )
    result = LocalSandbox().run(job, on_line=lines.append)
    return result, lines


def _leftovers(tag: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if tag in ln and "ps -eo" not in ln]


def test_lines_stream_with_harness_stamps():
    """Lines arrive as they are printed, stamped by the harness clock, stdout and stderr apart."""
    result, lines = run(
        """
        import sys, time
        print("first"); time.sleep(0.5); print("second")
        print("oops", file=sys.stderr)
        """
    )
    assert result.ok and result.exit_code == 0
    texts = {ln.text: ln for ln in lines}
    assert texts["second"].t - texts["first"].t >= 0.4
    assert texts["oops"].stream == "stderr"
    assert [ln.text for ln in result.lines] == [ln.text for ln in sorted(lines, key=lambda x: x.t)]


def test_a_slow_consumer_does_not_move_the_stamps():
    """The stamps are the harness clock: a consumer that takes 0.1 s a line (a Ray queue's
    remote put under load, a log on a slow disk, a user's progress callback) must not stamp the
    lines behind it late, which timed a run longer than it ran (the Ray test failed on this
    under load: an honest run's window 5 s against its 0.5 s of training). Every line still
    reaches the consumer, in order, before run() returns."""
    seen = []

    def slow(line):
        time.sleep(0.1)
        seen.append(line)

    job = Job(files={"main.py": "for i in range(20): print(f'line {i}', flush=True)\n"},
              command=["{python}", "main.py"], limits=Limits(timeout_s=20))  # fmt: skip
    result = LocalSandbox().run(job, on_line=slow)
    assert [ln.text for ln in seen] == [f"line {i}" for i in range(20)]
    assert seen == result.lines
    # printed together, so stamped together: not 0.1 s apart as the consumer took them
    assert seen[-1].t - seen[0].t < 1.0, [ln.t for ln in seen]  # the old pump: 1.9 s


@pytest.mark.parametrize("cause", ["overflow", "end line"])
def test_stopping_a_job_never_holds_the_reader(cause):
    """Docker reports a killed container only once its exec's output has been read to the end.
    The pump called the kill on the reader's own thread, so the kill waited on a stream nobody
    read: every flood, and every docker job stopped at its output cap, sat out the engine's
    10 s before it gave up and killed the container directly. The kill here, like the engine's,
    returns only once the reader has drained the stream."""
    drained = threading.Event()
    stopped = threading.Event()

    def kill() -> None:
        drained.wait(10)  # the old pump: the reader is inside this call, so it never comes
        stopped.set()

    pump = OutputPump(0.0, 1 << 10, None, kill, end_line="END", on_end=kill)
    first = b"END\n" if cause == "end line" else b"x" * 2048 + b"\n"

    def read() -> None:
        for raw in (first, b"what the dying job still writes\n", b"its last line\n"):
            pump.emit(raw, "stdout")
        drained.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "the reader is held by the kill"
    pump.join()  # waits for the stop too
    assert stopped.is_set()
    assert pump.truncated == (cause == "overflow") and pump.ended == (cause == "end line")


def test_crash_keeps_output_and_exit_code():
    """A crash halfway keeps what was printed before it, and the traceback."""
    result, _ = run('print("step:1/2 val_loss:3.0", flush=True)\nraise SystemExit(3)\n')
    assert result.exit_code == 3 and not result.timed_out
    assert result.lines[0].text == "step:1/2 val_loss:3.0"


def test_a_process_killed_by_a_signal_says_where():
    """An abort (a C++ exception in torch, a failed assertion in a library) leaves no Python
    traceback; faulthandler's dump in the output names the signal and the line, and the crash
    message carries both."""
    from nanoenv.judging.rules import classify_job
    from nanoenv.judging.telemetry import LogParser

    result, _ = run("import os\ndef step():\n    os.abort()\nstep()\n")
    assert result.exit_code == -6
    outcome, message = classify_job(result, LogParser())
    assert outcome.value == "crashed"
    assert message == (
        "the script exited with code -6: Fatal Python error: Aborted, at main.py line 3 in step"
    )


@pytest.mark.slow
def test_deadline_kills_the_whole_group_and_escaped_daemons():
    """At the deadline, the script, a child that ignores SIGTERM and a setsid daemon all die."""
    tag = "nanoenv-probe-deadline"
    result, _ = run(
        f"""
        import os, signal, subprocess, sys, time
        # a child in our group that ignores SIGTERM
        subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)", "{tag}"])
        # a double-forked daemon in its own session
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(300)", "{tag}"])
            os._exit(0)
        print("started", flush=True)
        time.sleep(300)
        """,
        timeout_s=3,
    )
    assert result.timed_out
    assert result.wall_time_s < 10
    # Inside bubblewrap the PID namespace takes them all at once; the fallback hunts them down.
    assert bwrap() is not None or any("left running" in n for n in result.notes)
    assert _leftovers(tag) == []


def test_output_cap_kills_a_flood():
    """A script that floods stdout is killed at the cap; what came before the cap is kept."""
    result, _ = run(
        """
        import sys
        print("before", flush=True)
        while True:
            sys.stdout.write("x" * 1000 + "\\n")
        """,
        max_output_bytes=200_000,
    )
    assert result.output_truncated and not result.ok
    assert result.lines[0].text == "before"
    assert sum(len(ln.text) + 1 for ln in result.lines) <= 200_000


def test_memory_limit_is_reported_as_oom():
    """Allocating past the memory limit ends the job, flagged as out of memory."""
    result, _ = run("x = bytearray(3 * 1024**3)\n", memory_mb=1024)
    assert result.oom and result.exit_code != 0


@pytest.mark.skipif(namespace_support()[0] is None, reason="no network namespace here")
def test_no_network_but_loopback_state():
    """In the sandbox there is no interface but (a down) loopback: nothing leaves the machine."""
    _, lines = run(
        """
        import socket
        print(sorted(name for _, name in socket.if_nameindex()))
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=2)
            print("CONNECTED")
        except OSError as e:
            print("refused", type(e).__name__)
        """
    )
    texts = [ln.text for ln in lines]
    assert texts[0] == "['lo']"
    assert texts[1].startswith("refused")


def test_workspace_is_fresh_and_removed():
    """Each job gets an empty workspace of its own, removed afterwards."""
    _, lines = run("import os; print(os.getcwd()); print(sorted(os.listdir('.')))")
    cwd, listing = lines[0].text, lines[1].text
    assert listing == "['main.py', 'out', 'tmp']"
    assert not os.path.exists(cwd)


def test_environment_is_the_contract_not_the_host(monkeypatch):
    """The job sees the contract variables, not the harness's secrets."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    _, lines = run(
        "import os; print(sorted(k for k in os.environ if 'SECRET' in k or k.startswith('NANOENV')))"
    )
    # No harness pid in a job's environment where a PID namespace contains it.
    want = ["NANOENV_JOB_ID", "NANOENV_OUT_DIR"]
    if bwrap() is None:
        want = ["NANOENV_HARNESS_PID", *want]
    assert lines[0].text == str(want)


def test_a_job_asking_for_more_cpus_than_the_host_has_gets_its_threads_from_the_host():
    """A task written for 64 cores (the 8xH100 track) gets one thread per core here, not 64."""
    result, lines = run("import os; print(os.environ['OMP_NUM_THREADS'])", cpus=64)
    assert result.ok and lines[0].text == str(os.cpu_count())


def test_copy_out_refuses_links_and_specials(tmp_path):
    """Copy-out takes regular files only: a symlink to a host path is skipped, never followed."""
    src, dest = tmp_path / "out", tmp_path / "dest"
    (src / "sub").mkdir(parents=True)
    (src / "model.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"123")
    (src / "passwd").symlink_to("/etc/passwd")
    (src / "linkdir").symlink_to("/etc")
    os.mkfifo(src / "fifo")
    notes = copy_out(src, dest, max_bytes=1_000, max_files=10)
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == ["model.json", "sub/w.bin"]
    assert len(notes) == 3


def test_copy_out_size_budget(tmp_path):
    """Files past the out-dir budget are skipped with a note."""
    src = tmp_path / "out"
    src.mkdir()
    (src / "big.bin").write_bytes(b"x" * 5000)
    notes = copy_out(src, tmp_path / "dest", max_bytes=1000, max_files=10)
    assert not (tmp_path / "dest" / "big.bin").exists()
    assert "dropped 1 file(s) (5,000 bytes)" in notes[0] and "1,000 bytes" in notes[0]


@pytest.mark.parametrize("how", ["copy_out", "extract_tar"])
def test_hard_links_to_one_big_file_pay_for_every_copy(tmp_path, how):
    """A hundred hard links to one file are a hundred files' worth of the budget, not one.

    Docker and Ray hand the out dir back as a tar, where a hard link is a pointer to a file
    already sent; copying it for free would let 1 MB in the sandbox become 100 MB on the host.
    """
    import tarfile

    src, dest = tmp_path / "out", tmp_path / "dest"
    src.mkdir()
    (src / "big.bin").write_bytes(b"x" * 10_000)
    for i in range(100):
        os.link(src / "big.bin", src / f"link{i:03d}.bin")
    if how == "copy_out":
        notes = copy_out(src, dest, max_bytes=35_000, max_files=1000)
    else:
        with tarfile.open(tmp_path / "out.tar", "w") as tar:
            tar.add(src, arcname="out")
        notes = extract_tar(tmp_path / "out.tar", dest, max_bytes=35_000, max_files=1000)
    copied = [p for p in dest.rglob("*.bin") if p.is_file()]
    assert len(copied) == 3  # 3 x 10,000 bytes fit in 35,000
    assert sum(p.stat().st_size for p in copied) <= 35_000
    assert notes == [
        "dropped 98 file(s) (980,000 bytes) of the out dir: the harness keeps at most 1,000 "
        "files and 35,000 bytes (write model.safetensors and model.json, little else)"
    ]


def test_out_dir_is_copied_back(tmp_path):
    """What the job writes to NANOENV_OUT_DIR arrives in the job's out_dir."""
    job = Job(
        files={
            "main.py": "import os; open(os.path.join(os.environ['NANOENV_OUT_DIR'], 'm.json'), 'w').write('{}')"
        },
        command=["{python}", "main.py"],
        out_dir=tmp_path / "out",
        limits=Limits(timeout_s=20),
    )
    assert LocalSandbox().run(job).ok
    assert (tmp_path / "out" / "m.json").read_text() == "{}"


@pytest.mark.skipif(not namespace_support()[1], reason="no read-only bind mounts here")
def test_data_dir_is_read_only(tmp_path):
    """The data dir cannot be written, even by a job running as root."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "shard.bin").write_bytes(b"tokens")
    code = textwrap.dedent(
        """
        import os
        for attempt in ("open(os.environ['NANOENV_DATA_DIR'] + '/shard.bin', 'ab').write(b'x')",
                        "open(os.environ['NANOENV_DATA_DIR'] + '/new.bin', 'wb')"):
            try:
                exec(attempt)
                print("WROTE")
            except OSError as e:
                print("refused", e.errno)
        """
    )
    job = Job(
        files={"main.py": code},
        command=["{python}", "main.py"],
        data_dir=data,
        limits=Limits(timeout_s=20),
    )
    lines = [ln.text for ln in LocalSandbox().run(job).lines]
    assert lines == ["refused 30", "refused 30"]  # EROFS
    assert (data / "shard.bin").read_bytes() == b"tokens" and not (data / "new.bin").exists()


def test_bubblewrap_contains_jobs_where_it_is_installed():
    """Where bubblewrap is installed (CI requires it), the local sandbox runs every job in it,
    and says so; elsewhere the brief names the weaker fallback."""
    from nanoenv.sandbox.isolation import containment

    if bwrap() is None:
        if os.environ.get("NANOENV_REQUIRE_BWRAP") == "1":
            pytest.fail("bubblewrap is required here (NANOENV_REQUIRE_BWRAP=1) but cannot run")
        pytest.skip("bubblewrap is not installed")
    assert containment().startswith("bubblewrap")
    _, lines = run(
        """
        import os
        print(os.getpid(), sorted(p for p in os.listdir("/proc") if p.isdigit())[:3])
        try:
            open("/etc/nanoenv-probe", "w")
        except OSError as e:
            print("READ-ONLY", e.errno)
        """
    )
    pid, shown = lines[0].text.split(" ", 1)
    assert int(pid) < 10 and "'1'" in shown  # its own PID namespace and /proc
    assert lines[1].text == "READ-ONLY 30"


def test_an_interpreter_under_tmp_stays_visible(tmp_path):
    """A fresh /tmp hides other jobs' files, not the job's own Python: a virtual environment
    made under /tmp (as a CI checkout may be) still runs its jobs."""
    import sys

    venv, hop = tmp_path / "venv", tmp_path / "hop" / "bin"
    (venv / "bin").mkdir(parents=True)
    hop.mkdir(parents=True)
    # a chain of links through /tmp, as a venv made from another venv's python has
    (hop / "python").symlink_to(sys.executable)
    (venv / "bin" / "python").symlink_to(hop / "python")
    job = Job(
        files={"m.py": "print('ran')"}, command=["{python}", "m.py"], limits=Limits(timeout_s=20)
    )
    result = LocalSandbox(python=str(venv / "bin" / "python")).run(job)
    assert result.exit_code == 0, [ln.text for ln in result.lines]
    assert [ln.text for ln in result.lines] == ["ran"]


def test_a_killed_harness_leaves_no_job_folder(tmp_path):
    """A harness SIGKILLed mid-job never reaches its cleanup; the next sandbox made on the
    machine removes that job's folder (named for its dead owner) and leaves a live one's."""
    import tempfile

    from nanoenv.liveness import owner_id
    from nanoenv.sandbox.base import sweep_workspaces
    from nanoenv.sandbox.local import LOCAL_WORKSPACE

    code = (
        "import time, threading\n"
        "from nanoenv.sandbox.local import LocalSandbox\n"
        "from nanoenv.types import Job, Limits\n"
        "job = Job(command=['{python}', 'main.py'], files={'main.py': 'import time; time.sleep(60)'},"
        " limits=Limits(timeout_s=60))\n"
        "threading.Thread(target=LocalSandbox().run, args=(job,), daemon=True).start()\n"
        "print('running', flush=True); time.sleep(60)\n"
    )
    harness = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert harness.stdout.readline().strip() == "running"
    root = Path(tempfile.gettempdir())
    deadline = time.monotonic() + 30
    while not (mine := list(root.glob(f"nanoenv-job-{harness.pid}-*"))):
        assert time.monotonic() < deadline, "the job's folder never appeared"
        time.sleep(0.1)
    live = Path(tempfile.mkdtemp(prefix="nanoenv-job-", dir=tmp_path))  # an owner-less old one
    os.kill(harness.pid, signal.SIGKILL)
    harness.wait()
    assert mine[0].is_dir()  # the kill left it
    sweep_workspaces(LOCAL_WORKSPACE, tmp_path)
    assert live.is_dir()  # no owner in its name: not ours to judge
    assert sweep_workspaces(LOCAL_WORKSPACE) >= 1 and not mine[0].exists()
    _, pid, start = owner_id().rsplit(":", 2)  # a folder of this live process is kept
    kept = Path(tempfile.mkdtemp(prefix=f"nanoenv-job-{pid}-{start}-", dir=tmp_path))
    assert sweep_workspaces(LOCAL_WORKSPACE, tmp_path) == 0 and kept.is_dir()


# A script that prints its end line with a model half-written, then goes on: sleeps, writes
# more, leaves a daemon. The job must end at the line, with none of that done.
AFTER_THE_END = """
    import os, subprocess, sys, time
    out = os.environ["NANOENV_OUT_DIR"]
    open(os.path.join(out, "model.json"), "w").write("{}")
    x = sum(i * i for i in range(3_000_000))  # some CPU time before the line, to be accounted
    print("saved model to out", flush=True)
    print("after the end line", flush=True)
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(20)
    open(os.path.join(out, "late.txt"), "w").write("written after the end line")
"""


def test_the_end_line_ends_the_job_at_once(tmp_path):
    """Job.end_line (the training runs' `saved model to` line): the job is stopped when the line
    arrives, counts as exited 0, and nothing it would do after the line happens: no later
    output, no later file, no process left. Its CPU time up to the line is still reported."""
    job = Job(files={"main.py": textwrap.dedent(AFTER_THE_END)}, command=["{python}", "main.py"],
              out_dir=tmp_path / "out", limits=Limits(timeout_s=30),
              end_line="saved model to ")  # fmt: skip
    t0 = time.monotonic()
    result = LocalSandbox().run(job)
    assert time.monotonic() - t0 < 10 and not result.timed_out
    assert result.ok and result.exit_code == 0 and result.ended_at_end_line, result
    assert [ln.text for ln in result.lines] == ["saved model to out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.json"]
    assert result.exit_s is not None and result.exit_s < 8
    assert result.telemetry["cpu_time_s"] > 0.05
    time.sleep(0.3)
    assert not _leftovers("import time; time.sleep(60)")


HELPER_LEFT_RUNNING = """
import os, subprocess, sys, time
# CPU seconds, not wall seconds: the reading must not depend on what else runs on the machine
burn = "import time\\nwhile time.process_time() < 1.5: pass\\nopen('burnt', 'w').close()\\ntime.sleep(60)\\n"
how = {how!r}
if how == "short, waited for":  # each shorter than the sandbox's sample period
    while not os.path.exists("burnt"):
        subprocess.run([sys.executable, "-c", "import time\\nwhile time.process_time() < 0.1: pass"])
        if time.process_time() + sum(os.times()[2:4]) > 3.0: open("burnt", "w").close()
else:
    prefix = {{"marked": [], "env -i": ["env", "-i"], "setsid": ["env", "-i", "setsid"]}}[how]
    subprocess.Popen([*prefix, sys.executable, "-c", burn])  # never waited for
while time.process_time() < 1.5: pass
while not os.path.exists("burnt"): time.sleep(0.05)
print("saved model to out", flush=True)
time.sleep(0.3)
"""


@pytest.mark.slow
@pytest.mark.parametrize("end_line", ["saved model to ", None], ids=["end-line", "exit"])
@pytest.mark.parametrize("how", ["marked", "env -i", "setsid", "short, waited for"])
def test_cpu_time_counts_every_process_the_job_ran(how, end_line):
    """A helper the job left running (dropping the job marker, or in a session of its own)
    dies with the job uncounted by the wrapper's rusage, and one without the marker was not
    found at the end line: its core went unseen by timing.cores_check. Both the main process
    and the helper burn 1.5 CPU seconds here; the job's CPU time counts both, at the end line
    and at the exit."""
    job = Job(files={"main.py": HELPER_LEFT_RUNNING.format(how=how)}, command=["{python}", "main.py"],
              limits=Limits(timeout_s=30), end_line=end_line)  # fmt: skip
    result = LocalSandbox().run(job)
    assert result.ok, result
    assert result.telemetry["cpu_time_s"] > 2.6, result.telemetry


def test_without_an_end_line_a_job_runs_to_its_exit():
    """The same line means nothing to a job that sets no end_line (the verifier's, a record
    run as it is): it runs on to its exit."""
    result, _ = run('print("saved model to out", flush=True)\nprint("and then this")\n')
    assert result.ok and not result.ended_at_end_line
    assert [ln.text for ln in result.lines] == ["saved model to out", "and then this"]
