"""Paired baselines: the baseline timed on the same hardware as the candidates it is held against.

A measurement is cached under ``$NANOENV_CACHE_DIR/baselines/`` by a hardware fingerprint
(CPU model and cores, or GPU name, count and driver; the torch version; the sandbox), so it is
taken once per machine and reused. Rewards then compare times from one machine; observations
say which fingerprint a baseline time was measured on.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from nanoenv.types import TaskSpec


class PairedBaseline(BaseModel):
    """The baseline's numbers on one machine."""

    model_config = ConfigDict(extra="forbid")

    task: str
    smoke: bool
    fingerprint: dict[str, str]
    fingerprint_id: str
    val_loss: float
    train_time_s: float
    train_time_sd: float
    runs: int
    measured_at: str


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return f"{len(out)}x {out[0]}" if out else ""


# How the harness times and scores a run. A baseline measured under other rules is not a
# baseline for these: changing this string retires every cached measurement.
RULES = "2026-12-07: time to the job's exit or its end line; hidden-val loss where the task sets it"


def fingerprint(task: TaskSpec, sandbox: str) -> dict[str, str]:
    """What the baseline's time depends on, besides the script itself."""
    fp = {"torch": metadata.version("torch"), "sandbox": sandbox, "rules": RULES}
    if task.device == "cuda":
        fp["gpus"] = _gpus() or "none visible"
    else:
        fp["cpu"] = _cpu_model()
        fp["cores"] = str(min(os.cpu_count() or 1, int(task.limits.cpus or os.cpu_count() or 1)))
    return fp


def fingerprint_id(fp: dict[str, str]) -> str:
    """A short, stable id for a fingerprint."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]


def _path(task: TaskSpec, smoke: bool, fp: dict[str, str]) -> Path:
    from nanoenv.data import cache_dir

    return (
        cache_dir()
        / "baselines"
        / f"{task.id}{'-smoke' if smoke else ''}"
        / f"{fingerprint_id(fp)}.json"
    )


def load_paired(task: TaskSpec, smoke: bool, sandbox: str) -> PairedBaseline | None:
    """The cached baseline for this task on this machine, if one was measured."""
    path = _path(task, smoke, fingerprint(task, sandbox))
    try:
        return PairedBaseline.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None


def measure(
    env_id: str, *, smoke: bool = False, sandbox: str = "local", runs: int = 3, **env_kwargs: Any
) -> PairedBaseline:
    """Run the baseline ``runs`` times here (verified, harness-timed) and cache the result."""
    import gymnasium as gym

    import nanoenv  # noqa: F401  (registers the ids)

    env = gym.make(env_id, smoke=smoke, sandbox=sandbox, max_steps=runs, disable_env_checker=True,
                   paired_baseline=False, **env_kwargs)  # fmt: skip
    try:
        env.reset(seed=0)
        results = [env.step({"diff": "", "base": 0})[4]["result"] for _ in range(runs)]
    finally:
        env.close()
    good = [
        r
        for r in results
        if r.val_loss is not None and r.train_time_s is not None and r.verdict.verified
    ]
    if not good:
        raise RuntimeError(f"no verified baseline run: {[r.message for r in results]}")
    task = env.unwrapped.task
    fp = fingerprint(task, sandbox)
    times = [r.train_time_s for r in good]
    paired = PairedBaseline(
        task=task.id, smoke=smoke, fingerprint=fp, fingerprint_id=fingerprint_id(fp),
        val_loss=statistics.fmean(r.val_loss for r in good), train_time_s=statistics.fmean(times),
        train_time_sd=statistics.stdev(times) if len(times) > 1 else 0.0, runs=len(good),
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )  # fmt: skip
    path = _path(task, smoke, fp)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(paired.model_dump_json(indent=2) + "\n")
    return paired
