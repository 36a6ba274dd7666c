"""Vector envs and a random policy: the shape of an RL loop over nanoenv.

    python examples/rl_vector.py [--envs 2] [--steps 3] [--smoke]

gymnasium's AsyncVectorEnv runs the envs in processes (text observations included). The
random policy picks one of a few discrete moves (a hyperparameter nudge, or a no-op) and turns
it into a diff against each env's own current script.
"""

import argparse
import re

import gymnasium as gym
import numpy as np

import nanoenv  # noqa: F401
from nanoenv.actions.patching import make_diff

MOVES = [("learning_rate", 1.25), ("learning_rate", 0.8), ("num_iterations", 0.9), (None, 1.0)]


def to_diff(script, move):
    name, factor = move
    if name is None:
        return ""
    m = re.search(rf"^(    {name}: (int|float) = )([0-9.e+-]+)", script, re.M)
    if m is None:
        return ""
    value = float(m.group(3)) * factor
    text = str(max(1, round(value))) if m.group(2) == "int" else f"{value:.3g}"
    return make_diff(script, script[: m.start(3)] + text + script[m.end(3) :])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--runs-dir", default="nanoenv-runs")
    args = ap.parse_args()
    envs = gym.vector.AsyncVectorEnv([
        lambda: gym.make("nanoenv/Speedrun-Tiny-v0", smoke=args.smoke, runs_dir=args.runs_dir, max_steps=args.steps)
        for _ in range(args.envs)
    ])  # fmt: skip
    rng = np.random.default_rng(0)
    obs, _ = envs.reset(seed=list(range(args.envs)))
    total = np.zeros(args.envs)
    for t in range(args.steps):
        moves = [MOVES[i] for i in rng.integers(len(MOVES), size=args.envs)]
        actions = [to_diff(script, move) for script, move in zip(obs["script"], moves, strict=True)]
        obs, rewards, _, _, _ = envs.step(actions)
        total += rewards
        print(f"t={t}: moves {[m[0] or 'no-op' for m in moves]} outcomes {list(obs['outcome'])} "
              f"rewards {np.round(rewards, 4).tolist()}")  # fmt: skip
    print(f"returns {np.round(total, 4).tolist()}")
    envs.close()


if __name__ == "__main__":
    main()
