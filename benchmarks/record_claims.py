"""Two record claims on the tiny track, as a user makes them: one that should pass, one not.

1. An episode runs the baseline and the speedrun's Muon patch (examples/patches/muon.diff).
2. `claim` of the Muon step: re-run against the baseline (the book's first record), interleaved.
3. `claim` of a no-op re-submission: the record's own script, run again and claimed against
   itself (once step 2 is the record).

With ``--history`` the episode is the speedrun's history instead, and the claim that should
pass is its last step (every idea stacked).

Prints each claim's means, p-values, verdict and wall time. Usage:
    python benchmarks/record_claims.py [--repeats 3] [--muon-steps 70] [--history] [--smoke] [--runs-dir DIR]

``--history`` first runs an episode of the speedrun's history (examples/history/, each patch on
the one before) under reward="frontier", and prints per step the best loss, the hypervolume,
the frontier reward and the record reward the same result earns (against the baseline, the
book's first record).

``--muon-steps`` sets the Muon patch's step count (the patch's own is 70, which lands on the
baseline's loss rather than below it: a claim needs the loss below the target at p < 0.01).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym

import nanoenv  # noqa: F401
from nanoenv.claims import claim

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--muon-steps", type=int, default=70)
    ap.add_argument(
        "--history", action="store_true", help="first, an episode of the history patches"
    )
    args = ap.parse_args()
    runs = Path(args.runs_dir or tempfile.mkdtemp(prefix="nanoenv-claims-"))
    if args.history:
        episode, last = history(runs, args.smoke)
        claims = (("the whole history over the baseline", last),
                  ("a no-op re-submission of the record", last + 1))  # fmt: skip
    else:
        episode = muon_episode(runs, args)
        claims = (("Muon over the baseline", 2), ("a no-op re-submission of the record", 3))
    for name, step in claims:
        t = time.monotonic()
        result = claim(f"{episode}/{step}", runs_dir=runs, repeats=args.repeats, seed=step)
        print(f"\n== {name} ({time.monotonic() - t:.0f} s wall)\n{result.summary()}")
    print(f"\nruns and the record book: {runs}")


def muon_episode(runs: Path, args: argparse.Namespace) -> str:
    """The baseline, Muon, and Muon again (base=2): the episode the claims are made from."""
    env = gym.make("nanoenv/Speedrun-Tiny-v0", smoke=args.smoke, runs_dir=runs,
                   paired_baseline=False, disable_env_checker=True)  # fmt: skip
    env.reset(seed=0)
    muon = (ROOT / "examples" / "patches" / "muon.diff").read_text()
    muon = muon.replace(
        "+    num_iterations: int = 70", f"+    num_iterations: int = {args.muon_steps}"
    )
    for action in ("", muon, {"diff": "", "base": 2}):
        r = env.step(action)[4]["result"]
        print(f"step {r.step}: {r.outcome.value} val {r.val_loss} time {r.train_time_s}")
    episode = env.unwrapped.episode_dir.name
    env.close()
    return episode


def history(runs: Path, smoke: bool) -> tuple[str, int]:
    """The history patches in one episode: best loss, hypervolume, frontier and record rewards;
    then the last stack once more (base=last), to re-submit. The episode and the last step."""
    from nanoenv.judging.rewards import beats_record

    env = gym.make("nanoenv/Speedrun-Tiny-v0", smoke=smoke, runs_dir=runs, reward="frontier",
                   paired_baseline=False, disable_env_checker=True)  # fmt: skip
    env.reset(seed=0)
    ctx = env.unwrapped.settings.reward_context
    print(f"{'step':<18} {'outcome':<14} {'val':>7} {'time s':>7} {'best':>7} {'hypervol':>9} "
          f"{'frontier':>9} {'record':>7}")  # fmt: skip
    for patch in ["", *sorted((ROOT / "examples" / "history").glob("*.diff"))]:
        action = patch.read_text() if patch else ""
        _, reward, _, _, info = env.step(action)
        r, p = info["result"], info["progress"]
        rec = beats_record(r.outcome, r.val_loss, r.train_time_s, r.curve, ctx)
        name = patch.stem if patch else "baseline"
        print(f"{name:<18} {r.outcome.value:<14} {r.val_loss or float('nan'):>7.4f} "
              f"{r.train_time_s or float('nan'):>7.2f} {p['best_val_loss']:>7.4f} "
              f"{p['hypervolume']:>9.5f} {reward:>9.5f} {rec:>7.3f}")  # fmt: skip
    last = r.step
    env.step({"diff": "", "base": last})
    episode = env.unwrapped.episode_dir.name
    env.close()
    return episode, last


if __name__ == "__main__":
    main()
