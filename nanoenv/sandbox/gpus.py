"""GPU allocation on one machine without Ray: k free device ids per job, never shared.

The GPUs are slots of a :class:`~nanoenv.sandbox.slots.SlotPool`: lock files every nanoenv process on
the machine shares, released when a job ends or its process dies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from nanoenv.sandbox.slots import SlotPool


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


class GpuPool(SlotPool):
    """Hands out GPU ids to jobs, k at a time, across threads and processes.

    Args:
        ids: The GPUs to share (default: :func:`visible_gpus`).
        lock_dir: Where the lock files live (default: a folder under the system temp dir).
    """

    def __init__(self, ids: list[int] | None = None, lock_dir: Path | None = None) -> None:
        super().__init__("gpu", visible_gpus() if ids is None else list(ids), lock_dir)
