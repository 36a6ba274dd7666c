"""How the local sandbox isolates a job: bubblewrap where it is installed, ``unshare``'s
namespaces where not, nothing where neither works (see nanoenv/sandbox/local.py).
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from nanoenv.sandbox.base import job_gpu_count
from nanoenv.types import Job

log = logging.getLogger(__name__)

# Inside bubblewrap the job's processes are not our children, so their CPU time and peak RSS
# come from this wrapper, which runs the command, waits for it and writes its rusage down.
USAGE_FILE = ".nanoenv-usage.json"
_USAGE_WRAPPER = (
    "import json, os, signal, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "_, status, ru = os.wait4(pid, 0)\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    json.dump([ru.ru_utime + ru.ru_stime, ru.ru_maxrss], f)\n"
    "code = os.waitstatus_to_exitcode(status)\n"
    "if code < 0:\n"
    "    signal.signal(-code, signal.SIG_DFL)\n"
    "    os.kill(os.getpid(), -code)\n"
    "sys.exit(code)\n"
)
_LOOPBACK_UP = (
    "import fcntl, socket, struct\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "flags = struct.unpack('16sH', fcntl.ioctl(s, 0x8913, struct.pack('16sH', b'lo', 0)))[1]\n"
    "fcntl.ioctl(s, 0x8914, struct.pack('16sH', b'lo', flags | 1))\n"
)


def _read_only(paths: list[str]) -> str:
    """Shell that, inside a new mount namespace, bind-mounts each path read-only onto itself."""
    return " && ".join(
        f"mount --bind {shlex.quote(p)} {shlex.quote(p)} && mount -o remount,bind,ro {shlex.quote(p)} {shlex.quote(p)}"
        for p in paths
    )


_BWRAP_BASE = (
    "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
    "--tmpfs", "/dev/shm", "--unshare-all", "--die-with-parent", "--new-session",
    "--cap-drop", "ALL",
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def bwrap() -> str | None:
    """The bubblewrap executable, if it is installed and can make its namespaces here."""
    exe = shutil.which("bwrap")
    if exe is None:
        return None
    try:
        probe = subprocess.run([exe, *_BWRAP_BASE, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if probe.returncode != 0:
        log.warning("bwrap is installed but cannot run here: %s", probe.stderr.decode()[-300:])
        return None
    return exe


@functools.lru_cache(maxsize=1)
def namespace_support() -> tuple[tuple[str, ...] | None, bool]:
    """The ``unshare`` fallback: a prefix for new network, mount and PID namespaces (None if
    none can be made), and whether read-only bind mounts work in them."""
    exe = shutil.which("unshare")
    if exe is None:
        return None, False
    pid = ("--pid", "--fork", "--mount-proc")
    for prefix in (
        (exe, "--net", "--mount", *pid),
        (exe, "--net", "--mount", "--map-root-user", *pid),
    ):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode:
                continue
            with tempfile.TemporaryDirectory() as d:
                probe = os.path.join(d, "probe")
                script = f"{_read_only([d])} && ! (: > {shlex.quote(probe)}) 2>/dev/null"
                ok = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, timeout=10)
                return prefix, ok.returncode == 0 and not os.path.exists(probe)
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None, False


def containment() -> str:
    """Which isolation the local sandbox gives its jobs here, in a phrase for the brief."""
    if bwrap() is not None:
        return ("bubblewrap: own PID, network and mount namespaces, host files read-only, "
                "nanoenv's cache and ~/.cache hidden")  # fmt: skip
    prefix, read_only = namespace_support()
    if prefix is not None:
        how = "data read-only" if read_only else "data NOT read-only"
        return f"unshare fallback (install bubblewrap): own PID and network namespaces, {how}, host files writable"
    return "none (install bubblewrap): the job runs with your files and network in reach"


def hidden_host_paths(job: Job) -> list[Path]:
    """Host paths no job may see: nanoenv's cache (data, baselines), the user's ~/.cache
    (pip's copy of the raw corpus, the HF cache) and whatever the job masks. The job's own
    data and input dirs come back on top, read-only."""
    from nanoenv.data import cache_dir  # the sandbox's one look at nanoenv: where its cache is

    paths = [cache_dir(), Path.home() / ".cache", *job.masked]
    return [p for p in dict.fromkeys(paths) if p.is_dir()]


def isolate(
    cmd: list[str],
    job: Job,
    workspace: Path,
    python: str,
    notes: list[str],
    *,
    enabled: bool = True,
) -> list[str]:
    """Wrap the command in bubblewrap, or in unshare's namespaces where there is none (or in
    nothing, if not ``enabled``); what is not isolated goes into ``notes``."""
    if not enabled:
        return _unisolated(cmd, job, notes)
    if (exe := bwrap()) is not None:
        usage = str(workspace / USAGE_FILE)
        return [exe, *_bwrap_args(job, workspace, python), "--",
                python, "-c", _USAGE_WRAPPER, usage, *cmd]  # fmt: skip
    return _unshared(cmd, job, python, notes)


def interpreter_dirs(python: str) -> list[Path]:
    """The folders a job's Python lives in (a virtual environment, and the installation it
    points to): a job must see them even where they lie under /tmp or a hidden folder."""
    exe = Path(python).absolute()
    dirs = []
    for _ in range(16):  # every hop of a chain of links: each must resolve inside the job
        dirs.append(exe.parent.parent)
        if not exe.is_symlink():
            break
        exe = exe.parent / os.readlink(exe)
    dirs.append(exe.resolve().parent.parent)
    if Path(python).absolute() == Path(sys.executable).absolute():
        dirs += [Path(sys.prefix), Path(sys.base_prefix)]
    return [d for d in dict.fromkeys(dirs) if d.is_dir() and d != Path("/")]


def _bwrap_args(job: Job, workspace: Path, python: str) -> list[str]:
    args = list(_BWRAP_BASE)
    if job.network:
        args.append("--share-net")
    hidden = hidden_host_paths(job)
    # The interpreter, then the job's own dirs: visible (read-only) wherever they lie.
    shown = [
        *interpreter_dirs(python),
        *(p for p in (job.data_dir, job.input_dir) if p is not None),
    ]
    # An empty folder where each hidden one was; then the shown dirs, read-only, wherever they
    # lie; then anything hidden inside those goes again; then the empty folders go read-only.
    tops = [p for p in hidden if not any(q in p.parents for q in hidden)]
    for path in tops:
        args += ["--tmpfs", str(path)]
    for path in shown:
        args += ["--ro-bind", str(path), str(path)]
    for path in hidden:  # a shown folder may hold a hidden one (a venv in ~, ~/.cache in it)
        if any(d == path or d in path.parents for d in shown):
            args += ["--tmpfs", str(path)]
    for path in tops:
        args += ["--remount-ro", str(path)]
    for dev in sorted(glob.glob("/dev/nvidia*")) if job_gpu_count(job) else []:
        args += ["--dev-bind", dev, dev]
    # The workspace last: it may lie under /tmp or a hidden folder. TMPDIR points into it.
    return [*args, "--bind", str(workspace), str(workspace), "--chdir", str(workspace)]


def _unisolated(cmd: list[str], job: Job, notes: list[str]) -> list[str]:
    if not job.network:
        notes.append("network not isolated: no network namespace could be made here")
    if job.data_dir is not None:
        notes.append("data dir not read-only: no mount namespace could be made here")
    if job.masked:
        notes.append("hidden paths not masked: no mount namespace could be made here")
    return cmd


def _unshared(cmd: list[str], job: Job, python: str, notes: list[str]) -> list[str]:
    """The fallback: new network, mount and PID namespaces (own /proc), data read-only,
    hidden paths masked; the rest of the host stays writable."""
    prefix, read_only = namespace_support()
    if prefix is None:
        return _unisolated(cmd, job, notes)
    steps = []
    if job.network:
        prefix = tuple(p for p in prefix if p != "--net")
    else:
        # A new network namespace starts with loopback down; multi-process jobs (torchrun's
        # rendezvous, gloo) need it up. Nothing leaves the machine through it.
        steps.append(f"{shlex.quote(python)} -c {shlex.quote(_LOOPBACK_UP)}")
    shared = [str(p) for p in (job.data_dir, job.input_dir) if p is not None]
    if read_only:
        steps += [_read_only(shared)] if shared else []
        steps += [f"mount -t tmpfs -o ro,size=4k nanoenv-masked {shlex.quote(str(p))}"
                  for p in job.masked if p.exists()]  # fmt: skip
    else:
        if shared:
            notes.append("data dir not read-only: read-only bind mounts do not work here")
        if job.masked:
            notes.append("hidden paths not masked: mounts do not work here")
    if not steps:
        return [*prefix, *cmd]
    wrapper = " && ".join([*steps, 'exec "$@"'])
    return [*prefix, "sh", "-c", wrapper, "nanoenv-job", *cmd]


def job_usage(workspace: Path, rusage: resource.struct_rusage) -> tuple[float, float]:
    """CPU seconds and peak RSS (KiB) of the job: the wrapper's record inside bubblewrap (a
    job could rewrite it, which moves telemetry only), else our own child's rusage."""
    own = (rusage.ru_utime + rusage.ru_stime, float(rusage.ru_maxrss))
    try:
        cpu, rss = json.loads((workspace / USAGE_FILE).read_text())
        return max(float(cpu), own[0]), max(float(rss), own[1])
    except (OSError, ValueError, TypeError):
        return own
