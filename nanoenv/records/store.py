"""The run store: an SQLite index of every step, beside the artifact folders it points to.

One row per step, written when the step starts (``running``) and completed when it ends, so a
step whose process was killed shows as ``interrupted`` (its owner is gone), never as missing.
Many processes may write at once (vector envs): the database runs in WAL mode with a busy
timeout. It lives at ``<runs_dir>/runs.sqlite``; ``nanoenv runs`` reads it.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nanoenv.judging.progress import frontier
from nanoenv.liveness import owner_alive, owner_id
from nanoenv.types import RunResult

DB_NAME = "runs.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    episode TEXT NOT NULL,
    step INTEGER NOT NULL,
    task TEXT NOT NULL,
    smoke INTEGER NOT NULL,
    sandbox TEXT,
    status TEXT NOT NULL,          -- running, finished (interrupted is read off a dead owner)
    owner TEXT,                    -- host:pid:start of the process that runs it (liveness.py)
    started_at REAL,
    finished_at REAL,
    action TEXT,                   -- JSON, as the agent sent it
    base INTEGER,
    script_sha256 TEXT,
    seed INTEGER,
    outcome TEXT,
    reward REAL,
    val_loss REAL,
    hidden_val_loss REAL,
    train_time_s REAL,
    verified INTEGER,
    fingerprint TEXT,
    artifacts_dir TEXT,
    best_val_loss REAL,            -- the episode's, when this step finished (nanoenv.judging.progress)
    hypervolume REAL,              -- of the episode's (time, loss) frontier then
    PRIMARY KEY (episode, step)
);
CREATE TABLE IF NOT EXISTS record_book (   -- nanoenv.records.book
    task TEXT NOT NULL,
    smoke INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,     -- baselines.fingerprint_id of the machine it was claimed on
    number INTEGER NOT NULL,       -- 0: the baseline
    script TEXT NOT NULL,
    script_sha256 TEXT NOT NULL,
    train_time_s REAL NOT NULL,
    val_loss REAL NOT NULL,
    time_ratio REAL NOT NULL,      -- its time / the baseline's, chained through the claims
    run TEXT,                      -- EPISODE/STEP of the claimed run
    claimed_at TEXT NOT NULL,
    evidence TEXT,                 -- JSON: the claim's runs, means and p-values
    PRIMARY KEY (task, smoke, fingerprint, number)
);
"""
# Columns added since the first schema: a store made before gets them on first open.
_ADDED = {"best_val_loss": "REAL", "hypervolume": "REAL"}
COLUMNS = ("episode", "step", "task", "smoke", "sandbox", "status", "owner", "started_at", "finished_at",
           "action", "base", "script_sha256", "seed", "outcome", "reward", "val_loss", "hidden_val_loss",
           "train_time_s", "verified", "fingerprint", "artifacts_dir", "best_val_loss",
           "hypervolume")  # fmt: skip


