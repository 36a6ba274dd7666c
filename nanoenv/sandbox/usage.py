"""A local job's CPU time and peak memory, counted over every process it ran.

The wrapper's rusage counts only the processes that were waited for: a process the job
started and left running dies with the job, uncounted, and one that dropped the job's marker
(``env -i``) is not found by it either. Either let a script train on cores it was not given
while the harness read one (``timing.cores_check``). So, while the job runs, the sandbox
samples every process below the job's first one and every process carrying its marker: each
one's own CPU time (not its reaped children's, which their own samples already hold), keyed by
pid and start time, the largest reading kept. That sum misses a process's last fraction of a
sample period, so short processes its parent waited for (a loop of subprocess.run) are counted
too: each sample also sums the live processes' own time and their reaped children's, and the
largest such sum is kept. Each reading is a lower bound, as is the rusage; the sandbox keeps
the largest.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from nanoenv.liveness import below

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class _Stat:
    ppid: int
    start: str
    cpu_s: float  # its own user + system time, every thread
    children_s: float  # the same of the children it has reaped


def _read_stat(pid: str) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name may hold spaces or ")": the fields after the last ")" are fixed
            fields = f.read().rsplit(")", 1)[1].split()
        own, reaped = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
        return _Stat(int(fields[1]), fields[19], own / _TICK, reaped / _TICK)
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


def _parents_first(
    job: set[int], stats: dict[int, _Stat], children: dict[int, list[int]]
) -> list[int]:
    """The job's processes, each after its parent where the parent is the job's too."""
    order, todo = [], [pid for pid in job if stats.get(pid) is None or stats[pid].ppid not in job]
    while todo:
        pid = todo.pop()
        order.append(pid)
        todo += [c for c in children.get(pid, []) if c in job]
    return order


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
    _live_and_reaped: float = 0.0
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
        marker = self.marker.encode()
        with self._lock:
            job = {self.root, *below(self.root, children)}
            job |= {p for p, s in stats.items() if p not in job and self._carries(p, s, marker)}
            for pid in job & stats.keys():
                key = (pid, stats[pid].start)
                self._cpu[key] = max(self._cpu.get(key, 0.0), stats[pid].cpu_s)
                self._rss_kb = max(self._rss_kb, _peak_rss_kb(pid))
            # Read again, each parent before its children: a child reaped between the two
            # reads is then gone when its turn comes, never counted in its own and in its
            # parent's reaped time both (the first pass read the processes in any order).
            now = 0.0
            for pid in _parents_first(job, stats, children):
                again = _read_stat(str(pid))
                if again is not None and (pid not in stats or again.start == stats[pid].start):
                    now += again.cpu_s + again.children_s
            self._live_and_reaped = max(self._live_and_reaped, now)

    def _carries(self, pid: int, stat: _Stat, marker: bytes) -> bool:
        key = (pid, stat.start)
        if key not in self._marked:  # a process's inherited environment is fixed
            self._marked[key] = pid != os.getpid() and _carries(str(pid), marker)
        return self._marked[key]

    @property
    def cpu_s(self) -> float:
        """CPU seconds of every process of the job seen so far."""
        with self._lock:
            return max(sum(self._cpu.values()), self._live_and_reaped)

    @property
    def peak_rss_kb(self) -> float:
        """The largest peak resident size of any one process of the job seen so far (KiB)."""
        with self._lock:
            return self._rss_kb
