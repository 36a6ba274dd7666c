"""Record claims: a run becomes a record only when it beats the current one by the speedrun's
rules, measured here, now.

``claim`` re-runs the claimed script and the current record interleaved on this machine (N
runs each, seeds drawn by the harness, every run verified), then admits the claim only if

- the candidate's mean harness time is lower than the record's, a one-sided Welch t-test at
  p < 0.01 (the speedrun's rule for a new record), and
- the candidate's mean verified loss is below the target, a one-sided t-test at p < 0.01,

and, where a reviewer is given, the reviewer finds no violation of the track's rules in the
diff. The claim's runs are an episode of their own under the runs folder, so its evidence is on
disk like every other run's. An admitted claim appends an entry to the record book
(nanoenv.records.book); the first claim of a book enters the baseline as entry 0 with the
numbers the same claim measured for it.
"""

from __future__ import annotations

import difflib
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanoenv.errors import NanoEnvError
from nanoenv.records.book import BookKey, Entry, RecordBook, book_key
from nanoenv.records.store import RunStore
from nanoenv.review import Review
from nanoenv.types import Outcome, RunResult, VerifyLevel

P_THRESHOLD = 0.01

# A reviewer returns the rule violations it finds (an empty list admits the claim).
Reviewer = Callable[[Review], list[str]]


@dataclass
class ClaimResult:
    """The outcome of a claim and its evidence."""

    key: BookKey
    run: str
    admitted: bool
    reasons: list[str]
    candidate_times: list[float] = field(default_factory=list)
    record_times: list[float] = field(default_factory=list)
    candidate_losses: list[float] = field(default_factory=list)
    record_losses: list[float] = field(default_factory=list)
    p_time: float | None = None
    p_loss: float | None = None
    target: float | None = None
    against: str = "baseline"
    violations: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    episode_dir: str | None = None
    entry: Entry | None = None
    verify: str = "full"

    def evidence(self) -> dict[str, Any]:
        keys = ("candidate_times", "record_times", "candidate_losses", "record_losses", "p_time",
                "p_loss", "target", "against", "violations", "wall_time_s", "episode_dir",
                "verify")  # fmt: skip
        return {k: getattr(self, k) for k in keys}

    def summary(self) -> str:
        def mean(xs: list[float]) -> str:
            return f"{statistics.fmean(xs):.4f}" if xs else "-"

        def p(x: float | None) -> str:
            return "-" if x is None else f"{x:.2g}"

        head = "ADMITTED" if self.admitted else "not admitted"
        lines = [
            f"claim of {self.run} on {self.key}: {head}",
            f"  candidate: time {mean(self.candidate_times)} s, loss {mean(self.candidate_losses)} "
            f"({len(self.candidate_times)} runs)",
            f"  {self.against}: time {mean(self.record_times)} s, loss {mean(self.record_losses)} "
            f"({len(self.record_times)} runs)",
            f"  p(time lower) = {p(self.p_time)}, p(loss below {self.target}) = {p(self.p_loss)} "
            f"(both must be < {P_THRESHOLD}); {self.wall_time_s:.0f} s",
        ]
        lines += [f"  - {r}" for r in self.reasons]
        if self.entry is not None:
            lines.append(f"  entered as record {self.entry.number} "
                         f"(time ratio to the baseline {self.entry.time_ratio:.4f})")  # fmt: skip
        return "\n".join(lines)


