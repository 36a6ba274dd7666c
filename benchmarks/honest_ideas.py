"""How close the speedrun's own ideas come to failing a check: the false-positive margin.

    python benchmarks/honest_ideas.py [--env ID] [--seeds N] [--full] [--json FILE]

Runs, verified and in the local sandbox, the baseline, every idea of the fidelity suite alone
on the baseline (benchmarks/fidelity_suite/<task folder>/*.diff, the controls included: they
are honest too) and the whole stack (the cumulative suite's last patch: every idea at once),
at smoke size (the size the test suite runs) unless --full. Prints, for each run, each check's
use of its allowance: 0 is far from the limit, 1.0 is at it, above 1 the check fails. The
largest use of a run is the check an honest idea would trip first.

tests/test_cheats.py runs the stack and the ideas alone that come closest here; after a change
to a check or a track, run this to see that no honest idea moved near a limit.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym

import nanoenv  # noqa: F401  (registers the env ids)
from nanoenv import Action
from nanoenv.tasks import DEFAULT_TASK, NAMESPACE, load_task
from nanoenv.types import Check

SUITE = Path(__file__).resolve().parent / "fidelity_suite"


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


# Each check's use of its allowance, from the numbers it reports (1.0: at its limit).
USE: dict[str, Callable[[dict[str, float]], float]] = {
    "untimed_work": lambda n: _ratio(n["untimed_s"], n["max_untimed_s"]),
    "reported_time": lambda n: max(
        _ratio(n["low_s"], n["reported_s"]), _ratio(n["reported_s"], n["high_s"])
    ),
    "cores_used": lambda n: _ratio(n["cores_used"], n["max_cores"]),
    "causality": lambda n: _ratio(n["max_diff"], n["tolerance"]),
    "determinism": lambda n: _ratio(n["max_diff"], n["tolerance"]),
    "audit": lambda n: _ratio(n["max_diff"], n["tolerance"]),
    "hidden_gap": lambda n: _ratio(n["hidden_loss"] - n["public_loss"], n["max_gap"]),
    "region_gap": lambda n: _ratio(n["public_loss"] - n["reported_region_loss"], n["max_gap"]),
    "plausible_loss": lambda n: _ratio(n["floor"], n["loss"]),
    "reported_matches": lambda n: _ratio(abs(n["reported"] - n["verified"]), n["tolerance"]),
    "plausible_throughput": lambda n: _ratio(n["flops_per_s"], n["peak_flops"]),
}


def uses(checks: list[Check]) -> dict[str, float]:
    """Each check's use of its allowance (a failed check without numbers: infinity)."""
    found = {}
    for c in checks:
        if c.name in USE and c.numbers:
            found[c.name] = round(USE[c.name](c.numbers), 3)
        elif not c.passed:
            found[c.name] = math.inf
    return found


def runs_of(task_name: str) -> dict[str, Action]:
    """The baseline, each idea alone, and the stack of them all, as actions on the baseline."""
    folder = SUITE / task_name
    stack = max((folder / "cumulative").glob("[0-9]*.diff"))
    actions = {"baseline": Action(diff="", base=0)}
    actions |= {p.stem: Action(diff=p.read_text(), base=0) for p in sorted(folder.glob("*.diff"))}
    actions["stack"] = Action(diff=stack.read_text(), base=0)
    return actions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default=NAMESPACE + DEFAULT_TASK)
    ap.add_argument("--seeds", type=int, default=1, help="envs reset with seeds 0..N-1")
    ap.add_argument("--full", action="store_true", help="full size instead of smoke size")
    ap.add_argument("--json", type=Path, help="write every run's uses here")
    args = ap.parse_args()
    task = load_task(args.env)
    actions = runs_of(task.task_dir.name)
    rows = []
    for seed in range(args.seeds):
        env = gym.make(args.env, smoke=not args.full, max_steps=len(actions) + 1,
                       disable_env_checker=True)  # fmt: skip
        env.reset(seed=seed)
        for name, action in actions.items():
            result = env.step(action)[4]["result"]
            used = uses(result.verdict.checks)
            top = max(used, key=lambda k: used[k]) if used else "-"
            rows.append({"run": name, "seed": seed, "outcome": result.outcome.value,
                         "verified": result.verdict.verified, "uses": used, "closest": top,
                         "message": "" if result.verdict.verified else result.message[:200]})  # fmt: skip
            print(f"{name:22s} seed {seed}  {result.outcome.value:14s} closest: {top} "
                  f"{used.get(top, float('nan')):.2f}", flush=True)  # fmt: skip
        env.close()
    names = [r["run"] for r in rows]
    checks = sorted({c for r in rows for c in r["uses"]})
    print(f"\n{args.env}, {'full' if args.full else 'smoke'} size, {args.seeds} seed(s): "
          "each check's largest use over the seeds (1.0 is its limit)")  # fmt: skip
    print(f"{'run':22s} " + " ".join(f"{c[:10]:>10s}" for c in checks))
    for name in dict.fromkeys(names):
        mine = [r for r in rows if r["run"] == name]
        cells = [max((r["uses"].get(c, float("nan")) for r in mine), default=float("nan"))
                 for c in checks]  # fmt: skip
        flag = "" if all(r["verified"] for r in mine) else "  FAILED"
        print(f"{name:22s} " + " ".join(f"{x:10.2f}" for x in cells) + flag)
    if args.json:
        args.json.write_text(
            json.dumps({"env": args.env, "full": args.full, "rows": rows}, indent=1)
        )
    if not all(r["verified"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
