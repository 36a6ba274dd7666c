"""The sandbox protocol: a :class:`~nanoenv.types.Job` goes in, a ``JobResult`` comes out.

Backends (local, docker, ray) share this shape and the helpers below; nothing here knows
about gymnasium or the environment.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from nanoenv.liveness import owner_alive, owner_id
from nanoenv.types import Job, JobResult, StampedLine

log = logging.getLogger(__name__)
LineCallback = Callable[[StampedLine], None]
CANCELLED = "cancelled by the caller"


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared by its class (``capabilities = Capabilities(...)``) so
    that nothing recognises a backend by its name."""

    # It places jobs on CPUs and GPUs itself (Ray): the runner's CPU and GPU pools stand
    # aside, and the GPU ids a job ran on are not the harness's to sample.
    schedules_resources: bool = False
    # GPUs must be asked for when the sandbox is made (docker's device requests); otherwise a
    # job's GPUs are passed by CUDA_VISIBLE_DEVICES or by the scheduler.
    gpu_request: bool = False
    # How many runs an env keeps in flight on it unless told (max_in_flight): one where jobs
    # share this machine's cores.
    default_in_flight: int = 1
    summary: str = ""


def capabilities(sandbox: object) -> Capabilities:
    """A sandbox's declared capabilities (a third-party sandbox without any: the defaults)."""
    found = getattr(sandbox, "capabilities", None)
    return found if isinstance(found, Capabilities) else Capabilities()


@runtime_checkable
class Sandbox(Protocol):
    """Runs one job at a time per call; implementations must be safe to call from threads."""

    name: str

    def run(
        self, job: Job, on_line: LineCallback | None = None, cancel: threading.Event | None = None
    ) -> JobResult:
        """Run ``job`` to completion (or its deadline, or until ``cancel`` is set). ``on_line``
        gets every line, in order, before this returns; a slow one must not delay the stamps."""
        ...

    def close(self) -> None:
        """Release what the sandbox holds (clients, pools)."""
        ...


def render_command(command: list[str], *, python: str, gpus: int) -> list[str]:
    """Fill ``{python}`` and ``{gpus}`` in a task's command template."""
    return [part.format(python=python, gpus=max(gpus, 1)) for part in command]


def job_cpus(job: Job, host_cpus: int | None) -> float:
    """The CPUs a job gets: what its limits ask for, never more than the host has (a task
    written for a 64-core box still runs on 2), and all of them when it asks for none."""
    host = max(1, host_cpus or os.cpu_count() or 1)
    return min(float(job.limits.cpus), float(host)) if job.limits.cpus else float(host)


def job_threads(job: Job, host_cpus: int | None) -> str:
    """OMP_NUM_THREADS for a job: its CPUs, whole, at least one."""
    return str(max(1, int(job_cpus(job, host_cpus))))


