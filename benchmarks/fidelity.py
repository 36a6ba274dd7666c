"""Does progress on a CPU track predict progress in the speedrun? Run the fidelity suite.

    python benchmarks/fidelity.py [--env ID|DIR] [--seeds N] [--json FILE] [--only a,b] [--verify none]
                                  [--jobs J] [--set KEY=VALUE ...] [--timeout-s S]
                                  [--cumulative]
    python benchmarks/fidelity.py --markdown FILE   (the table of a saved --json, for the README)

Runs the baseline and every idea of benchmarks/fidelity_suite/ideas.toml (each a patch on the
baseline alone, from benchmarks/fidelity_suite/<task folder>/) once per seed, through the
environment (local sandbox, harness-timed), seed-major so that a slow spell of the machine hits
every idea of a seed alike. Runs are paired by seed: the same seed gives the baseline and each
idea the same initialisation draw and the same data order.

Prints per idea: the effect on the track's final val loss (idea - baseline, mean over seeds)
with its standard error, the record's gain, and whether the two agree in direction; then the
two other objectives, each as a gain log(baseline / idea) paired by seed: time to target
(harness seconds to the first val point at or below the target) and tokens to target (the
steps objective: training tokens at that point); and for the suite: the agreement rate, the
Spearman rank correlation of the track's gains with the records' gains, and the noise floor.
nanoenv/fidelity.py says how each is computed. --json writes all of it, with every run.

--cumulative replays the record history instead: the n-th idea on the stack of the n - 1 before
it (fidelity_suite/<task folder>/cumulative/, from write_patches.py --cumulative), its effect
the stack's loss minus the previous stack's, paired by seed. A record measured that margin (an
idea on top of every record before it); alone on the baseline an idea found late, on a stack
that already had its neighbours, can gain many times its record's share.

--jobs 2 runs two at a time on one core each: about 1.3x the throughput on 2 cores, the same
losses and tokens (a run's numbers do not depend on its thread count), but every time then
shares the machine with a neighbour, so the time objective is noisier.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gymnasium as gym

import nanoenv  # noqa: F401  (registers the env ids)
from nanoenv.fidelity import Idea, Paired, agrees, load_ideas, paired, summarize
from nanoenv.tasks import load_task, smoke_task, task_ids
from nanoenv.types import RunResult

SUITE = Path(__file__).resolve().parent / "fidelity_suite"


def newest_cpu_track() -> str:
    """The CPU task with the highest version (Speedrun-Tiny-v0, -v1, ...)."""
    cpu = [t for t in task_ids() if load_task(t).device == "cpu"]
    return max(cpu, key=lambda t: (t.rsplit("-v", 1)[0], int(t.rsplit("-v", 1)[1])))


def time_to_target(result: RunResult, target: float) -> float | None:
    """Harness seconds (from the process's start) to the first val point at or below the target."""
    for p in result.val_curve:
        if p.val_loss is not None and p.val_loss <= target:
            return p.received_s
    return None


def measure(result: RunResult, target: float) -> dict[str, Any]:
    """What the suite reads from one run."""
    t = time_to_target(result, target)
    tokens = result.tokens_to_target  # the steps objective, as the runner measured it
    loss = (
        result.val_loss if result.val_loss is not None and math.isfinite(result.val_loss) else None
    )
    return {
        "outcome": result.outcome.value, "seed": result.seed, "val_loss": loss,
        "train_time_s": result.train_time_s, "time_to_target_s": t, "tokens_to_target": tokens,
    }  # fmt: skip


def ratio_gain(base: dict[int, dict], idea: dict[int, dict], key: str) -> dict[str, Any]:
    """log(baseline / idea) of `key`, paired by seed, over the seeds where the baseline has one.

    An idea that never got there (where the baseline did) loses: its gain is -inf that seed.
    """
    logs: list[float] = []
    for s, b in base.items():
        if b[key] is None or s not in idea:
            continue
        v = idea[s][key]
        logs.append(math.log(b[key] / v) if v else -math.inf)
    finite = [x for x in logs if math.isfinite(x)]
    gain = statistics.fmean(logs) if logs else None
    return {
        "gain": None if gain is None or not math.isfinite(gain) else gain,
        "never": len(logs) - len(finite),  # seeds where the idea did not reach the target
        "se": statistics.stdev(finite) / math.sqrt(len(finite)) if len(finite) > 1 and len(finite) == len(logs) else None,
        "sign": None if gain is None else (1 if gain > 0 else -1 if gain < 0 else 0),
    }  # fmt: skip


def objective_summary(ideas: list[Idea], gains: dict[str, dict]) -> dict[str, Any]:
    """Agreement of one ratio objective over the ideas where it is defined."""
    judged = [(i, gains[i.name]) for i in ideas if gains[i.name]["sign"] is not None]
    agree = [agrees(i, g["sign"]) for i, g in judged]
    return {"agreement": sum(agree) / len(agree) if agree else None, "judged": len(agree)}


def suite_patches(
    folder: Path, ideas: list[Idea], cumulative: bool
) -> tuple[dict[str, Path], dict[str, str]]:
    """Each idea's patch, and the run its effect is measured against.

    Alone, every idea is a patch on the baseline, measured against the baseline. In the
    cumulative replay (write_patches.py --cumulative) the n-th idea's patch is the stack of
    ideas 1..n, measured against the stack of 1..n-1: the idea's margin on top of its
    predecessors, as a record measured it; a control is measured on top of the whole stack.
    """
    if not cumulative:
        return {i.name: folder / f"{i.name}.diff" for i in ideas}, {
            i.name: "baseline" for i in ideas
        }
    chain = [i.name for i in ideas if not i.control]
    controls = [i.name for i in ideas if i.control]
    patches = {n: folder / "cumulative" / f"{k:02d}-{n}.diff" for k, n in enumerate(chain, 1)}
    patches |= {n: folder / "cumulative" / f"control-{n}.diff" for n in controls}
    reference = {n: (chain[k - 1] if k else "baseline") for k, n in enumerate(chain)}
    reference |= {n: chain[-1] if chain else "baseline" for n in controls}
    return patches, reference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--env",
        default=None,
        help="a task id or a candidate track's folder (default: the newest CPU track)",
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", help="write the summary and every run here")
    ap.add_argument("--only", help="comma-separated idea names (default: the whole suite)")
    ap.add_argument("--verify", default="none", help="none (the reported loss) or full")
    ap.add_argument("--sandbox", default="local")
    ap.add_argument("--smoke", action="store_true", help="smoke-size runs (tests)")
    ap.add_argument("--runs-dir", help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each on cores / jobs)")
    ap.add_argument("--markdown", metavar="FILE", help="print a saved --json as a markdown table")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a hyperparameter of every run (NANOENV_OVERRIDES), e.g. "
                    "num_iterations=4800: the suite at another budget")  # fmt: skip
    ap.add_argument("--timeout-s", type=float, help="each run's deadline (default: the task's)")
    ap.add_argument("--cumulative", action="store_true",
                    help="the cumulative replay: each idea on the stack of every idea before it, "
                    "its effect measured against that stack (a record's own comparison)")  # fmt: skip
    args = ap.parse_args()
    if args.cumulative and args.only:
        sys.exit("--cumulative replays the whole suite: every stack needs the ideas before it")
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    args.env = args.env or newest_cpu_track()
    task = load_task(args.env)
    ideas = load_ideas(SUITE / "ideas.toml")
    if args.only:
        wanted = set(args.only.split(","))
        if unknown := wanted - {i.name for i in ideas}:
            sys.exit(f"unknown ideas: {', '.join(sorted(unknown))}")
        ideas = [i for i in ideas if i.name in wanted]
    patches, reference = suite_patches(SUITE / task.task_dir.name, ideas, args.cumulative)
    if missing := [n for n, p in patches.items() if not p.is_file()]:
        sys.exit(
            f"{task.id} has no patch for: {', '.join(missing)} (run fidelity_suite/write_patches.py)"
        )

    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="nanoenv-fidelity-")
    overrides: dict[str, Any] = {}
    if args.set and args.smoke:
        sys.exit("--set changes the full-size runs; a smoke size has its own hyperparameters")
    sets = dict(kv.split("=", 1) for kv in args.set)
    if sets:  # every run, baseline and ideas alike, at these hyperparameters
        overrides["env"] = {**task.env, "NANOENV_OVERRIDES": json.dumps(sets)}
    if args.timeout_s:
        overrides["timeout_s"] = args.timeout_s
    if args.jobs > 1 and task.limits.cpus:  # each run on its share of the cores, side by side
        overrides["limits"] = {
            **task.limits.model_dump(),
            "cpus": max(1.0, task.limits.cpus / args.jobs),
        }
    local = threading.local()
    made: list[Any] = []

    def env() -> Any:
        if not hasattr(local, "env"):
            kwargs = dict(verify=args.verify, sandbox=args.sandbox, smoke=args.smoke, runs_dir=runs_dir,
                          max_steps=10**6, max_in_flight=1, **overrides)  # fmt: skip
            if f"nanoenv/{task.id}" in gym.registry:
                local.env = gym.make(f"nanoenv/{task.id}", disable_env_checker=True, **kwargs)
            else:  # a candidate track's folder (--env DIR): not registered, made directly
                from nanoenv.env import SpeedrunEnv

                local.env = SpeedrunEnv(task=args.env, **kwargs)
            made.append(local.env)
        return local.env

    # The target on the script's own curve: the task's reported-loss target.
    target = (smoke_task(task) if args.smoke else task).target_val_loss
    runs: dict[str, dict[int, dict]] = {"baseline": {}, **{i.name: {} for i in ideas}}

    def one(s: int, name: str) -> None:
        e = env()
        e.reset(seed=s)  # the same seed draw for every idea: runs pair by seed
        diff = "" if name == "baseline" else patches[name].read_text()
        result = e.step({"diff": diff})[4]["result"]
        runs[name][s] = m = measure(result, target)
        loss = "-" if m["val_loss"] is None else f"{m['val_loss']:.4f}"
        print(f"seed {s} {name:<20} {m['outcome']:<14} val_loss {loss}  "
              f"time {m['train_time_s'] or 0:.1f}s  tokens to target {m['tokens_to_target']}", flush=True)  # fmt: skip

    started = time.monotonic()
    with ThreadPoolExecutor(args.jobs) as pool:
        for f in [pool.submit(one, s, name) for s in range(args.seeds) for name in runs]:
            f.result()
    for e in made:
        e.close()
    elapsed = time.monotonic() - started

    def losses(name: str) -> dict[int, float | None]:
        return {s: r["val_loss"] for s, r in runs[name].items()}

    effects: dict[str, Paired] = {
        i.name: paired(losses(reference[i.name]), losses(i.name)) for i in ideas
    }
    summary = summarize(ideas, effects)
    time_gains = {
        i.name: ratio_gain(runs[reference[i.name]], runs[i.name], "time_to_target_s") for i in ideas
    }
    step_gains = {
        i.name: ratio_gain(runs[reference[i.name]], runs[i.name], "tokens_to_target") for i in ideas
    }
    for row in summary["ideas"]:
        row["time_gain"] = time_gains[row["name"]]
        row["steps_gain"] = step_gains[row["name"]]
    base_times = [r["train_time_s"] for r in runs["baseline"].values() if r["train_time_s"]]
    reached = sum(r["tokens_to_target"] is not None for r in runs["baseline"].values())
    summary.update({
        "env": task.id, "verify": args.verify, "target_val_loss": target,
        "comparison": "cumulative" if args.cumulative else "alone", "reference": reference,
        "set": sets, "jobs": args.jobs,  # a saved JSON says the shape and load it was run at
        "time_objective": objective_summary(ideas, time_gains),
        "steps_objective": objective_summary(ideas, step_gains),
        "baseline_run_s": statistics.fmean(base_times) if base_times else None,
        "baseline_meets_target": f"{reached}/{len(runs['baseline'])}",
        "elapsed_s": elapsed, "runs": runs,
    })  # fmt: skip
    print_table(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
        print(f"wrote {args.json}")


def _label(summary: dict[str, Any]) -> str:
    """The track and any --set hyperparameters it ran at (older JSONs have none)."""
    return summary["env"] + "".join(f", {k}={v}" for k, v in summary.get("set", {}).items())


def _f(x: float | None, spec: str = "+.4f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(summary: dict[str, Any]) -> None:
    """The per-idea table and the suite's numbers."""
    print(f"\n{_label(summary)}, {summary['seeds']} seeds, verify={summary['verify']}")
    print(f"{'idea':<20} {'record':>6} {'rec gain':>8} {'effect':>8} {'se':>7} {'agrees':>6} "
          f"{'time gain':>9} {'steps gain':>10}")  # fmt: skip
    for r in summary["ideas"]:
        rec = "ctrl" if r["control"] else f"#{r['record']}"
        print(f"{r['name']:<20} {rec:>6} {_f(r['record_gain'], '.3f'):>8} {_f(r['effect']):>8} "
              f"{_f(r['se'], '.4f'):>7} {'yes' if r['agrees'] else 'NO':>6} "
              f"{_gain(r['time_gain']):>9} {_gain(r['steps_gain']):>10}")  # fmt: skip
    print(f"agreement {_f(summary['agreement'], '.0%')}  spearman {_f(summary['spearman'], '.2f')}  "
          f"noise floor {_f(summary['noise_floor'], '.4f')} nats  "
          f"(time objective agreement {_f(summary['time_objective']['agreement'], '.0%')}, "
          f"steps objective {_f(summary['steps_objective']['agreement'], '.0%')})")  # fmt: skip
    print(f"baseline: {_f(summary['baseline_run_s'], '.1f')} s a run, meets the target in "
          f"{summary['baseline_meets_target']} seeds; suite took {summary['elapsed_s'] / 60:.1f} min")  # fmt: skip


def markdown(summary: dict[str, Any]) -> str:
    """The per-idea table and the suite's numbers as markdown (the README's table)."""
    lines = [
        "| idea | record (date) | record gain | effect on the track (se) | agrees | time gain | steps gain |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["ideas"]:
        rec = (
            "control"
            if r["control"]
            else f"#{r['record']} ({r['date']}, {r['before_min']} → {r['after_min']} min)"
        )
        se = "" if r["se"] is None else f" ({r['se']:.4f})"
        lines.append(
            f"| {r['name']} | {rec} | {_f(r['record_gain'], '.3f')} | {_f(r['effect'])}{se} | "
            f"{'yes' if r['agrees'] else '**no**'} | {_gain(r['time_gain'])} | {_gain(r['steps_gain'])} |"
        )
    lines.append("")
    lines.append(
        f"{_label(summary)}, {summary['seeds']} seeds paired by seed, verify={summary['verify']}: "
        f"agreement **{_f(summary['agreement'], '.0%')}**, Spearman **{_f(summary['spearman'], '.2f')}**, "
        f"noise floor {_f(summary['noise_floor'], '.4f')} nats (time objective agreement "
        f"{_f(summary['time_objective']['agreement'], '.0%')}, steps objective "
        f"{_f(summary['steps_objective']['agreement'], '.0%')}); one baseline run "
        f"{_f(summary['baseline_run_s'], '.1f')} s, target met in {summary['baseline_meets_target']} seeds; "
        f"{summary['elapsed_s'] / 60:.0f} min in all."
    )
    return "\n".join(lines)


def _gain(g: dict[str, Any]) -> str:
    if g["gain"] is None:
        return "never" if g["never"] else "-"
    return f"{g['gain']:+.3f}"


if __name__ == "__main__":
    main()
