"""Who owns a running thing (a step in the store, a container), and whether that owner lives.

An owner is ``host:pid:start``, the start being the process's start time in clock ticks since
boot (``/proc/<pid>/stat``, field 22): a pid the kernel has handed to a new process since is
not mistaken for the owner. An owner from another machine is not ours to judge (alive).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _start_ticks(pid: int | str) -> str:
    with open(f"/proc/{pid}/stat") as f:
        # the command name may hold spaces or ")": the fields after the last ")" are fixed
        return f.read().rsplit(")", 1)[1].split()[19]


def owner_id() -> str:
    """This process, as ``host:pid:start``."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process an owner names still runs (True for another machine's). An owner
    written without a start time (``host:pid``, older records) is judged by its pid alone."""
    host, _, rest = (owner or "").partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        return not start or _start_ticks(pid) == start
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc; empty where there is none): what a run
    left running, for the soak benchmark and the tests that check nothing was."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone while we read
        children.setdefault(parent, []).append(int(stat.parent.name))
    return below(pid, children)


def below(pid: int, children: dict[int, list[int]]) -> list[int]:
    """Every process below ``pid`` in a process table given as each parent's children."""
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
