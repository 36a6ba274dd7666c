"""Machine-wide slots for jobs without Ray: k of a machine's GPUs or CPUs, never oversubscribed.

Each slot is a lock file (``fcntl.flock``) in a folder every nanoenv process on the machine
shares, so jobs in different processes (vector envs, several agents) never share a GPU, and
timed runs never share cores: two runs on one 2-core machine would each train at half speed
and their rewards would measure the neighbour, not the script. A process that crashes releases
its slots the moment the kernel closes its files.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nanoenv.errors import SandboxError


class SlotPool:
    """Hands out slot ids to jobs, k at a time, across threads and processes.

    Args:
        kind: What a slot is (``"gpu"``, ``"cpu"``): names the lock files and the messages.
        ids: The slots to share.
        lock_dir: Where the lock files live (default: a folder under the system temp dir).
    """

    def __init__(self, kind: str, ids: list[int], lock_dir: Path | None = None) -> None:
        self.kind = kind
        self.ids = list(ids)
        self.lock_dir = lock_dir or Path(tempfile.gettempdir()) / f"nanoenv-{kind}-locks"
        if not self.lock_dir.is_dir():
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # every user's nanoenv shares the machine's slots
                os.chmod(self.lock_dir, 0o1777)
        self._mutex = threading.Lock()  # flock is per open file: keep threads of one process apart

    def _try(self, name: str) -> int | None:
        """The lock file ``name`` locked (its fd), or None if another holder has it."""
        path = self.lock_dir / f"{self.kind}-{name}.lock"
        # Read-only is enough for flock, and works on a lock file another user created.
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def acquire(
        self, k: int, timeout_s: float | None = None, cancel: threading.Event | None = None
    ) -> tuple[list[int], list[int]]:
        """Wait for k free slots; return (ids, lock fds). Release with :meth:`release`.

        Waiters queue: the one waiting holds the ``queue`` lock, so a job that needs every
        slot is not starved by smaller jobs that keep taking each slot as it frees up."""
        noun = self.kind.upper() + "s"
        if k > len(self.ids):
            raise SandboxError(f"a job asks for {k} {noun}; this machine has {len(self.ids)}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        queue: int | None = None
        try:
            while True:
                with self._mutex:
                    if queue is None:
                        queue = self._try("queue")
                    if queue is not None and (got := self._take(k)):
                        return [s for s, _ in got], [f for _, f in got]
                if cancel is not None and cancel.is_set():
                    raise SandboxError(f"cancelled while waiting for {k} free {noun}")
                if deadline is not None and time.monotonic() > deadline:
                    raise SandboxError(f"no {k} free {noun} within {timeout_s:.0f} s")
                time.sleep(0.1)
        finally:
            if queue is not None:
                os.close(queue)

    def _take(self, k: int) -> list[tuple[int, int]]:
        """k free slots, locked, or none (what was taken is given back)."""
        got: list[tuple[int, int]] = []
        for slot in self.ids:
            if (fd := self._try(str(slot))) is not None:
                got.append((slot, fd))
                if len(got) == k:
                    return got
        for _, fd in got:
            os.close(fd)
        return []

    @staticmethod
    def release(fds: list[int]) -> None:
        """Give slots back (closing a lock file releases its lock)."""
        for fd in fds:
            os.close(fd)

    @contextmanager
    def allocate(
        self, k: int, timeout_s: float | None = None, cancel: threading.Event | None = None
    ) -> Iterator[list[int]]:
        """``with pool.allocate(2) as ids:`` the ids are this job's until the block ends."""
        ids, fds = self.acquire(k, timeout_s, cancel)
        try:
            yield ids
        finally:
            self.release(fds)


def cpu_slot_count() -> int:
    """The CPU slots of this machine: ``NANOENV_CPU_SLOTS`` if set, else its cores."""
    if (n := os.environ.get("NANOENV_CPU_SLOTS")) is not None:
        return max(1, int(n))
    return os.cpu_count() or 1


class CpuPool(SlotPool):
    """The machine's cores as slots: a job takes as many as its ``limits.cpus`` (all if unset).

    ``NANOENV_CPU_SLOTS`` sets how many there are: more than the cores lets timed runs share
    them (faster episodes, noisier times).
    """

    def __init__(self, slots: int | None = None, lock_dir: Path | None = None) -> None:
        super().__init__("cpu", list(range(slots or cpu_slot_count())), lock_dir)

    def slots_for(self, cpus: float | None) -> int:
        """How many slots a job with this CPU limit takes."""
        if not cpus:
            return len(self.ids)
        return max(1, min(len(self.ids), math.ceil(cpus)))
