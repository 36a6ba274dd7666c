"""Time a script through the environment: harness time, val losses and verification cost.

Usage: python benchmarks/baseline.py [--seeds 3] [--env ID] [--smoke] [--sandbox local]
                                     [--patch FILE] [--verify full|none]
Runs the baseline (or, with --patch, a candidate) once per harness seed and prints, for each:
the harness-timed training window, the script's own train_time, the warm-up before step 0,
the verified, reported and hidden val loss, and the share of the step that verification took. Then the
mean and spread of each. These are the numbers task.toml records.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import gymnasium as gym

import nanoenv  # noqa: F401  (registers the env ids)

COLUMNS = (
    "step_s",
    "run_s",
    "train_s",
    "reported_s",
    "untimed_s",
    "val_loss",
    "reported_val",
    "hidden_loss",
    "verify_share",
)


def _row(result, step_s: float) -> dict[str, float]:
    nan = math.nan
    return {
        "step_s": step_s,
        "run_s": result.wall_time_s,
        "train_s": result.train_time_s if result.train_time_s is not None else nan,
        "reported_s": result.reported_train_time_s
        if result.reported_train_time_s is not None
        else nan,
        "untimed_s": result.telemetry.get("untimed_s", nan),
        "val_loss": result.val_loss if result.val_loss is not None else nan,
        "reported_val": result.reported_val_loss if result.reported_val_loss is not None else nan,
        "hidden_loss": result.hidden_val_loss if result.hidden_val_loss is not None else nan,
        # everything in the step that is not the training run: mostly verification
        "verify_share": (step_s - result.wall_time_s) / step_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="nanoenv/Speedrun-Tiny-v0")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--sandbox", default="local")
    ap.add_argument("--verify", default="full")
    ap.add_argument("--patch", help="a diff against the baseline to run instead of it")
    args = ap.parse_args()
    diff = Path(args.patch).read_text() if args.patch else ""
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        env = gym.make(args.env, smoke=args.smoke, sandbox=args.sandbox, verify=args.verify,
                       runs_dir=runs, max_steps=args.seeds, disable_env_checker=True)  # fmt: skip
        env.reset(seed=0)
        for _ in range(args.seeds):
            t = time.monotonic()
            result = env.step({"diff": diff, "base": 0})[4]["result"]
            rows.append(_row(result, time.monotonic() - t))
            r = rows[-1]
            print(f"seed {result.seed:>10}  {result.outcome.value:<13} "
                  + "  ".join(f"{k} {r[k]:.4f}" for k in COLUMNS), flush=True)  # fmt: skip
        env.close()
    for key in COLUMNS:
        vals = [row[key] for row in rows if not math.isnan(row[key])]
        if not vals:  # e.g. hidden_loss under --verify none
            continue
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"{key:>13}: mean {statistics.mean(vals):.4f}  sd {sd:.4f}  "
              f"min {min(vals):.4f}  max {max(vals):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