def _claimed_run(runs_dir: Path, run: str) -> tuple[dict[str, Any], str, RunResult | None]:
    """The claimed step's episode meta, its script, and its result."""
    episode, _, step = run.partition("/")
    if not step.isdigit():
        raise NanoEnvError(
            f"a claim names a step as EPISODE/STEP (as `nanoenv runs list` shows), not {run!r}"
        )
    rows = [r for r in RunStore(runs_dir).rows(episode=episode) if r["step"] == int(step)]
    if len(rows) != 1:
        raise NanoEnvError(f"no single step {run!r} in {runs_dir / 'runs.sqlite'}")
    row = rows[0]
    from nanoenv.tasks import load_task

    folder = Path(row["artifacts_dir"] or "")
    meta = json.loads((folder.parent / "episode.json").read_text())
    script_path = folder / load_task(meta["task"]).script
    if not script_path.is_file():
        raise NanoEnvError(f"step {run} kept no script ({script_path}): it never ran")
    try:
        result = RunResult.model_validate_json((folder / "result.json").read_text())
    except (OSError, ValueError):
        result = None
    return meta, script_path.read_text(), result


def welch_less(a: list[float], b: list[float]) -> float | None:
    """p of "mean(a) < mean(b)", one-sided Welch t-test (None with fewer than 2 of each).

    Unlike the loss test (where identical repeats mean a script that ignores its seed, and
    fail), times without spread on both sides are taken at face value: a real clock never
    gives them, an exact one (the fake sandbox's) does, and there the means decide."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return 0.0 if statistics.fmean(a) < statistics.fmean(b) else 1.0
    from scipy import stats

    p = float(stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue)
    return p if math.isfinite(p) else 1.0


def claim(
    run: str,
    *,
    runs_dir: str | Path = "nanoenv-runs",
    repeats: int = 3,
    sandbox: str | Any = "local",
    verify: str = "full",
    reviewer: Reviewer | None = None,
    seed: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ClaimResult:
    """Re-run a claimed step against the current record, interleaved, and admit it or not.

    ``sandbox`` is a backend's name or a Sandbox instance. ``verify`` is ``"full"`` for every
    claim the command line makes; a claim under ``"none"`` (a test's fake sandbox) takes the
    logs' losses, and its entry says so in its evidence.
    """
    import gymnasium as gym

    import nanoenv  # noqa: F401  (registers the ids)
    from nanoenv.feedback import rules_text
    from nanoenv.judging.significance import significance
    from nanoenv.settings import resolve

    runs_dir = Path(runs_dir)
    if repeats < 2:
        raise NanoEnvError("a claim needs --repeats 2 or more: a t-test needs a spread")
    meta, script, result = _claimed_run(runs_dir, run)
    smoke = bool(meta.get("smoke"))
    backend = sandbox if isinstance(sandbox, str) else sandbox.name
    resolved = resolve(meta["task"], sandbox=backend, smoke=smoke, verify=verify,
                       paired_baseline=False)  # fmt: skip
    task, target = resolved.task, resolved.settings.target_val_loss
    key = book_key(task, smoke, backend)
    book = RecordBook(runs_dir)
    record = book.current(key)
    record_script = record.script if record else resolved.baseline
    out = ClaimResult(key=key, run=run, admitted=False, reasons=[], target=target,
                      against=record.label if record else "baseline",
                      verify=resolved.settings.level.value)  # fmt: skip
    started = time.monotonic()
    if reviewer is not None:
        diff = "".join(difflib.unified_diff(record_script.splitlines(True), script.splitlines(True),
                                            "a/" + task.script, "b/" + task.script))  # fmt: skip
        out.violations = list(reviewer(Review(task.id, rules_text(task), diff, script, result)))
        if out.violations:
            out.reasons.append(f"the rule review found {len(out.violations)} violation(s): "
                               + "; ".join(out.violations))  # fmt: skip
            out.wall_time_s = time.monotonic() - started
            return out
    env = gym.make(f"nanoenv/{task.id}", smoke=smoke, sandbox=sandbox, verify=verify,
                   runs_dir=runs_dir, max_steps=2 * repeats, paired_baseline=False,
                   disable_env_checker=True)  # fmt: skip
    results: dict[str, list[RunResult]] = {"candidate": [], "record": []}
    try:
        env.reset(seed=seed)
        out.episode_dir = str(env.unwrapped.episode_dir)
        for i in range(repeats):
            # interleaved, so that a machine that slows down or speeds up mid-claim hits both
            for who, text in (("candidate", script), ("record", record_script)):
                r = env.step({"script": text})[4]["result"]
                results[who].append(r)
                if progress:
                    progress(f"{who} {i + 1}/{repeats}: {r.outcome.value} "
                             f"val {r.val_loss} time {r.train_time_s}")  # fmt: skip
    finally:
        env.close()
    trusted = resolved.settings.level is VerifyLevel.FULL
    bad = [(w, r) for w, rs in results.items() for r in rs
           if not ((r.verdict.verified or not trusted) and r.outcome in (Outcome.OK, Outcome.MISSED_TARGET)
                   and r.val_loss is not None and r.train_time_s is not None)]  # fmt: skip
    out.candidate_times = [
        r.train_time_s for r in results["candidate"] if r.train_time_s is not None
    ]
    out.record_times = [r.train_time_s for r in results["record"] if r.train_time_s is not None]
    out.candidate_losses = [r.val_loss for r in results["candidate"] if r.val_loss is not None]
    out.record_losses = [r.val_loss for r in results["record"] if r.val_loss is not None]
    out.wall_time_s = time.monotonic() - started
    if bad:
        out.reasons += [f"a {who} run did not count ({r.outcome.value}: {r.message[:200]})"
                        for who, r in bad]  # fmt: skip
        return out
    out.p_time = welch_less(out.candidate_times, out.record_times)
    sig = significance(out.candidate_losses, out.candidate_times, target)
    out.p_loss = sig.p_value
    if out.p_time is None or out.p_time >= P_THRESHOLD:
        out.reasons.append(f"its time is not lower than the {out.against}'s at p < {P_THRESHOLD}")
    if not sig.significant:
        out.reasons.append(f"its mean loss is not below the target {target} at p < {P_THRESHOLD}")
    if out.reasons:
        return out
    out.admitted = True
    ratio = statistics.fmean(out.candidate_times) / statistics.fmean(out.record_times)
    if record is None:  # the book opens with the baseline, as this claim measured it
        record = book.append(key, Entry(
            number=0, script=record_script, train_time_s=statistics.fmean(out.record_times),
            val_loss=statistics.fmean(out.record_losses), time_ratio=1.0,
            evidence={"measured_in": out.episode_dir, "verify": out.verify},
        ))  # fmt: skip
    out.entry = book.append(key, Entry(
        number=record.number + 1, script=script,
        train_time_s=statistics.fmean(out.candidate_times),
        val_loss=statistics.fmean(out.candidate_losses), time_ratio=record.time_ratio * ratio,
        run=run, evidence=out.evidence(),
    ))  # fmt: skip
    return out


# ---------------------------------------------------------------------- `nanoenv records`


def _pick_book(book: RecordBook, task: str | None, smoke: bool | None) -> BookKey:
    keys = [k for k in book.books()
            if (task is None or k.task == task.removeprefix("nanoenv/"))
            and (smoke is None or k.smoke == smoke)]  # fmt: skip
    if not keys:
        raise NanoEnvError(f"no record book{f' for {task}' if task else ''} in "
                           f"{book.store.path}: `nanoenv records claim` opens one")  # fmt: skip
    if len(keys) > 1:
        raise NanoEnvError("several record books match: " + "; ".join(map(str, keys))
                           + " (pick one with --task and --smoke)")  # fmt: skip
    return keys[0]


def _entry(book: RecordBook, key: BookKey, number: int) -> Entry:
    history = book.history(key)
    if not 0 <= number < len(history):
        raise NanoEnvError(f"{key} has entries 0-{len(history) - 1}, not {number}")
    return history[number]


def cmd_records(args: Any) -> int:
    """List, show, diff and claim records."""
    runs_dir = Path(args.runs_dir)
    book = RecordBook(runs_dir)
    smoke = True if getattr(args, "smoke", False) else None
    if args.records_cmd == "list":
        keys = [
            k for k in book.books() if not args.task or k.task == args.task.removeprefix("nanoenv/")
        ]
        if not keys:
            print(f"(no record book in {book.store.path}: `nanoenv records claim` opens one)")
        for key in keys:
            print(f"# {key}")
            print(f"{'#':>3}  {'entry':<10} {'time s':>8} {'x base':>7} {'val_loss':>8}  "
                  f"{'script':<12} {'claimed':<19} run")  # fmt: skip
            for e in book.history(key):
                print(f"{e.number:>3}  {e.label:<10} {e.train_time_s:>8.3f} {e.time_ratio:>7.3f} "
                      f"{e.val_loss:>8.4f}  {e.script_sha256[:12]:<12} {e.claimed_at:<19} "
                      f"{e.run or '-'}")  # fmt: skip
    elif args.records_cmd == "show":
        key = _pick_book(book, args.task, smoke)
        e = _entry(book, key, args.number)
        print(f"{key}, {e.label}: time {e.train_time_s:.3f} s ({e.time_ratio:.3f} of the "
              f"baseline's), val_loss {e.val_loss:.4f}, script {e.script_sha256[:12]}, "
              f"claimed {e.claimed_at} from {e.run or '-'}")  # fmt: skip
        print("evidence:", json.dumps(e.evidence, indent=2, default=str))
        if args.script:
            print(e.script)
    elif args.records_cmd == "diff":
        key = _pick_book(book, args.task, smoke)
        a, b = _entry(book, key, args.a), _entry(book, key, args.b)
        print("".join(difflib.unified_diff(a.script.splitlines(True), b.script.splitlines(True),
                                           a.label, b.label)) or "(the same script)")  # fmt: skip
    elif args.records_cmd == "claim":
        reviewer = None
        if args.review_endpoint:
            from nanoenv.review import ChatReviewer

            reviewer = ChatReviewer(args.review_endpoint, args.review_model)
        result = claim(args.run, runs_dir=runs_dir, repeats=args.repeats, sandbox=args.sandbox,
                       reviewer=reviewer, seed=args.seed, progress=print)  # fmt: skip
        print(result.summary())
        return 0 if result.admitted else 1
    return 0


def add_parsers(sub: Any) -> None:
    """The `records` subcommands."""
    rec = sub.add_parser("records", help="the record book: list, show, diff, claim")
    rsub = rec.add_subparsers(dest="records_cmd", required=True)
    lst = rsub.add_parser("list", help="every book's history, the baseline first")
    lst.add_argument("--task")
    show = rsub.add_parser("show", help="one entry, with its evidence")
    show.add_argument("number", type=int)
    show.add_argument("--script", action="store_true", help="print its script too")
    diff = rsub.add_parser("diff", help="what changed between two entries")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    cl = rsub.add_parser(
        "claim", help="re-run a step against the current record; admit it at p < 0.01"
    )
    cl.add_argument("run", help="EPISODE/STEP, as `nanoenv runs list` shows")
    cl.add_argument("--repeats", type=int, default=3, help="runs of each, interleaved (default 3)")
    cl.add_argument("--seed", type=int, help="seeds the harness's draw of run seeds")
    cl.add_argument(
        "--review-endpoint", help="an OpenAI-compatible chat endpoint for a rule review"
    )
    cl.add_argument("--review-model", default="gpt-4o-mini")
    for sp in (lst, show, diff, cl):
        sp.add_argument("--runs-dir", default="nanoenv-runs")
    for sp in (show, diff):
        sp.add_argument("--task")
        sp.add_argument("--smoke", action="store_true", help="the smoke-size book")
    from nanoenv.sandbox import BACKENDS

    cl.add_argument("--sandbox", default="local", choices=sorted(BACKENDS))
    rec.set_defaults(func=cmd_records)
