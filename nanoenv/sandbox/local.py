"""The local sandbox: a subprocess in its own session, in a temporary workspace.

**Not a security boundary.** It runs the script as the calling user, on this machine's
kernel. It exists for development and the CPU track. Where bubblewrap (``bwrap``, the
Debian package ``bubblewrap``) is installed, each job runs in it: new PID, network, IPC and
mount namespaces with their own ``/proc``, the host's file system read-only, nanoenv's cache
and ``~/.cache`` hidden (only the job's own data dir comes back, read-only), a fresh ``/tmp``,
all capabilities dropped, and every process of the job killed when its first one exits.
Without bubblewrap, ``unshare`` gives new network, mount and PID namespaces and masks the
hidden paths, but the host's files stay writable; without either, nothing is contained.
:func:`containment` says which is in force and every brief repeats it. Use
``sandbox="docker"`` for untrusted patches.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from nanoenv.sandbox.base import (
    CANCELLED,
    Capabilities,
    LineCallback,
    OutputPump,
    copy_out,
    data_links,
    job_environment,
    job_gpu_count,
    new_workspace,
    render_command,
    result_from,
    sweep_workspaces,
)
from nanoenv.sandbox.isolation import bwrap, containment, isolate, job_usage
from nanoenv.sandbox.usage import JobMeter
from nanoenv.types import Job, JobResult, Limits

log = logging.getLogger(__name__)
LOCAL_WORKSPACE = "nanoenv-job-"

MARKER = "NANOENV_JOB_ID"
OWNER = "NANOENV_HARNESS_PID"
_PR_SET_PDEATHSIG = 1
# What a job inherits from the harness's environment; everything else is left behind. Not a
# compile cache (TORCHINDUCTOR_CACHE_DIR): kernels one run compiled would run in the next.
_INHERITED = (
    "PATH", "LANG", "LC_ALL", "TZ", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "CUDA_HOME",
    "SSL_CERT_FILE",
)  # fmt: skip
_GRACE_S = 2.0


# SIOCGIFFLAGS / SIOCSIFFLAGS on "lo", setting IFF_UP: `ip link set lo up` without iproute2.
def _user_task_count() -> int:
    """Processes and threads of the current user (RLIMIT_NPROC counts all of them)."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count


@functools.lru_cache(maxsize=1)
def _prctl():  # looked up in the parent: a forked child should only make syscalls
    return ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _limit_setter(limits: Limits, nproc: int | None):
    """A preexec function that applies rlimits in the child before it execs."""
    prctl = _prctl()

    def apply() -> None:
        # If the harness dies (even by SIGKILL), the job's leader dies with it.
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
        if limits.memory_mb:
            cap = limits.memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return apply


def _marked_processes() -> list[tuple[int, dict[str, str]]]:
    """Processes (pid, nanoenv variables) whose environment carries a job marker."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                items = f.read().split(b"\0")
        except OSError:
            continue
        marks = {}
        for item in items:
            if item.startswith((MARKER.encode(), OWNER.encode())):
                key, _, value = item.decode(errors="replace").partition("=")
                marks[key] = value
        if MARKER in marks:
            found.append((int(entry.name), marks))
    return found


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except OSError:
        return False


def _kill_marked(job_id: str) -> int:
    """SIGKILL every process whose environment carries this job's marker (escaped daemons)."""
    return sum(_kill(pid) for pid, marks in _marked_processes() if marks[MARKER] == job_id)


