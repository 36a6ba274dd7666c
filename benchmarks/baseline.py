"""Time the tiny track's baseline through the environment: wall time and final val loss per seed.

Usage: python benchmarks/baseline.py [--seeds 3] [--env nanoenv/Speedrun-Tiny-v0] [--smoke]
Prints one row per seed, then the mean and spread. These are the numbers task.toml records.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import gymnasium as gym

import nanoenv  # noqa: F401  (registers the env ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="nanoenv/Speedrun-Tiny-v0")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        env = gym.make(args.env, smoke=args.smoke, runs_dir=runs, max_steps=args.seeds)
        env.reset(seed=0)
        for _ in range(args.seeds):
            t = time.monotonic()
            _, _, _, _, info = env.step("")
            step_s = time.monotonic() - t
            r = info["result"]
            rows.append(
                (r.seed, step_s, r.wall_time_s, r.train_time_s, r.val_loss, r.outcome.value)
            )
            print(
                f"seed {r.seed:>10}  step {step_s:6.2f} s  job wall {r.wall_time_s:6.2f} s  "
                f"train {r.train_time_s:6.2f} s  val_loss {r.val_loss:.4f}  {r.outcome.value}",
                flush=True,
            )
        env.close()
    for name, col in (("step wall s", 1), ("job wall s", 2), ("train s", 3), ("val_loss", 4)):
        vals = [row[col] for row in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(
            f"{name:>12}: mean {statistics.mean(vals):.4f}  sd {sd:.4f}  "
            f"min {min(vals):.4f}  max {max(vals):.4f}"
        )


if __name__ == "__main__":
    main()
