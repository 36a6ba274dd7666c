"""Where a smoke step's time goes in the local sandbox: the script alone, the training job, the
verifier's job, the harness's own work, and the imports every job pays.

The same smoke-size script runs alternately (a) directly, `python train.py` in a subprocess with
the contract's environment and no harness, and (b) as an env step (patch policing, sandbox,
streaming, parsing, verification, records). Runs alternate so machine noise hits both alike.
The env's sandbox is the local one, wrapped to time each job it runs: a step runs the training
job (the one with an end line) and, at verify="full", the verifier's.

Usage: python benchmarks/step_overhead.py [--env nanoenv/Speedrun-Tiny-v1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import gymnasium as gym

import nanoenv  # noqa: F401
from nanoenv.data import prepare
from nanoenv.sandbox.local import LocalSandbox
from nanoenv.tasks import DEFAULT_TASK, NAMESPACE, baseline_script, load_task, smoke_task
from nanoenv.types import Job, JobResult


class TimedSandbox(LocalSandbox):
    """The local sandbox, keeping each job's wall time by kind ("train" or "verify")."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def run(self, job: Job, on_line=None, cancel=None) -> JobResult:  # type: ignore[override]
        t = time.monotonic()
        result = super().run(job, on_line, cancel)
        with self._lock:
            self.times.append(("train" if job.end_line else "verify", time.monotonic() - t))
        return result

    def take(self) -> dict[str, float]:
        with self._lock:
            found = {
                kind: sum(s for k, s in self.times if k == kind) for kind in ("train", "verify")
            }
            self.times.clear()
        return found


def run_direct(script: Path, data_dir: Path, out_dir: Path, overrides: dict, threads: int) -> float:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),  # the cores the sandbox gives the job
        "MKL_NUM_THREADS": str(threads),
        "NANOENV_DATA_DIR": str(data_dir),
        "NANOENV_OUT_DIR": str(out_dir),
        "NANOENV_SEED": "0",
        "NANOENV_OVERRIDES": json.dumps(overrides),
        "PYTHONUNBUFFERED": "1",
    }
    t = time.monotonic()
    subprocess.run(
        [sys.executable, script.name], cwd=script.parent, env=env, check=True, capture_output=True
    )
    return time.monotonic() - t


def import_time(code: str) -> float:
    """Wall seconds of a fresh interpreter running ``code`` (python's own start included)."""
    t = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tempfile.gettempdir())
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default=NAMESPACE + DEFAULT_TASK)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--verify", default="full", choices=["full", "log", "none"])
    args = ap.parse_args()
    task = load_task(args.env.removeprefix(NAMESPACE))
    assert task.smoke is not None
    smoke = smoke_task(task)
    data_dir = prepare(smoke.data.dataset) / "public"
    threads = int(smoke.limits.cpus or os.cpu_count() or 1)
    rows: dict[str, list[float]] = {k: [] for k in ("direct", "step", "train", "verify")}
    imports = {"python": [], "import torch": [], "+ torch._dynamo": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        script = work / "train.py"
        script.write_text(baseline_script(task))
        sandbox = TimedSandbox()
        env = gym.make(args.env, smoke=True, sandbox=sandbox, verify=args.verify,
                       runs_dir=work / "runs", max_steps=args.repeats, disable_env_checker=True)  # fmt: skip
        env.reset(seed=0)
        for i in range(args.repeats):
            rows["direct"].append(
                run_direct(script, data_dir, work / "out", task.smoke.overrides, threads)
            )
            t = time.monotonic()
            env.step("")
            rows["step"].append(time.monotonic() - t)
            jobs = sandbox.take()
            rows["train"].append(jobs["train"])
            rows["verify"].append(jobs["verify"])
            imports["python"].append(import_time("pass"))
            imports["import torch"].append(import_time("import torch"))
            imports["+ torch._dynamo"].append(import_time("import torch, torch._dynamo"))
            print(f"run {i}: direct {rows['direct'][-1]:.3f} s  step {rows['step'][-1]:.3f} s  "
                  f"(training job {jobs['train']:.3f} s, verifier job {jobs['verify']:.3f} s)",
                  flush=True)  # fmt: skip
        env.close()
    med = {k: statistics.median(v) for k, v in rows.items()}
    rest = statistics.median(
        s - a - b for s, a, b in zip(rows["step"], rows["train"], rows["verify"], strict=True)
    )
    print(f"{args.env}, smoke, verify={args.verify}, {args.repeats} steps (medians):")
    print(f"  direct run of the script   {med['direct']:.3f} s")
    print(f"  env step                   {med['step']:.3f} s  (ratio to direct {med['step'] / med['direct']:.2f})")  # fmt: skip
    print(f"    training job             {med['train']:.3f} s  (minus direct {med['train'] - med['direct']:+.3f} s: it ends at its end line, before the interpreter's teardown)")  # fmt: skip
    print(f"    verifier job             {med['verify']:.3f} s")
    print(f"    the harness's own work   {rest:.3f} s  (step - both jobs)")
    py = statistics.median(imports["python"])
    torch_s = statistics.median(imports["import torch"])
    dynamo_s = statistics.median(imports["+ torch._dynamo"])
    print(f"  a fresh python             {py:.3f} s")
    print(f"  import torch               {torch_s - py:.3f} s  (every job pays it)")
    print(f"  torch._dynamo on top       {dynamo_s - torch_s:.3f} s  (any script that builds an "
          "optimizer pays it: Optimizer.add_param_group imports it)")  # fmt: skip


if __name__ == "__main__":
    main()
