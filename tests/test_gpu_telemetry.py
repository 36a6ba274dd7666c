"""The harness's GPU telemetry: NVML sampled from outside the job, in the result and feedback.

No GPU runs here, so NVML is a stand-in with NVML's interface (the part under test is the
sampler and its path through the runner, not the driver); the real pynvml, installed with the
dev extras, is what the no-NVML test meets.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from nanoenv.judging import gpu_telemetry
from nanoenv.judging.gpu_telemetry import MIB, GpuSampler
from nanoenv.sandbox.fake import FakeSandbox
from nanoenv.types import Outcome


class FakeNvml:
    """NVML's calls, reading scripted utilisation and memory per device; ``fail_after``
    makes every reading after that many raise, as a lost device does."""

    def __init__(self, total_mib: int = 80_000, fail_after: int | None = None) -> None:
        self.total = total_mib * MIB
        self.fail_after = fail_after
        self.readings = 0
        self.per_device: dict[int, int] = {}
        self.lock = threading.Lock()

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if i > 7:
            raise RuntimeError(f"NVML_ERROR_INVALID_ARGUMENT: no GPU {i}")
        return i

    def _tick(self) -> int:
        with self.lock:
            self.readings += 1
            if self.fail_after is not None and self.readings > self.fail_after:
                raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
            return self.readings

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        self._tick()
        n = self.per_device[h] = self.per_device.get(h, 0) + 1
        return SimpleNamespace(gpu=100 if n % 2 else 40)  # busy, then waiting on data, ...

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(total=self.total, used=(1000 + 10 * self.readings) * MIB)


def test_the_sampler_summarises_utilisation_and_memory_over_the_run():
    nvml = FakeNvml()
    with GpuSampler([0, 1], interval_s=0.02, nvml=nvml) as s:
        threading.Event().wait(0.3)
    got = s.summary()
    assert got["gpu_samples"] >= 5
    assert 40 < got["gpu_util_mean_pct"] < 100 and got["gpu_util_peak_pct"] == 100
    assert got["gpu_mem_total_mb"] == 160_000  # two cards' memory
    assert got["gpu_mem_peak_mb"] > got["gpu_mem_mean_mb"] > 2000  # memory grew over the run
    assert s._thread is not None and not s._thread.is_alive()  # the thread ends with the block


def test_a_gpu_lost_mid_run_stops_sampling_and_keeps_what_was_seen():
    with GpuSampler([0], interval_s=0.01, nvml=FakeNvml(fail_after=3)) as s:
        threading.Event().wait(0.2)
    assert s.summary()["gpu_samples"] == 3
    assert "GPU_IS_LOST" in s.error


def test_no_nvml_or_no_gpus_gives_no_gpu_fields():
    # The real pynvml on a machine without a driver: nvmlInit fails, nothing is sampled.
    assert gpu_telemetry.open_nvml() is None
    with GpuSampler([0]) as s:
        pass
    assert s.summary() == {}
    with GpuSampler([], nvml=FakeNvml()) as s:
        pass
    assert s.summary() == {}
    with GpuSampler([9], nvml=FakeNvml()) as s:  # an index NVML does not know
        pass
    assert s.summary() == {} and "no GPU 9" in s.error


@pytest.fixture
def fake_nvml(monkeypatch):
    nvml = FakeNvml(total_mib=81_559)
    monkeypatch.setattr(gpu_telemetry, "open_nvml", lambda: nvml)
    monkeypatch.setattr(gpu_telemetry, "SAMPLE_INTERVAL_S", 0.05)
    return nvml


def test_a_gpu_job_s_result_and_feedback_carry_its_gpu_telemetry(
    make_env, monkeypatch, tmp_path, fake_nvml
):
    """A run holding a GPU, through env.step: the harness sampled its GPU the whole run, and
    the telemetry is in the result and the feedback beside the CPU figures. The run is the fake
    sandbox's (0.3 s long): the runner's sampling is the subject, not training."""
    monkeypatch.setenv("NANOENV_GPU_IDS", "0")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a private lock folder for the GPU pool
    env = make_env(verify="none", gpus=1, sandbox=FakeSandbox(wall_s=0.3))
    env.reset(seed=0)
    obs, _, _, _, info = env.step({"diff": "", "base": 0})
    result = info["result"]
    assert result.outcome in (Outcome.OK, Outcome.MISSED_TARGET)
    tel = result.telemetry
    assert tel["gpu_samples"] >= 2 and tel["gpu_mem_total_mb"] == 81_559
    assert "peak_rss_mb" in tel  # the CPU figures stay
    assert "GPU utilisation" in obs["feedback"] and "of 81,559 MiB" in obs["feedback"]


def test_a_cpu_job_has_no_gpu_telemetry(make_env, fake_nvml):
    env = make_env(verify="none", sandbox=FakeSandbox())
    env.reset(seed=0)
    obs, _, _, _, info = env.step({"diff": "", "base": 0})
    assert not any(k.startswith("gpu_") for k in info["result"].telemetry)
    assert fake_nvml.readings == 0 and "GPU utilisation" not in obs["feedback"]
