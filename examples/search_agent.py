"""A hill-climbing agent: perturb one hyperparameter at a time, keep what raises the reward.

    python examples/search_agent.py [--steps 8] [--smoke]

Each proposal is a patch: the current best script with one `name: type = value` line of its
Hyperparameters changed, sent as a unified diff against the best step (`base=`).
"""

import argparse
import random
import re

import gymnasium as gym

import nanoenv  # noqa: F401
from nanoenv import Action
from nanoenv.actions.patching import make_diff

MOVES = {  # hyperparameter: the factors to try
    "learning_rate": (0.7, 1.4),
    "num_iterations": (0.8, 1.25),
    "warmup_iters": (0.5, 2.0),
    "min_lr_frac": (0.5, 2.0),
}


def propose(script, rng):
    """The script with one hyperparameter scaled; (new script, description)."""
    name = rng.choice(sorted(MOVES))
    m = re.search(rf"^(    {name}: (int|float) = )([0-9.e+-]+)", script, re.M)
    if m is None:
        return None, name
    kind, value = m.group(2), float(m.group(3))
    new = value * rng.choice(MOVES[name])
    text = str(max(1, round(new))) if kind == "int" else f"{new:.3g}"
    return script[: m.start(3)] + text + script[m.end(3) :], f"{name}: {m.group(3)} -> {text}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs-dir", default="nanoenv-runs")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    env = gym.make(
        "nanoenv/Speedrun-Tiny-v0",
        smoke=args.smoke,
        runs_dir=args.runs_dir,
        max_steps=args.steps + 1,
    )
    obs, _ = env.reset(seed=args.seed)
    obs, best_reward, *_, info = env.step("")  # the baseline, as the first incumbent
    best_step, best_script = info["result"].step, obs["script"]
    print(f"baseline: reward {best_reward:+.4f}")
    for _ in range(args.steps):
        script, what = propose(best_script, rng)
        if script is None:
            continue
        obs, reward, _, truncated, info = env.step(
            Action(diff=make_diff(best_script, script), base=best_step)
        )
        result = info["result"]
        better = reward > best_reward
        print(f"step {result.step}: {what:<32} {result.outcome.value:<14} reward {reward:+.4f}"
              f"{'  <- new best' if better else ''}")  # fmt: skip
        if better:
            best_reward, best_step, best_script = reward, result.step, script
        if truncated:
            break
    print(f"best: step {best_step}, reward {best_reward:+.4f}")
    env.close()


if __name__ == "__main__":
    main()
