"""A local job's CPU time and peak memory, counted over every process it ran.

The wrapper's rusage counts only the processes that were waited for: a process the job
started and left running dies with the job, uncounted, and one that dropped the job's marker
(``env -i``) is not found by it either. Either let a script train on cores it was not given
while the harness read one (``timing.cores_check``). So, while the job runs, the sandbox
samples every process below the job's first one and every process carrying its marker: each
one's own CPU time (not its reaped children's, which their own samples already hold), keyed by
pid and start time, the largest reading kept. The sum is a lower bound (a process's last
fraction of a sample period can be missed), as is the rusage; the sandbox keeps the larger.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class _Stat:
    ppid: int
    start: str
    cpu_s: float  # its own user + system time, every thread


def _read_stat(pid: str) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name may hold spaces or ")": the fields after the last ")" are fixed
            fields = f.read().rsplit(")", 1)[1].split()
        return _Stat(int(fields[1]), fields[19], (int(fields[11]) + int(fields[12])) / _TICK)
    except (OSError, IndexError, ValueError):
        return None  # gone while we read


def _carries(pid: str, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def _peak_rss_kb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return max((float(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")), default=0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclass
class JobMeter:
    """Samples a job's processes (see the module docstring) every ``period_s`` once started.

    Args:
        root: The job's first process (the sandbox's child).
        marker: The ``NAME=value`` environment entry every process of the job inherits.
    """

    root: int
    marker: str
    period_s: float = 0.25
    _cpu: dict[tuple[int, str], float] = field(default_factory=dict)
    _rss_kb: float = 0.0
    _marked: dict[tuple[int, str], bool] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> JobMeter:
        self._thread = threading.Thread(target=self._run, daemon=True, name="nanoenv-job-meter")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def stop(self) -> None:
        """Stop sampling (the job's processes are gone: a last sample would find none)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def sample(self) -> None:
        """Read every process of the job now."""
        stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _read_stat(p))}
        children: dict[int, list[int]] = {}
        for pid, s in stats.items():
            children.setdefault(s.ppid, []).append(pid)
        ours, todo = {self.root}, [self.root]
        while todo:
            for child in children.get(todo.pop(), []):
                ours.add(child)
                todo.append(child)
        marker = self.marker.encode()
        with self._lock:
            for pid, s in stats.items():
                key = (pid, s.start)
                if pid not in ours:
                    if key not in self._marked:  # a process's inherited environment is fixed
                        self._marked[key] = pid != os.getpid() and _carries(str(pid), marker)
                    if not self._marked[key]:
                        continue
                self._cpu[key] = max(self._cpu.get(key, 0.0), s.cpu_s)
                self._rss_kb = max(self._rss_kb, _peak_rss_kb(pid))

    @property
    def cpu_s(self) -> float:
        """CPU seconds of every process of the job seen so far."""
        with self._lock:
            return sum(self._cpu.values())

    @property
    def peak_rss_kb(self) -> float:
        """The largest peak resident size of any one process of the job seen so far (KiB)."""
        with self._lock:
            return self._rss_kb
