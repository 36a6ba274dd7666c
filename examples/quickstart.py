"""Quickstart: make the env, reset, send one patch, print the observation.

python examples/quickstart.py [--smoke]
"""

import argparse
from pathlib import Path

import gymnasium as gym

import nanoenv  # noqa: F401  (registers the env ids)

ap = argparse.ArgumentParser()
ap.add_argument("--smoke", action="store_true", help="the few-seconds size")
ap.add_argument("--runs-dir", default="nanoenv-runs")
args = ap.parse_args()

env = gym.make("nanoenv/Speedrun-Tiny-v0", smoke=args.smoke, runs_dir=args.runs_dir)
obs, info = env.reset(seed=0)
print(obs["feedback"])  # the brief: goal, target, rules, budget

patch = (Path(__file__).parent / "patches" / "relu2.diff").read_text()
obs, reward, terminated, truncated, info = env.step(patch)
print(obs["feedback"])  # what happened, verified numbers, the curve
print(
    f"outcome={obs['outcome']} val_loss={float(obs['val_loss']):.4f} "
    f"train_time_s={float(obs['train_time_s']):.2f} reward={reward:+.4f}"
)
env.close()