def sweep_orphans() -> int:
    """Kill job processes whose harness is gone (it crashed or was killed mid-run)."""
    killed = 0
    for pid, marks in _marked_processes():
        owner = marks.get(OWNER, "")
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            killed += _kill(pid)
    if killed:
        log.warning("killed %d process(es) left by a harness that died", killed)
    return killed


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class LocalSandbox:
    """Run jobs as local subprocesses (see the module docstring: not a security boundary).

    Args:
        python: The interpreter for ``{python}`` in commands (default: this one).
        isolate_network: Put jobs in an empty network namespace when the machine allows.
    """

    name = "local"
    capabilities = Capabilities(
        summary="a subprocess on this machine, in bubblewrap where it is installed"
    )

    def __init__(self, python: str | None = None, isolate_network: bool = True) -> None:
        self.python = python or sys.executable
        self.isolate_network = isolate_network
        sweep_orphans()
        sweep_workspaces(LOCAL_WORKSPACE)

    @property
    def containment(self) -> str:
        """What isolates this sandbox's jobs here (see :func:`containment`)."""
        return f"local, {containment()}" if self.isolate_network else "local, not isolated"

    def close(self) -> None:
        """Nothing to release."""

    def _env(self, job: Job, workspace: Path, out_dir: Path, job_id: str) -> dict[str, str]:
        env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        env[MARKER] = job_id
        if bwrap() is None or not self.isolate_network:
            # Only where no PID namespace ends the job's processes with it: the sweeper finds
            # a dead harness's leftovers by this. Inside one, the job never learns our pid.
            env[OWNER] = str(os.getpid())
        if isinstance(job.gpus, list):
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, job.gpus))
        elif not job.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""
        elif "CUDA_VISIBLE_DEVICES" in os.environ:  # k GPUs: among those the host lets us see
            env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
        return job_environment(
            job, home=str(workspace), tmp=str(workspace / "tmp"), out_dir=str(out_dir),
            data_dir=str(job.data_dir), input_dir=str(job.input_dir), host_cpus=os.cpu_count(),
            backend=env,
        )  # fmt: skip

    def run(
        self, job: Job, on_line: LineCallback | None = None, cancel: threading.Event | None = None
    ) -> JobResult:
        """Run ``job`` in a fresh workspace; kill everything it started at its deadline."""
        job_id = uuid.uuid4().hex
        workspace = new_workspace(LOCAL_WORKSPACE)
        notes: list[str] = []
        proc: subprocess.Popen[bytes] | None = None
        meter: JobMeter | None = None
        t0 = time.monotonic()
        try:
            for name, text in job.files.items():
                if "/" in name or name.startswith(".."):
                    raise ValueError(f"job file names must be plain names, got {name!r}")
                (workspace / name).write_text(text, encoding="utf-8")
            for rel, shard in data_links(job).items():
                (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
                (workspace / rel).symlink_to(job.data_dir / shard)  # type: ignore[operator]
            out_dir = workspace / "out"
            out_dir.mkdir()
            (workspace / "tmp").mkdir()
            cmd = render_command(job.command, python=self.python, gpus=job_gpu_count(job))
            cmd = isolate(cmd, job, workspace, self.python, notes, enabled=self.isolate_network)
            nproc = None
            if os.getuid() != 0 and job.limits.pids:
                nproc = _user_task_count() + job.limits.pids
            t0 = time.monotonic()
            proc = subprocess.Popen(
                cmd,
                cwd=workspace,
                env=self._env(job, workspace, out_dir, job_id),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_limit_setter(job.limits, nproc),
            )
            pgid = proc.pid
            meter = JobMeter(proc.pid, f"{MARKER}={job_id}").start()

            def end() -> None:  # the end line: what the job used so far, then stop it all
                meter.sample()
                _kill_group(pgid, signal.SIGKILL)

            pump = OutputPump(
                t0, job.limits.max_output_bytes, on_line, lambda: _kill_group(pgid, signal.SIGKILL),
                end_line=job.end_line, on_end=end,
            )  # fmt: skip
            assert proc.stdout is not None and proc.stderr is not None
            pump.start(proc.stdout, "stdout")
            pump.start(proc.stderr, "stderr")
            exit_code, timed_out, rusage = _wait(proc, t0 + job.limits.timeout_s, cancel)
            meter.stop()
            # Whatever the script left behind (children, daemons) dies with it.
            _kill_group(pgid, signal.SIGKILL)
            if (n := _kill_marked(job_id)) > 0:
                notes.append(f"killed {n} process(es) the script left running")
            exit_s = time.monotonic() - t0  # every process of the job is gone now
            pump.join()
            if pump.truncated:
                notes.append(f"output passed {job.limits.max_output_bytes:,} bytes: job killed")
            if job.out_dir is not None:
                notes += copy_out(
                    out_dir, job.out_dir, job.limits.max_out_bytes, job.limits.max_out_files
                )
            wall = time.monotonic() - t0
            cpu_s, rss_kb = job_usage(workspace, rusage)
            # each a lower bound: the rusage misses what was never waited for, the samples
            # the last moments of each process
            cpu_s, rss_kb = max(cpu_s, meter.cpu_s), max(rss_kb, meter.peak_rss_kb)
            if cmd[0] == bwrap() and exit_code > 128:  # bwrap says 128 + n for a signal n
                exit_code = -(exit_code - 128)
            telemetry = {
                "cpu_time_s": cpu_s,
                "cpu_util": cpu_s / max(wall, 1e-9),
                "peak_rss_mb": rss_kb / 1024.0,
            }
            oom = exit_code == -signal.SIGKILL and not timed_out and not pump.truncated
            if oom or any("MemoryError" in line.text for line in pump.lines[-50:]):
                oom = True
            result = result_from(
                pump, exit_code, t0, timed_out=timed_out, oom=oom, notes=notes,
                telemetry=telemetry, exit_s=exit_s,
            )  # fmt: skip
            if cancel is not None and cancel.is_set():
                result = result.model_copy(update={"infra_error": CANCELLED})
            return result
        except OSError as e:
            log.exception("local sandbox failed")
            return JobResult(
                infra_error=f"local sandbox could not run the job: {e}",
                wall_time_s=time.monotonic() - t0,
                notes=notes,
            )
        finally:
            if meter is not None:
                meter.stop()
            if proc is not None and proc.poll() is None:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
            _kill_marked(job_id)
            shutil.rmtree(workspace, ignore_errors=True)


def _wait(
    proc: subprocess.Popen[bytes], deadline: float, cancel: threading.Event | None = None
) -> tuple[int, bool, resource.struct_rusage]:
    """Wait for the child until ``deadline``; on time-out TERM then KILL its process group."""
    timed_out = False
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if cancel is not None and cancel.is_set():
            _kill_group(proc.pid, signal.SIGKILL)
        if time.monotonic() >= deadline and not timed_out:
            timed_out = True
            _kill_group(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + _GRACE_S
        elif timed_out and time.monotonic() >= deadline:
            _kill_group(proc.pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.02)
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # keep Popen consistent: we reaped the child ourselves
    return code, timed_out, rusage
