"""Per-step artifact folders: every step's action, script, log and result, on disk.

Layout::

    <runs_dir>/runs.sqlite                           the index of every step (nanoenv.records.store)
    <runs_dir>/<episode_id>/episode.json             task, seed, sandbox, reward, verify
    <runs_dir>/<episode_id>/trajectory.jsonl         one line per finished step (replayable)
    <runs_dir>/<episode_id>/step-0001/action.json   what the agent sent
                                      script.py     the script that ran (if one did)
                                      log.txt       the full output, as it arrived
                                      lines.jsonl   the same lines with harness stamps
                                      out/          model.safetensors, model.json
                                      result.json   written last, atomically

A folder without ``result.json`` is a step that was interrupted (the harness was killed).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import IO, Any

from nanoenv.types import RunResult, StampedLine

RESULT = "result.json"
TRAJECTORY = "trajectory.jsonl"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename, so readers never see half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def new_episode_id(task_name: str) -> str:
    """A sortable, unique episode id: ``20261125-131800-tiny-3fa2c1``."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{task_name}-{secrets.token_hex(3)}"


class StepRecord:
    """The folder of one step. Open the log with :meth:`open_log`; finish with :meth:`finish`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=False)
        self._log: IO[str] | None = None
        self._lines: IO[str] | None = None

    def sub(self, name: str) -> StepRecord:
        """A folder inside this one, for one of several repeated runs."""
        return StepRecord(self.path / name)

    @property
    def out_dir(self) -> Path:
        """Where the job's NANOENV_OUT_DIR is copied."""
        return self.path / "out"

    def write_action(self, action: dict[str, Any]) -> None:
        """Keep what the agent sent, as sent."""
        write_json_atomic(self.path / "action.json", action)

    def write_text(self, name: str, text: str) -> None:
        """Keep a text file (the script, the effective diff)."""
        (self.path / name).write_text(text, encoding="utf-8")

    def open_log(self) -> None:
        """Start streaming the job's output to log.txt and lines.jsonl."""
        # Held open for the run's whole length and closed by close_log(), so no `with` here.
        self._log = open(self.path / "log.txt", "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._lines = open(self.path / "lines.jsonl", "w", encoding="utf-8", buffering=1)  # noqa: SIM115

    def log_line(self, line: StampedLine) -> None:
        """Append one stamped line (line-buffered, so a killed harness loses nothing)."""
        if self._log is not None and self._lines is not None:
            self._log.write(line.text + "\n")
            self._lines.write(line.model_dump_json() + "\n")

    def close_log(self) -> None:
        """Close the log files."""
        for f in (self._log, self._lines):
            if f is not None:
                f.close()
        self._log = self._lines = None

    def finish(self, result: RunResult) -> None:
        """Write result.json last: its presence marks the step complete."""
        self.close_log()
        write_text_atomic(self.path / RESULT, result.model_dump_json(indent=2) + "\n")


class EpisodeRecord:
    """The folder of one episode, made on first use so resets alone leave nothing behind."""

    def __init__(self, runs_dir: Path, task_name: str, meta: dict[str, Any]) -> None:
        self.runs_dir = runs_dir
        self.episode_id = new_episode_id(task_name)
        self.meta = meta
        self._made = False

    @property
    def path(self) -> Path:
        """The episode folder."""
        return self.runs_dir / self.episode_id

    def _make(self) -> None:
        if not self._made:
            self.path.mkdir(parents=True, exist_ok=True)
            meta = {"episode_id": self.episode_id, **self.meta}
            write_json_atomic(self.path / "episode.json", meta)
            self._made = True

    def step(self, index: int) -> StepRecord:
        """Create the folder of step ``index``."""
        self._make()
        return StepRecord(self.path / f"step-{index:04d}")

    def append_trajectory(self, line: dict[str, Any]) -> None:
        """Add one finished step to ``trajectory.jsonl`` (what ``nanoenv replay`` reads)."""
        self._make()
        with open(self.path / TRAJECTORY, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=str) + "\n")


def load_result(step_dir: Path) -> RunResult | None:
    """Read a step's result, or None if the step never finished."""
    path = step_dir / RESULT
    if not path.exists():
        return None
    return RunResult.model_validate_json(path.read_text())
