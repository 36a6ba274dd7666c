"""Replay the NanoGPT speedrun's history on the tiny track: each idea a patch, in order.

    python examples/replay_speedrun_history.py [--repeats N] [--json FILE] [--smoke] [--limit K]

Step 0 is the baseline; then examples/history/*.diff, each on top of the one before (rotary
embeddings, Muon, ReLU², QK-norm, untied head, logit softcap). Every step is run `--repeats`
times (verified, harness-timed); the table shows the mean val loss (the one the reward uses:
on the tiny track, hidden val), the reward, the mean time to the target on the script's own
curve (harness time at the first reported val point at or below the task's reported-loss
target; the hidden loss is measured only at the end), and the gain over the step before. The
JSON is a list of steps (the first the baseline) with `outcome`, `val_loss`, `reward` and
`train_time_s`; the PNG is the (time, loss) frontier.
"""

import argparse
import json
import statistics
from pathlib import Path

import gymnasium as gym

import nanoenv  # noqa: F401
from nanoenv import Action
from nanoenv.records.plots import plot_frontier

HISTORY = sorted((Path(__file__).parent / "history").glob("*.diff"))


def time_to_target(result, target):
    """Harness seconds from the process's start to the first val point at or below the target."""
    for p in result.val_curve:
        if p.val_loss <= target and p.received_s is not None:
            return p.received_s
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", help="write the steps here")
    ap.add_argument("--png", default="speedrun_history_frontier.png")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--limit", type=int, help="only the first K ideas")
    ap.add_argument("--sandbox", default="local")
    ap.add_argument("--runs-dir", default="nanoenv-runs")
    args = ap.parse_args()

    env = gym.make("nanoenv/Speedrun-Tiny-v0", smoke=args.smoke, sandbox=args.sandbox, runs_dir=args.runs_dir,
                   max_steps=1000, disable_env_checker=True)  # fmt: skip
    env.reset(seed=0)
    target = env.unwrapped.settings.target_val_loss  # what the reward's loss is held to
    curve_target = env.unwrapped.task.target_val_loss  # the same, on the script's own val tokens
    ideas = [("baseline", "")] + [(p.stem, p.read_text()) for p in HISTORY[: args.limit]]
    rows, prev = [], 0
    for name, diff in ideas:
        # An idea's first run applies its patch to the previous idea's script; repeats rerun it.
        first = env.step(Action(diff=diff, base=prev))[4]["result"]
        runs = [first] + [
            env.step(Action(diff="", base=first.step))[4]["result"] for _ in range(args.repeats - 1)
        ]
        prev = first.step
        good = [x for x in runs if x.val_loss is not None]
        ttt = [t for t in (time_to_target(x, curve_target) for x in good) if t is not None]
        rows.append({
            "idea": name, "outcome": runs[0].outcome.value, "runs": len(runs),
            "val_loss": statistics.fmean(x.val_loss for x in good) if good else None,
            "val_loss_sd": statistics.stdev(x.val_loss for x in good) if len(good) > 1 else 0.0,
            "train_time_s": statistics.fmean(x.train_time_s for x in good if x.train_time_s) if good else None,
            "time_to_target_s": statistics.fmean(ttt) if len(ttt) == len(good) and ttt else None,
            "reward": statistics.fmean(x.reward for x in runs),
            "verified": all(x.verdict.verified for x in runs),
        })  # fmt: skip
        if name == "baseline" and rows[-1]["time_to_target_s"] is None:
            # The target is the baseline's mean final loss: it reaches it, by definition, at the
            # end of its run (some seeds just above, some just below).
            rows[-1]["time_to_target_s"] = rows[-1]["train_time_s"]
        print(f"{name}: {runs[0].outcome.value}, val_loss {rows[-1]['val_loss']}", flush=True)
    env.close()

    print(
        f"\n{'idea':<18} {'outcome':<14} {'val_loss':>9} {'reward':>7} {'time s':>8} {'to target s':>12} {'gain':>7} verified"
    )
    prev = None
    for row in rows:
        t = row["time_to_target_s"]
        gain = f"{prev / t:6.2f}x" if prev and t else "      -"
        print(f"{row['idea']:<18} {row['outcome']:<14} {row['val_loss'] or float('nan'):9.4f} {row['reward']:+7.3f} "
              f"{row['train_time_s'] or float('nan'):8.2f} {t if t else float('nan'):12.2f} {gain} "
              f"{'yes' if row['verified'] else 'no'}")  # fmt: skip
        prev = t or prev
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}")
    pts = [
        (r["idea"], r["train_time_s"], r["val_loss"])
        for r in rows
        if r["train_time_s"] and r["val_loss"]
    ]
    print(
        f"wrote {plot_frontier(pts, Path(args.png), target=target, title='the speedrun history, tiny track')}"
    )


if __name__ == "__main__":
    main()
