"""The record book: per task and hardware fingerprint, the history of records, like the
speedrun's README table. Entry 0 is the baseline; each later entry is a script that a claim
showed faster than the one before it on this machine, at p < 0.01, while meeting the target.

It lives in the run store's file (``<runs_dir>/runs.sqlite``, table ``record_book``). An entry
keeps its script whole (so ``start="record"`` and ``records diff`` need nothing else), the
means its claim measured, and ``time_ratio``: its time as a fraction of the baseline's,
chained through the claims. Each claim times the candidate against the current record in one
interleaved run, so the ratio compares numbers measured together; a later reward multiplies it
by the baseline's time as paired on the machine of the moment, never by a time measured an
hour before on a machine that has since become busier or quieter.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nanoenv.records.store import RunStore


@dataclass(frozen=True)
class BookKey:
    """Which book: a task at a size, on one hardware fingerprint (baselines.fingerprint_id)."""

    task: str
    smoke: bool
    fingerprint: str

    def __str__(self) -> str:
        return f"{self.task}{' (smoke)' if self.smoke else ''} on {self.fingerprint}"


@dataclass(frozen=True)
class Entry:
    """One row of the book."""

    number: int  # 0: the baseline
    script: str
    train_time_s: float  # mean harness time in the claim that admitted it
    val_loss: float  # mean verified loss there
    time_ratio: float  # its time / the baseline's, chained through the claims (1.0 for #0)
    run: str | None = None  # EPISODE/STEP of the run that was claimed
    claimed_at: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def script_sha256(self) -> str:
        return hashlib.sha256(self.script.encode()).hexdigest()

    @property
    def label(self) -> str:
        return "baseline" if self.number == 0 else f"record {self.number}"


class RecordBook:
    """The record book of a runs folder."""

    def __init__(self, runs_dir: Path) -> None:
        self.store = RunStore(Path(runs_dir))

    def history(self, key: BookKey) -> list[Entry]:
        """Every entry of one book, the baseline first."""
        if not self.store.path.exists():
            return []
        with self.store.connect() as con:
            rows = con.execute(
                "SELECT number, script, train_time_s, val_loss, time_ratio, run, claimed_at, "
                "evidence FROM record_book WHERE task=? AND smoke=? AND fingerprint=? "
                "ORDER BY number",
                (key.task, int(key.smoke), key.fingerprint),
            ).fetchall()
        return [
            Entry(n, s, t, v, r, run, at, json.loads(ev or "{}"))
            for n, s, t, v, r, run, at, ev in rows
        ]

    def current(self, key: BookKey) -> Entry | None:
        """The record now: the book's last entry (None for a book not yet opened)."""
        history = self.history(key)
        return history[-1] if history else None

    def books(self) -> list[BookKey]:
        """Every book in this store."""
        if not self.store.path.exists():
            return []
        with self.store.connect() as con:
            rows = con.execute(
                "SELECT DISTINCT task, smoke, fingerprint FROM record_book ORDER BY task"
            ).fetchall()
        return [BookKey(t, bool(s), f) for t, s, f in rows]

    def append(self, key: BookKey, entry: Entry) -> Entry:
        """Add the next entry; its number must follow the current one's (claims race safely:
        the second to finish finds its number taken and is told to claim again)."""
        expected = len(self.history(key))
        if entry.number != expected:
            raise ValueError(
                f"{key}: the next entry is number {expected}, not {entry.number} (another claim "
                "was admitted meanwhile: claim again against the new record)"
            )
        stamp = entry.claimed_at or time.strftime("%Y-%m-%dT%H:%M:%S")
        with self.store.connect() as con:
            con.execute(
                "INSERT INTO record_book (task, smoke, fingerprint, number, script, script_sha256, "
                "train_time_s, val_loss, time_ratio, run, claimed_at, evidence) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (key.task, int(key.smoke), key.fingerprint, entry.number, entry.script,
                 entry.script_sha256, entry.train_time_s, entry.val_loss, entry.time_ratio,
                 entry.run, stamp, json.dumps(entry.evidence, default=str)),
            )  # fmt: skip
        return Entry(**{**asdict(entry), "claimed_at": stamp})


def book_key(task: Any, smoke: bool, sandbox: str) -> BookKey:
    """The book a task's records on this machine belong to (``task`` at the size the runs had:
    ``smoke_task(task)`` for a smoke book, as settings.resolve gives it)."""
    from nanoenv import baselines

    fp = baselines.fingerprint_id(baselines.fingerprint(task, sandbox))
    return BookKey(task.id, smoke, fp)


def current_record(runs_dir: Path, task: Any, smoke: bool, sandbox: str) -> Entry | None:
    """The current record of a task here, or None where no claim has been admitted."""
    return RecordBook(runs_dir).current(book_key(task, smoke, sandbox))
