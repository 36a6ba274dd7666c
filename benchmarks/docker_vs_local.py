"""The docker sandbox against the local one, on the same steps: final val loss and overhead.

Runs the baseline with the same harness seed in both sandboxes, alternating local and docker
so machine noise hits both alike. Prints each pair, then the docker step overhead (docker
step wall time minus local step wall time) and whether the final losses agree.

Usage: python benchmarks/docker_vs_local.py [--env ID] [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import gymnasium as gym

import nanoenv  # noqa: F401
from nanoenv.tasks import DEFAULT_TASK, NAMESPACE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default=NAMESPACE + DEFAULT_TASK, help="default: the newest CPU track")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        envs = {
            sb: gym.make(
                args.env,
                sandbox=sb,
                smoke=args.smoke,
                runs_dir=runs,
                max_steps=args.repeats,
                disable_env_checker=True,
            )
            for sb in ("local", "docker")
        }
        for env in envs.values():
            env.reset(seed=0)  # the same harness seeds, step by step, in both
        for i in range(args.repeats):
            row = {}
            for sb, env in envs.items():
                t = time.monotonic()
                result = env.step("")[4]["result"]
                row[sb] = (time.monotonic() - t, result.val_loss, result.seed, result.outcome.value)
            rows.append(row)
            (lt, lv, seed, lo), (dt, dv, _, do) = row["local"], row["docker"]
            print(f"run {i} seed {seed}: local {lt:6.2f} s val {lv:.4f} {lo} | docker {dt:6.2f} s "
                  f"val {dv:.4f} {do} | overhead {dt - lt:+.2f} s", flush=True)  # fmt: skip
        for env in envs.values():
            env.close()
    over = [r["docker"][0] - r["local"][0] for r in rows]
    same = all(r["docker"][1] == r["local"][1] for r in rows)
    print(f"median docker overhead {statistics.median(over):+.2f} s per step "
          f"(median step: local {statistics.median(r['local'][0] for r in rows):.2f} s, "
          f"docker {statistics.median(r['docker'][0] for r in rows):.2f} s)")  # fmt: skip
    print(f"final val loss identical in every pair: {same}")
    if not same:
        diffs = [abs(r["docker"][1] - r["local"][1]) for r in rows]
        print(f"largest |docker - local| val loss: {max(diffs):.4f}")


if __name__ == "__main__":
    main()
