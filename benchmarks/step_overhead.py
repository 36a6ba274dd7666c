"""Step overhead of the local sandbox: a step's wall time minus the script's own run time.

The same smoke-size script runs alternately (a) directly, `python train.py` in a subprocess with
the contract's environment and no harness, and (b) as an env step (patch policing, sandbox,
streaming, parsing, records). Runs alternate so machine noise hits both alike.

Usage: python benchmarks/step_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym

import nanoenv  # noqa: F401
from nanoenv.data import prepare
from nanoenv.tasks import baseline_script, load_task


def run_direct(script: Path, data_dir: Path, out_dir: Path, overrides: dict) -> float:
    env = {
        **os.environ,
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    task = load_task("tiny")
    assert task.smoke is not None
    data_dir = prepare("tiny") / "public"
    direct, step, job = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        script = work / "train.py"
        script.write_text(baseline_script(task))
        env = gym.make("nanoenv/Speedrun-Tiny-v0", smoke=True, runs_dir=work / "runs",
                       max_steps=args.repeats, disable_env_checker=True)  # fmt: skip
        env.reset(seed=0)
        for i in range(args.repeats):
            direct.append(run_direct(script, data_dir, work / "out", task.smoke.overrides))
            t = time.monotonic()
            _, _, _, _, info = env.step("")
            step.append(time.monotonic() - t)
            job.append(info["result"].wall_time_s)
            print(f"run {i}: direct {direct[-1]:.3f} s  step {step[-1]:.3f} s  "
                  f"(sandbox job {job[-1]:.3f} s)  overhead {step[-1] - direct[-1]:+.3f} s", flush=True)  # fmt: skip
        env.close()
    over = [s - d for s, d in zip(step, direct, strict=True)]
    book = [s - j for s, j in zip(step, job, strict=True)]
    print(f"median direct run       {statistics.median(direct):.3f} s")
    print(f"median env step         {statistics.median(step):.3f} s")
    print(f"median step overhead    {statistics.median(over):+.3f} s  (step - direct; goal < 1 s)")
    print(f"median harness bookkeeping {statistics.median(book):+.3f} s  (step - sandbox job)")
    print(
        f"ratio step/direct       {statistics.median(s / d for s, d in zip(step, direct, strict=True)):.3f}"
    )


if __name__ == "__main__":
    main()
