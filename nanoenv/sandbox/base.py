"""The sandbox protocol: a :class:`~nanoenv.types.Job` goes in, a ``JobResult`` comes out.

Backends (local, docker, ray) share this shape and the helpers below; nothing here knows
about gymnasium or the environment.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from nanoenv.types import Job, JobResult, StampedLine

LineCallback = Callable[[StampedLine], None]
CANCELLED = "cancelled by the caller"


@runtime_checkable
class Sandbox(Protocol):
    """Runs one job at a time per call; implementations must be safe to call from threads."""

    name: str

    def run(
        self, job: Job, on_line: LineCallback | None = None, cancel: threading.Event | None = None
    ) -> JobResult:
        """Run ``job`` to completion (or its deadline, or until ``cancel`` is set)."""
        ...

    def close(self) -> None:
        """Release what the sandbox holds (clients, pools)."""
        ...


def render_command(command: list[str], *, python: str, gpus: int) -> list[str]:
    """Fill ``{python}`` and ``{gpus}`` in a task's command template."""
    return [part.format(python=python, gpus=max(gpus, 1)) for part in command]


def job_gpu_count(job: Job) -> int:
    """How many GPUs a job asks for."""
    return len(job.gpus) if isinstance(job.gpus, list) else int(job.gpus)


class OutputPump:
    """Reads a child's pipe line by line, stamps each line with the harness clock, caps bytes.

    One pump per stream, each in its own thread; ``on_line`` is called from those threads,
    under a lock, so callers see one line at a time.
    """

    def __init__(
        self,
        t0: float,
        max_bytes: int,
        on_line: LineCallback | None,
        on_overflow: Callable[[], None],
    ) -> None:
        self.t0 = t0
        self.max_bytes = max_bytes
        self.on_line = on_line
        self.on_overflow = on_overflow
        self.lines: list[StampedLine] = []
        self.bytes_seen = 0
        self.truncated = False
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

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
            self.bytes_seen += len(raw)
            if self.bytes_seen > self.max_bytes:
                if not self.truncated:
                    self.truncated = True
                    self.on_overflow()
                return  # keep draining so the child is never blocked on a full pipe
            line = StampedLine(
                t=round(stamp, 4),
                stream=stream,  # type: ignore[arg-type]
                text=raw.decode("utf-8", "replace").rstrip("\r\n"),
            )
            self.lines.append(line)
            if self.on_line is not None:
                self.on_line(line)

    def join(self, timeout: float = 10.0) -> None:
        """Wait for the readers to see end of file."""
        for t in self._threads:
            t.join(timeout)


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


def copy_out(src: Path, dest: Path, max_bytes: int) -> list[str]:
    """Copy regular files from ``src`` to ``dest``, never following links or leaving ``src``.

    Returns notes on what was skipped (links, devices, files past the size budget).
    """
    notes: list[str] = []
    if not src.is_dir():
        return notes
    dest.mkdir(parents=True, exist_ok=True)
    budget = max_bytes
    for root, dirs, files in os.walk(src, followlinks=False):
        rel_root = Path(root).relative_to(src)
        for d in list(dirs):
            if os.path.islink(os.path.join(root, d)):
                notes.append(f"skipped link {rel_root / d} in the out dir")
                dirs.remove(d)
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            rel = rel_root / name
            if not stat.S_ISREG(st.st_mode):
                notes.append(f"skipped {rel} in the out dir: not a regular file")
                continue
            if st.st_size > budget:
                notes.append(f"skipped {rel} in the out dir: over the {max_bytes:,}-byte budget")
                continue
            budget -= st.st_size
            (dest / rel_root).mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a link swapped in after the lstat above is refused, not followed.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as fin, open(dest / rel, "wb") as fout:
                shutil.copyfileobj(fin, fout)
    return notes


def extract_tar(tar_path: Path, dest: Path, max_bytes: int) -> list[str]:
    """Unpack regular files and folders from a tar stream into ``dest``; nothing else.

    Links, devices, absolute paths and ``..`` are refused; files past the size budget are
    skipped. Returns notes on what was skipped.
    """
    import tarfile

    notes: list[str] = []
    dest.mkdir(parents=True, exist_ok=True)
    budget = max_bytes
    extracted: set[str] = set()
    with tarfile.open(tar_path, "r|") as tar:  # a stream: members are read in order, once
        for member in tar:
            name = os.path.normpath(member.name)
            if name == ".":
                continue
            if name.startswith(("/", "..")) or os.path.isabs(name):
                notes.append(f"skipped {member.name!r} in the out dir: outside it")
                continue
            if member.isdir():
                (dest / name).mkdir(parents=True, exist_ok=True)
                continue
            if member.islnk() and os.path.normpath(member.linkname) in extracted:
                # A hard link to a file of this same archive: a second copy of it, paid for
                # again, or a thousand links to one big file would fill the host's disk.
                target = dest / os.path.normpath(member.linkname)
                size = target.stat().st_size
                if size > budget:
                    notes.append(
                        f"skipped {name} in the out dir: over the {max_bytes:,}-byte budget"
                    )
                    continue
                budget -= size
                shutil.copyfile(target, dest / name)
                extracted.add(name)
                continue
            if not member.isfile():
                notes.append(f"skipped {name} in the out dir: not a regular file")
                continue
            if member.size > budget:
                notes.append(f"skipped {name} in the out dir: over the {max_bytes:,}-byte budget")
                continue
            budget -= member.size
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            with open(dest / name, "wb") as f:
                shutil.copyfileobj(src, f)
            extracted.add(name)
    return notes


def result_from(
    pump: OutputPump,
    exit_code: int | None,
    t0: float,
    *,
    timed_out: bool = False,
    oom: bool = False,
    notes: list[str] | None = None,
    telemetry: dict[str, float] | None = None,
) -> JobResult:
    """Assemble a JobResult from a finished pump and the child's fate."""
    return JobResult(
        exit_code=exit_code,
        lines=sorted(pump.lines, key=lambda x: x.t),
        wall_time_s=round(time.monotonic() - t0, 4),
        timed_out=timed_out,
        oom=oom,
        output_truncated=pump.truncated,
        notes=notes or [],
        telemetry=telemetry or {},
    )
