"""`nanoenv runs ...` and `nanoenv replay`: read the run store, the records, the trajectories."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nanoenv.errors import NanoEnvError
from nanoenv.records.store import RunStore


def _f(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _row(r: dict[str, Any]) -> str:
    state = r["outcome"] if r["status"] == "finished" else r["status"]
    mark = "v" if r["verified"] else " "
    return (f"{r['episode']:<32} {r['step']:>4}  {r['task']:<24} {state:<14} {mark} "
            f"{_f(r['val_loss'], '.4f'):>8} {_f(r['train_time_s'], '.2f'):>8} {_f(r['reward'], '+.4f'):>8}")  # fmt: skip


HEADER = f"{'episode':<32} {'step':>4}  {'task':<24} {'outcome':<14} v {'val_loss':>8} {'time s':>8} {'reward':>8}"


def _record_points(runs_dir: Path, task: str | None) -> list[tuple[str, float, float]]:
    """(label, time, loss) of every record of a task in this runs folder's books, for the
    frontier plot; none without a task (books of different tasks do not share axes)."""
    from nanoenv.records.book import RecordBook

    if task is None:
        return []
    book = RecordBook(runs_dir)
    keys = [k for k in book.books() if k.task == task.removeprefix("nanoenv/")]
    return [(e.label if len(keys) == 1 else f"{e.label} ({k.fingerprint[:6]})", e.train_time_s, e.val_loss)
            for k in keys for e in book.history(k)]  # fmt: skip


def cmd_runs(args: argparse.Namespace) -> int:
    """List, show, rank and plot the runs under a runs folder."""
    store = RunStore(Path(args.runs_dir))
    task = getattr(args, "task", None)
    if args.runs_cmd == "list":
        rows = store.rows(task=task)
        print(HEADER)
        print("\n".join(_row(r) for r in rows) if rows else f"(no runs in {store.path})")
    elif args.runs_cmd == "show":
        episode, _, step = args.id.partition("/")
        rows = [r for r in store.rows(episode=episode) if not step or r["step"] == int(step)]
        if not rows:
            raise NanoEnvError(f"no run {args.id!r} in {store.path}")
        for r in rows:
            print(json.dumps({k: v for k, v in r.items() if k != "action"}, indent=2, default=str))
            print("action:", r["action"][:2000])
    elif args.runs_cmd == "leaderboard":
        rows = store.leaderboard(task=task, limit=args.limit)
        print(HEADER)
        print(
            "\n".join(_row(r) for r in rows) if rows else "(no verified run has met its target yet)"
        )
    elif args.runs_cmd == "frontier":
        rows = store.frontier(task=task)
        print(HEADER)
        print("\n".join(_row(r) for r in rows) if rows else "(no verified runs yet)")
        if args.png and rows:
            from nanoenv.records.plots import plot_frontier

            every = [(f"{r['episode'][-6:]}/{r['step']}", r["train_time_s"], r["val_loss"])
                     for r in store.rows(task=task) if r["verified"] and r["train_time_s"] and r["val_loss"]]  # fmt: skip
            records = _record_points(Path(args.runs_dir), task)
            title = "verified runs" + (" and the record book" if records else "")
            png = plot_frontier(every, Path(args.png), title=title, records=records)
            print(f"wrote {png}")
    elif args.runs_cmd == "report":
        from nanoenv.records.report import write_report
        from nanoenv.tasks import load_task

        folder = Path(args.runs_dir) / args.episode
        if not (folder / "episode.json").exists():
            raise NanoEnvError(f"no episode folder {folder}")
        meta = json.loads((folder / "episode.json").read_text())
        target = meta.get("curve_target")  # the target on the log's curve, as the env resolved it
        if target is None:  # an episode recorded before episodes kept it
            task_spec = load_task(meta["task"])
            small = meta.get("smoke") and task_spec.smoke
            target = task_spec.smoke.target_val_loss if small else task_spec.target_val_loss
        print(f"wrote {write_report(folder, target=target)}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Run an episode's trajectory again, action by action, and compare."""
    import gymnasium as gym

    import nanoenv  # noqa: F401

    path = Path(args.file)
    folder = path.parent if path.is_file() else path
    trajectory = folder / "trajectory.jsonl" if path.is_dir() else path
    meta = json.loads((folder / "episode.json").read_text())
    steps = sorted((json.loads(line) for line in trajectory.read_text().splitlines() if line.strip()),
                   key=lambda s: s["step"])  # fmt: skip
    env = gym.make(f"nanoenv/{meta['task']}", smoke=meta.get("smoke", False), sandbox=args.sandbox or meta.get("sandbox", "local"),
                   verify=meta.get("verify", "full"), reward=meta.get("reward", "time_to_target"),
                   repeats=meta.get("repeats", 1), runs_dir=args.runs_dir, max_steps=len(steps) + 1,
                   disable_env_checker=True)  # fmt: skip
    env.reset(seed=meta.get("seed"))
    print(
        f"replaying {len(steps)} steps of {folder.name} ({meta['task']}, seed {meta.get('seed')})"
    )
    print(
        f"{'step':>4}  {'then':<14} {'now':<14} {'val then':>9} {'val now':>9} {'time then':>9} {'time now':>9}"
    )
    same = 0
    for s in steps:
        action = s["action"] if "unreadable" not in s["action"] else s["action"]["unreadable"]
        r = env.step(action)[4]["result"]
        same += r.outcome.value == s["outcome"]
        print(f"{s['step']:>4}  {s['outcome']:<14} {r.outcome.value:<14} {_f(s['val_loss'], '.4f'):>9} "
              f"{_f(r.val_loss, '.4f'):>9} {_f(s['train_time_s'], '.2f'):>9} {_f(r.train_time_s, '.2f'):>9}")  # fmt: skip
    env.close()
    print(
        f"{same}/{len(steps)} steps ended the same way; new records in {env.unwrapped.episode_dir}"
    )
    return 0 if same == len(steps) else 1


def add_parsers(sub: Any) -> None:
    """The `runs` and `replay` subcommands."""
    runs = sub.add_parser("runs", help="look at recorded runs (the run store)")
    rsub = runs.add_subparsers(dest="runs_cmd", required=True)
    for name, helptext in (("list", "every step"), ("leaderboard", "verified runs that met the target, fastest first"),
                           ("frontier", "the (time, loss) Pareto frontier of verified runs")):  # fmt: skip
        sp = rsub.add_parser(name, help=helptext)
        sp.add_argument("--runs-dir", default="nanoenv-runs")
        sp.add_argument("--task", help="only this task (e.g. Speedrun-Tiny-v0)")
        if name == "leaderboard":
            sp.add_argument("--limit", type=int, default=10)
        if name == "frontier":
            sp.add_argument("--png", help="also plot every verified run and the frontier")
    show = rsub.add_parser("show", help="one episode (EPISODE) or step (EPISODE/STEP)")
    show.add_argument("id")
    show.add_argument("--runs-dir", default="nanoenv-runs")
    rep = rsub.add_parser("report", help="write an episode's HTML report")
    rep.add_argument("episode")
    rep.add_argument("--runs-dir", default="nanoenv-runs")
    runs.set_defaults(func=cmd_runs)

    replay = sub.add_parser("replay", help="run an episode's trajectory again and compare")
    replay.add_argument("file", help="an episode folder or its trajectory.jsonl")
    replay.add_argument("--runs-dir", default="nanoenv-runs")
    replay.add_argument("--sandbox", help="override the sandbox the episode used")
    replay.set_defaults(func=cmd_replay)
