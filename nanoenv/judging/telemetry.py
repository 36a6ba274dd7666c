"""The log-line protocol of the speedrun: parse it, in one go or as a stream.

A training script prints lines in the format of modded-nanogpt's records::

    step:{s}/{total} val_loss:{x} train_time:{ms}ms step_avg:{ms}ms
    step:{s}/{total} train_loss:{x} train_time:{ms}ms step_avg:{ms}ms

and any number of further ``key:value`` tokens. Every other line is plain log, except the
end line (:data:`END_LINE`), which the baselines print once their model files are complete.
The parser is lenient by design: real logs hold ``nan`` losses, ``step_avg:nanms``, lines cut
short by a killed process, and garbage between lines, and none of these may lose the points
around them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from nanoenv.types import LossPoint

# `step:12/100` (or `step:12` alone) anywhere in the line, so a rank or time prefix is fine.
# At most 12 digits: a longer "step number" is not a step (and a 5000-digit one would make
# int() raise), so such a line is plain log.
_STEP = re.compile(r"(?:^|\s)step:(\d{1,12})(?:/(\d{1,12}))?(?=\s|$)")
_TOKEN = re.compile(r"(\w+):(\S*)")
_DURATION = re.compile(
    r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)(ms|s)?$", re.I
)
_FLOAT = re.compile(r"^[-+]?((\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|inf|infinity)$", re.I)

# The end of a run: the harness stops the job when a stdout line begins with this (the
# sandbox ends every process of it), and the run's clock with it. The interpreter's teardown
# after the model is saved (0.6-0.8 s with torch loaded) is then neither charged nor a thing a
# script can buy back with os._exit; anything a script would do after the line never happens.
END_LINE = "saved model to "

_LOSS_KEYS = {"val_loss": "val_loss", "train_loss": "train_loss", "loss": "train_loss"}
_TIME_KEYS = {"train_time": "train_time_ms", "step_avg": "step_avg_ms"}


def _parse_float(text: str) -> float | None:
    if not _FLOAT.match(text):
        return None
    return float(text)


def _parse_ms(text: str) -> float | None:
    """``123ms`` -> 123.0, ``1.5s`` -> 1500.0, ``nanms`` -> nan; a bare number is ms."""
    m = _DURATION.match(text)
    if not m:
        return None
    value = float(m.group(1))
    return value * 1000.0 if (m.group(2) or "").lower() == "s" else value


def parse_line(text: str, received_s: float | None = None) -> LossPoint | None:
    """Parse one log line; return ``None`` for a line that is not a ``step:`` line."""
    m = _STEP.search(text)
    if m is None:
        return None
    fields: dict[str, float | None] = {}
    extra: dict[str, str] = {}
    for key, value in _TOKEN.findall(text[m.end() :]):
        if key in _LOSS_KEYS:
            loss = _parse_float(value)
            if loss is not None:
                fields[_LOSS_KEYS[key]] = loss
        elif key in _TIME_KEYS:
            ms = _parse_ms(value)
            if ms is not None:
                fields[_TIME_KEYS[key]] = ms
        elif value:
            extra[key] = value
    return LossPoint(
        step=int(m.group(1)),
        total_steps=int(m.group(2)) if m.group(2) else None,
        received_s=received_s,
        extra=extra,
        **fields,
    )


class LogParser:
    """Incremental parser: feed it lines as they arrive, read ``points`` at any time."""

    def __init__(self) -> None:
        self.points: list[LossPoint] = []
        self.lines_seen = 0

    def feed(self, line: str, received_s: float | None = None) -> LossPoint | None:
        """Parse one line (with its harness receipt time); keep and return it if it is a point."""
        self.lines_seen += 1
        point = parse_line(line.rstrip("\r\n"), received_s)
        if point is not None:
            self.points.append(point)
        return point

    @property
    def val_points(self) -> list[LossPoint]:
        """Points that carry a validation loss, in the order they arrived."""
        return [p for p in self.points if p.val_loss is not None]

    @property
    def last_val(self) -> LossPoint | None:
        """The most recent validation point, or ``None``."""
        vals = self.val_points
        return vals[-1] if vals else None


def parse_log(text: str | Iterable[str]) -> list[LossPoint]:
    """Parse a whole speedrun log (a string or an iterable of lines) into its points.

    Example:
        >>> [p.val_loss for p in parse_log("step:0/10 val_loss:10.8 train_time:0ms step_avg:nanms")]
        [10.8]
    """
    lines = text.splitlines() if isinstance(text, str) else text
    parser = LogParser()
    for line in lines:
        parser.feed(line)
    return parser.points


def format_log_line(
    step: int,
    total: int,
    train_time_ms: float,
    step_avg_ms: float,
    *,
    val_loss: float | None = None,
    train_loss: float | None = None,
) -> str:
    """Write a line in the speedrun's format (the inverse of :func:`parse_line`)."""
    loss = (
        f"val_loss:{val_loss:.4f} "
        if val_loss is not None
        else (f"train_loss:{train_loss:.4f} " if train_loss is not None else "")
    )
    return (
        f"step:{step}/{total} {loss}train_time:{train_time_ms:.0f}ms step_avg:{step_avg_ms:.2f}ms"
    )