class RunStore:
    """The SQLite index of a runs folder."""

    def __init__(self, runs_dir: Path) -> None:
        self.path = Path(runs_dir) / DB_NAME
        self._ready = False

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """``with store.connect() as con:`` one transaction on the store (the schema made on
        first use), committed or rolled back, then closed; also for the tables beside the runs
        index, such as the record book. sqlite3's own ``with con:`` does not close: a server
        that opens many sessions' stores kept their files open (benchmarks/soak.py)."""
        con = sqlite3.connect(self.path, timeout=30) if self._ready else self._setup()
        try:
            with con:
                yield con
        finally:
            con.close()

    def _setup(self) -> sqlite3.Connection:
        """The first connection of this store: WAL mode (kept in the file) and the schema.

        Switching to WAL needs the file to itself, and SQLite answers "database is locked" at
        once, without waiting out its busy timeout, while another process is doing the same;
        so this retries for a while instead.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
                have = {row[1] for row in con.execute("PRAGMA table_info(steps)")}
                for name, kind in _ADDED.items():
                    if name not in have:
                        con.execute(f"ALTER TABLE steps ADD COLUMN {name} {kind}")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    con.close()
                    raise
                time.sleep(0.02 + 0.08 * random.random())  # apart, not in step
        self._ready = True
        return con

    def begin(
        self,
        *,
        episode: str,
        step: int,
        meta: dict[str, Any],
        action: Any,
        artifacts_dir: str | None,
    ) -> None:
        """Record that a step has started."""
        with self.connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO steps (episode, step, task, smoke, sandbox, status, owner, "
                "started_at, action, fingerprint, artifacts_dir) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (episode, step, meta.get("task", ""), int(bool(meta.get("smoke"))), meta.get("sandbox"),
                 "running", owner_id(), time.time(), json.dumps(action, default=str)[:100_000],
                 meta.get("fingerprint"), artifacts_dir),
            )  # fmt: skip

    def finish(
        self, *, episode: str, result: RunResult, progress: dict[str, Any] | None = None
    ) -> None:
        """Complete a step's row with its result (and the episode's progress then)."""
        progress = progress or {}
        with self.connect() as con:
            con.execute(
                "UPDATE steps SET status='finished', finished_at=?, base=?, script_sha256=?, seed=?, "
                "outcome=?, reward=?, val_loss=?, hidden_val_loss=?, train_time_s=?, verified=?, "
                "artifacts_dir=COALESCE(?, artifacts_dir), best_val_loss=?, hypervolume=? "
                "WHERE episode=? AND step=?",
                (time.time(), result.base, result.script_sha256, result.seed, result.outcome.value,
                 result.reward, _real(result.val_loss), _real(result.hidden_val_loss),
                 _real(result.train_time_s), int(result.verdict.verified), result.artifacts_dir,
                 _real(progress.get("best_val_loss")), _real(progress.get("hypervolume")),
                 episode, result.step),
            )  # fmt: skip

    def rows(self, *, task: str | None = None, episode: str | None = None) -> list[dict[str, Any]]:
        """Every step (filtered), ``status`` reading ``interrupted`` where the owner is gone."""
        if not self.path.exists():
            return []
        where, args = [], []
        if task:
            where.append("task = ?")
            args.append(task.removeprefix("nanoenv/"))
        if episode:
            where.append("episode LIKE ?")
            args.append(f"{episode}%")
        sql = f"SELECT {', '.join(COLUMNS)} FROM steps" + (
            f" WHERE {' AND '.join(where)}" if where else ""
        )
        with self.connect() as con:
            rows = [
                dict(zip(COLUMNS, r, strict=True))
                for r in con.execute(sql + " ORDER BY started_at, step", args)
            ]
        for r in rows:
            if r["status"] == "running" and not owner_alive(r["owner"]):
                r["status"] = "interrupted"
        return rows

    def leaderboard(self, task: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        """Verified steps that met the target, fastest first."""
        ok = [
            r
            for r in self.rows(task=task)
            if r["outcome"] == "ok" and r["verified"] and r["train_time_s"]
        ]
        return sorted(ok, key=lambda r: r["train_time_s"])[:limit]

    def frontier(self, task: str | None = None) -> list[dict[str, Any]]:
        """The (time, loss) Pareto frontier of verified finished steps: no other is faster and lower."""
        pts = [r for r in self.rows(task=task)
               if r["verified"] and r["train_time_s"] is not None and r["val_loss"] is not None]  # fmt: skip
        return pareto(pts)


def pareto(
    points: list[dict[str, Any]], time_key: str = "train_time_s", loss_key: str = "val_loss"
) -> list[dict[str, Any]]:
    """The points no other point beats on both time and loss, fastest first."""
    front = frontier([(p[time_key], p[loss_key], i) for i, p in enumerate(points)])
    return [points[i] for _, _, i in front]


def _real(x: float | None) -> float | None:
    return None if x is None or x != x else float(x)