def job_environment(
    job: Job,
    *,
    home: str,
    tmp: str,
    out_dir: str,
    data_dir: str,
    input_dir: str,
    host_cpus: int | None,
    backend: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment every backend gives a job, with paths as the job sees them: first what
    the backend itself sets (``backend``: inherited variables, its markers, visible GPUs), then
    the contract (HOME, TMPDIR, unbuffered Python that writes no bytecode and dumps its stack
    on a fatal signal (faulthandler: an abort or a segfault says where), OMP and MKL threads
    as its CPUs, NANOENV_OUT_DIR, and NANOENV_DATA_DIR and NANOENV_INPUT_DIR where the job has
    them), then the job's own variables (the task's: seed, device, overrides), which win."""
    threads = job_threads(job, host_cpus)
    env = dict(backend or {})
    env.update(
        HOME=home, TMPDIR=tmp, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
        PYTHONFAULTHANDLER="1",
        OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, NANOENV_OUT_DIR=out_dir,
    )  # fmt: skip
    if job.data_dir is not None:
        env["NANOENV_DATA_DIR"] = data_dir
    if job.input_dir is not None:
        env["NANOENV_INPUT_DIR"] = input_dir
    env.update(job.env)
    return env


def data_links(job: Job) -> dict[str, str]:
    """The links a job's working directory gets: {path relative to it: shard file name in
    data_dir}, one per ``*.bin`` shard, under ``job.data_links`` (a relative path prefix)."""
    if not job.data_links or job.data_dir is None or not job.data_dir.is_dir():
        return {}
    prefix = job.data_links
    if prefix.startswith("/") or ".." in Path(prefix).parts:
        raise ValueError(f"data_links must be a relative path inside the workspace, got {prefix!r}")
    return {f"{prefix}{p.name}": p.name for p in sorted(job.data_dir.glob("*.bin"))}


def job_gpu_count(job: Job) -> int:
    """How many GPUs a job asks for."""
    return len(job.gpus) if isinstance(job.gpus, list) else int(job.gpus)


class OutputPump:
    """Reads a child's pipe line by line, stamps each line with the harness clock, caps bytes.

    One reader thread per stream stamps each line as it arrives; ``on_line`` is called from a
    thread of its own, one line at a time and in order. The stamps are the harness's clock, so
    a slow consumer (a Ray queue's remote put, a log on a slow disk, a user's progress
    callback) must never hold the reader: the lines behind it would be stamped late, and the
    run timed longer than it ran. A stdout line that begins with ``end_line`` is the job's last:
    ``on_end`` is called to stop the job, and nothing after it is kept. ``join`` returns once
    every line has been delivered. ``on_overflow`` and ``on_end`` run in a thread of their own
    too: stopping a job can wait on the job's own stream (Docker reports a killed container
    only once its exec's output is drained), so the reader must go on draining meanwhile.
    """

    DELIVERY_WAIT_S = 60.0  # the longest join waits for a consumer that has fallen behind

    def __init__(
        self,
        t0: float,
        max_bytes: int,
        on_line: LineCallback | None,
        on_overflow: Callable[[], None],
        end_line: str | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.t0 = t0
        self.max_bytes = max_bytes
        self.on_line = on_line
        self.on_overflow = on_overflow
        self.end_line = end_line
        self.on_end = on_end
        self.lines: list[StampedLine] = []
        self.bytes_seen = 0
        self.truncated = False
        self.ended = False  # the end line came, and the job was stopped there
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stoppers: list[threading.Thread] = []
        self._deliveries: queue.SimpleQueue[StampedLine | None] = queue.SimpleQueue()
        self._deliverer: threading.Thread | None = None
        if on_line is not None:
            self._deliverer = threading.Thread(target=self._deliver, daemon=True)
            self._deliverer.start()

    def start(self, pipe: IO[bytes], stream: str) -> None:
        """Start reading ``pipe`` (``stdout`` or ``stderr``) in a daemon thread."""
        t = threading.Thread(target=self._pump, args=(pipe, stream), daemon=True)
        t.start()
        self._threads.append(t)

    def _pump(self, pipe: IO[bytes], stream: str) -> None:
        with pipe:
            for raw in iter(pipe.readline, b""):
                self.emit(raw, stream)

    def emit(self, raw: bytes, stream: str) -> None:
        """Take one line (with or without its newline) as received now."""
        stamp = time.monotonic() - self.t0
        with self._lock:
            if self.ended:
                return  # the run ended at its end line; what the dying job still wrote is not
            self.bytes_seen += len(raw)
            if self.bytes_seen > self.max_bytes:
                if not self.truncated:
                    self.truncated = True
                    self._stop(self.on_overflow)
                return  # keep draining so the child is never blocked on a full pipe
            line = StampedLine(
                t=round(stamp, 4),
                stream=stream,  # type: ignore[arg-type]
                text=raw.decode("utf-8", "replace").rstrip("\r\n"),
            )
            self.lines.append(line)
            if self._deliverer is not None:
                self._deliveries.put(line)
            if self.end_line and stream == "stdout" and line.text.startswith(self.end_line):
                self.ended = True
                if self.on_end is not None:
                    self._stop(self.on_end)

    def _stop(self, action: Callable[[], None]) -> None:
        """Run ``action`` (it stops the job) off the reader thread; ``stopped`` waits for it."""
        t = threading.Thread(target=action, daemon=True)
        t.start()
        self._stoppers.append(t)

    def stopped(self, timeout: float = 30.0) -> None:
        """Wait until the stop the output asked for (overflow or end line), if any, is done."""
        for t in self._stoppers:
            t.join(timeout)

    def _deliver(self) -> None:
        while (line := self._deliveries.get()) is not None:
            assert self.on_line is not None
            try:
                self.on_line(line)
            except Exception:  # a bad line must never stop the delivery of the next ones
                log.exception("the line callback failed on %r", line.text[:200])

    def join(self, timeout: float = 10.0) -> None:
        """Wait for the readers to see end of file, then for every line to be delivered."""
        self.stopped(timeout)
        for t in self._threads:
            t.join(timeout)
        if self._deliverer is not None:
            self._deliveries.put(None)
            self._deliverer.join(self.DELIVERY_WAIT_S)
            if self._deliverer.is_alive():
                log.warning("the line callback is %d s behind; not waiting for it",
                            self.DELIVERY_WAIT_S)  # fmt: skip


class LineSplitter:
    """Turn chunks of a byte stream (as the Docker API delivers them) into lines for a pump."""

    def __init__(self, pump: OutputPump, stream: str) -> None:
        self.pump, self.stream, self.buf = pump, stream, b""

    def feed(self, chunk: bytes) -> None:
        """Add a chunk; emit every complete line in it."""
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            self.pump.emit(line + b"\n", self.stream)
        if len(self.buf) > 1 << 20:  # a "line" of a megabyte without a newline: emit it anyway
            self.pump.emit(self.buf, self.stream)
            self.buf = b""

    def close(self) -> None:
        """Emit a last line that had no newline."""
        if self.buf:
            self.pump.emit(self.buf, self.stream)
            self.buf = b""


class OutBudget:
    """What the host keeps of a job's out dir: at most ``max_files`` files and ``max_bytes``
    bytes (a sparse file pays its apparent size). The rest is dropped and summed up in one note,
    so a job that writes 20,000 files costs the feedback one line, not 20,000."""

    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.max_bytes, self.max_files = max_bytes, max_files
        self.bytes_left, self.files_left = max_bytes, max_files
        self.dropped_files = self.dropped_bytes = 0
        self._notes: list[str] = []

    def take(self, size: int) -> bool:
        """Whether a file of ``size`` bytes may be kept (and pay for it if so)."""
        if self.files_left <= 0 or size > self.bytes_left:
            self.dropped_files += 1
            self.dropped_bytes += size
            return False
        self.files_left -= 1
        self.bytes_left -= size
        return True

    def note(self, text: str) -> None:
        """Something skipped for what it is (a link, a device); the first few are kept."""
        if len(self._notes) < 10:
            self._notes.append(text)
        elif len(self._notes) == 10:
            self._notes.append("(more entries of the out dir skipped)")

    def notes(self) -> list[str]:
        dropped = []
        if self.dropped_files:
            dropped.append(
                f"dropped {self.dropped_files:,} file(s) ({self.dropped_bytes:,} bytes) of the out "
                f"dir: the harness keeps at most {self.max_files:,} files and {self.max_bytes:,} "
                "bytes (write model.safetensors and model.json, little else)"
            )
        return self._notes + dropped


def copy_out(src: Path, dest: Path, max_bytes: int, max_files: int) -> list[str]:
    """Copy regular files from ``src`` to ``dest``, never following links or leaving ``src``,
    within an :class:`OutBudget`. Returns notes on what was skipped."""
    budget = OutBudget(max_bytes, max_files)
    if not src.is_dir():
        return []
    dest.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(src, followlinks=False):
        rel_root = Path(root).relative_to(src)
        dirs.sort()
        for d in list(dirs):
            if os.path.islink(os.path.join(root, d)):
                budget.note(f"skipped link {rel_root / d} in the out dir")
                dirs.remove(d)
        # The model files first, so that no amount of clutter can crowd them out.
        for name in sorted(files, key=lambda n: (not n.startswith("model."), n)):
            path = os.path.join(root, name)
            st = os.lstat(path)
            rel = rel_root / name
            if not stat.S_ISREG(st.st_mode):
                budget.note(f"skipped {rel} in the out dir: not a regular file")
                continue
            if not budget.take(st.st_size):
                continue
            (dest / rel_root).mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a link swapped in after the lstat above is refused, not followed.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as fin, open(dest / rel, "wb") as fout:
                shutil.copyfileobj(fin, fout)
    return budget.notes()


def extract_tar(tar_path: Path, dest: Path, max_bytes: int, max_files: int) -> list[str]:
    """Unpack regular files and folders from a tar stream into ``dest``; nothing else.

    Links, devices, absolute paths and ``..`` are refused; files past the
    :class:`OutBudget` are dropped. Returns notes on what was skipped.
    """
    import tarfile

    budget = OutBudget(max_bytes, max_files)
    dest.mkdir(parents=True, exist_ok=True)
    extracted: set[str] = set()
    with tarfile.open(tar_path, "r|") as tar:  # a stream: members are read in order, once
        for member in tar:
            name = os.path.normpath(member.name)
            if name == ".":
                continue
            if name.startswith(("/", "..")) or os.path.isabs(name):
                budget.note(f"skipped {member.name!r} in the out dir: outside it")
                continue
            if member.isdir():
                (dest / name).mkdir(parents=True, exist_ok=True)
                continue
            if member.islnk() and os.path.normpath(member.linkname) in extracted:
                # A hard link to a file of this same archive: a second copy of it, paid for
                # again, or a thousand links to one big file would fill the host's disk.
                target = dest / os.path.normpath(member.linkname)
                if budget.take(target.stat().st_size):
                    shutil.copyfile(target, dest / name)
                    extracted.add(name)
                continue
            if not member.isfile():
                budget.note(f"skipped {name} in the out dir: not a regular file")
                continue
            if not budget.take(member.size):
                continue
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            with open(dest / name, "wb") as f:
                shutil.copyfileobj(src, f)
            extracted.add(name)
    return budget.notes()


def result_from(
    pump: OutputPump,
    exit_code: int | None,
    t0: float,
    *,
    timed_out: bool = False,
    oom: bool = False,
    notes: list[str] | None = None,
    telemetry: dict[str, float] | None = None,
    exit_s: float | None = None,
) -> JobResult:
    """Assemble a JobResult from a finished pump and the child's fate. A job the sandbox ended
    at its end line exited 0: it said it was done, and the kill only skipped its teardown."""
    return JobResult(
        exit_s=None if exit_s is None else round(exit_s, 4),
        exit_code=0 if pump.ended else exit_code,
        lines=sorted(pump.lines, key=lambda x: x.t),
        wall_time_s=round(time.monotonic() - t0, 4),
        timed_out=timed_out,
        oom=oom and not pump.ended,
        output_truncated=pump.truncated,
        notes=notes or [],
        telemetry=telemetry or {},
        ended_at_end_line=pump.ended,
    )


def new_workspace(prefix: str) -> Path:
    """A fresh job folder in the temp dir, named for the process that made it
    (``<prefix><pid>-<start>-...``), so that one whose harness was killed mid-job (its cleanup
    never ran) can be told apart and removed (:func:`sweep_workspaces`). The name is the
    record: a job cannot rename the folder it runs in."""
    _, pid, start = owner_id().rsplit(":", 2)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{pid}-{start}-"))


def sweep_workspaces(prefix: str, root: Path | None = None) -> int:
    """Remove the job folders (``prefix``, made by :func:`new_workspace`) of harnesses that are
    gone; folders without an owner in their name (older versions) and other users' stay.
    Returns how many were removed."""
    removed = 0
    for folder in (root or Path(tempfile.gettempdir())).glob(f"{prefix}*-*-*"):
        pid, start = folder.name[len(prefix) :].split("-")[:2]
        ours = pid.isdigit() and start.isdigit() and folder.is_dir() and not folder.is_symlink()
        if ours and not owner_alive(f"{socket.gethostname()}:{pid}:{start}"):
            shutil.rmtree(folder, ignore_errors=True)
            removed += not folder.exists()
    if removed:
        log.warning("removed %d job folder(s) left by a harness that died", removed)
    return removed
