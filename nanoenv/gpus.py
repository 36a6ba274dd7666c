"""GPU allocation on one machine without Ray: k free device ids per job, never shared.

Each GPU is a lock file (``fcntl.flock``) in a folder every nanoenv process on the machine
shares, so jobs in different processes (vector envs, several agents) never get the same GPU,
and a process that crashes releases its GPUs the moment the kernel closes its files.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nanoenv.errors import SandboxError


def visible_gpus() -> list[int]:
    """The GPU ids on this machine: ``NANOENV_GPU_IDS`` if set, else what nvidia-smi lists."""
    if (ids := os.environ.get("NANOENV_GPU_IDS")) is not None:
        return [int(i) for i in ids.split(",") if i.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(line) for line in out.split() if line.strip().isdigit()]


class GpuPool:
    """Hands out GPU ids to jobs, k at a time, across threads and processes.

    Args:
        ids: The GPUs to share (default: :func:`visible_gpus`).
        lock_dir: Where the lock files live (default: a folder under the system temp dir).
    """

    def __init__(self, ids: list[int] | None = None, lock_dir: Path | None = None) -> None:
        self.ids = visible_gpus() if ids is None else list(ids)
        self.lock_dir = lock_dir or Path(tempfile.gettempdir()) / "nanoenv-gpu-locks"
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        self._mutex = threading.Lock()  # flock is per open file: keep threads of one process apart

    def _try(self, gpu: int) -> int | None:
        fd = os.open(self.lock_dir / f"gpu-{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def acquire(self, k: int, timeout_s: float | None = None) -> tuple[list[int], list[int]]:
        """Wait for k free GPUs; return (ids, lock fds). Release with :meth:`release`."""
        if k > len(self.ids):
            raise SandboxError(f"a job asks for {k} GPUs; this machine has {len(self.ids)}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            with self._mutex:
                got: list[tuple[int, int]] = []
                for gpu in self.ids:
                    if (fd := self._try(gpu)) is not None:
                        got.append((gpu, fd))
                        if len(got) == k:
                            return [g for g, _ in got], [f for _, f in got]
                for _, fd in got:  # not enough free: give back what we took, try again later
                    os.close(fd)
            if deadline is not None and time.monotonic() > deadline:
                raise SandboxError(f"no {k} free GPUs within {timeout_s:.0f} s")
            time.sleep(0.2)

    @staticmethod
    def release(fds: list[int]) -> None:
        """Give GPUs back (closing a lock file releases its lock)."""
        for fd in fds:
            os.close(fd)

    @contextmanager
    def allocate(self, k: int, timeout_s: float | None = None) -> Iterator[list[int]]:
        """``with pool.allocate(2) as ids:`` the ids are this job's until the block ends."""
        ids, fds = self.acquire(k, timeout_s)
        try:
            yield ids
        finally:
            self.release(fds)
