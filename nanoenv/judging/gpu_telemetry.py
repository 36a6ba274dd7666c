"""GPU telemetry the harness samples while a job runs: utilisation and memory, through NVML.

The script cannot be trusted to report its own GPU use, and ``torch.cuda.max_memory_allocated``
inside the job misses other processes and the allocator's cache; NVML (``nvidia-ml-py``, the
library ``nvidia-smi`` is built on) reads the card from outside. A :class:`GpuSampler` polls the
job's GPUs on a thread from before the job starts to after it ends and summarises what it saw:
mean and peak utilisation, mean and peak memory used, the card's memory. Where NVML is absent
(no driver, no package) or fails mid-run, it samples nothing or stops, and the job is unaffected:
telemetry never decides an outcome.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from types import ModuleType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 1.0
MIB = 2**20


def open_nvml() -> Any | None:
    """The initialised ``pynvml`` module, or None where NVML is not there."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no NVML here
        log.debug("NVML unavailable: %s", e)
        return None
    return pynvml


class GpuSampler:
    """Samples ``ids`` every ``interval_s`` while in its ``with`` block.

    Args:
        ids: The host GPU indices the job holds (NVML's indices, as nvidia-smi lists them).
        interval_s: Seconds between samples (default SAMPLE_INTERVAL_S).
        nvml: An initialised NVML module (default: :func:`open_nvml`); tests pass a stand-in.
    """

    def __init__(
        self, ids: list[int], interval_s: float | None = None, nvml: Any | None = None
    ) -> None:
        self.ids = list(ids)
        self.interval_s = interval_s or SAMPLE_INTERVAL_S
        self._nvml: Any | None = nvml
        self._opened = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.util: list[float] = []  # per sample: the mean over the job's GPUs, percent
        self.mem: list[float] = []  # per sample: the sum over the job's GPUs, bytes
        self.total_bytes = 0.0
        self.error = ""

    def __enter__(self) -> GpuSampler:
        if not self.ids:
            return self
        if self._nvml is None:
            self._nvml, self._opened = open_nvml(), True
        if self._nvml is None:
            return self
        try:
            handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in self.ids]
            self.total_bytes = float(
                sum(self._nvml.nvmlDeviceGetMemoryInfo(h).total for h in handles)
            )
        except Exception as e:
            self.error = f"NVML could not open GPUs {self.ids}: {e}"
            return self
        self._sample(handles)  # one reading before the job starts, so even a short job has one
        self._thread = threading.Thread(target=self._loop, args=(handles,), daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10 * self.interval_s + 5)
        if self._opened and isinstance(self._nvml, ModuleType):
            # shutting down a library that failed is not the job's problem
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()

    def _loop(self, handles: list[Any]) -> None:
        while not self._stop.wait(self.interval_s):
            if not self._sample(handles):
                return

    def _sample(self, handles: list[Any]) -> bool:
        try:
            util = [float(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in handles]
            used = [float(self._nvml.nvmlDeviceGetMemoryInfo(h).used) for h in handles]
        except Exception as e:  # a lost device or a driver hiccup ends sampling, not the job
            self.error = f"NVML sampling stopped: {e}"
            return False
        self.util.append(sum(util) / len(util))
        self.mem.append(sum(used))
        return True

    def summary(self) -> dict[str, float]:
        """Telemetry fields (empty when nothing was sampled): utilisation in percent, memory
        in MiB, summed over the job's GPUs."""
        if not self.util:
            return {}
        return {
            "gpu_util_mean_pct": round(sum(self.util) / len(self.util), 1),
            "gpu_util_peak_pct": round(max(self.util), 1),
            "gpu_mem_mean_mb": round(sum(self.mem) / len(self.mem) / MIB, 1),
            "gpu_mem_peak_mb": round(max(self.mem) / MIB, 1),
            "gpu_mem_total_mb": round(self.total_bytes / MIB, 1),
            "gpu_samples": float(len(self.util)),
        }
