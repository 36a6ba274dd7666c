"""The speedrun log protocol: every era of real record logs, and broken input."""

from __future__ import annotations

import math
import re

import pytest
from conftest import SPEEDRUN_LOGS

from nanoenv import parse_log
from nanoenv.judging.telemetry import LogParser, format_log_line, parse_line


def _independent_val_losses(text: str) -> list[float]:
    """val_loss values found with a plain regex, to hold the parser against."""
    return [float(m) for m in re.findall(r"^step:\d+/\d+ val_loss:(\S+)", text, re.M)]


@pytest.mark.parametrize("path", SPEEDRUN_LOGS, ids=lambda p: p.stem)
def test_parses_every_record_log(path):
    """Every step line of every era's log becomes a point; the val curve matches a plain grep."""
    text = path.read_text()
    points = parse_log(text)
    step_lines = [ln for ln in text.splitlines() if ln.startswith("step:")]
    assert len(points) == len(step_lines)
    vals = [p.val_loss for p in points if p.val_loss is not None]
    assert vals == _independent_val_losses(text)
    last = [p for p in points if p.val_loss is not None][-1]
    assert last.step == last.total_steps
    assert last.val_loss <= 3.28  # each file is a record: its final loss met the target
    assert all(p.train_time_ms is not None for p in points)


def test_per_step_train_loss_and_nan_step_avg():
    """The 2024 logs carry train_loss per step and `step_avg:nanms` early on."""
    muon = next(p for p in SPEEDRUN_LOGS if p.stem.startswith("muon"))
    points = parse_log(muon.read_text())
    first_train = next(p for p in points if p.train_loss is not None)
    assert first_train.step == 1 and first_train.train_loss == pytest.approx(10.9184)
    assert math.isnan(first_train.step_avg_ms)


def test_timing_only_lines_are_points_without_loss():
    """Newer logs print `step:N/M train_time:.. step_avg:..` with no loss at all."""
    point = parse_line("step:1/1390 train_time:94ms step_avg:94.04ms")
    assert point.val_loss is None and point.train_loss is None
    assert point.train_time_s == pytest.approx(0.094)


@pytest.mark.parametrize(
    ("line", "field", "check"),
    [
        ("step:5/10 val_loss:nan train_time:5ms step_avg:1ms", "val_loss", math.isnan),
        ("step:5/10 val_loss:NaN train_time:5ms step_avg:1ms", "val_loss", math.isnan),
        ("step:5/10 train_loss:inf train_time:5ms step_avg:1ms", "train_loss", math.isinf),
        ("step:5/10 val_loss:-inf train_time:5ms", "val_loss", lambda x: x == -math.inf),
        ("step:5/10 val_loss:1.5e-1 train_time:1.5s", "train_time_ms", lambda x: x == 1500.0),
    ],
)
def test_nan_and_inf_losses(line, field, check):
    """NaN and inf are measurements (a diverged run), parsed as such."""
    assert check(getattr(parse_line(line), field))


def test_truncated_lines_and_garbage_lose_nothing_around_them():
    """A line cut short keeps what it has; garbage between lines is ignored."""
    text = "\n".join(
        [
            "step:0/10 val_loss:5.0000 train_time:0ms step_avg:nanms",
            "\x00\x01binary junk ### step: not-a-step",
            "Traceback (most recent call last):",
            "step:5/10 val_loss:4.1 train_ti",  # killed mid-line
            "step:6/10 val_loss:",  # cut right after the key
            "stepping stones: step:xx/yy",
            "[rank0] step:10/10 val_loss:3.9000 train_time:100ms step_avg:10.00ms extra:7",
        ]
    )
    points = parse_log(text)
    assert [p.step for p in points] == [0, 5, 6, 10]
    assert points[1].val_loss == pytest.approx(4.1) and points[1].train_time_ms is None
    assert points[2].val_loss is None
    assert points[3].val_loss == pytest.approx(3.9) and points[3].extra == {"extra": "7"}


def test_stream_parser_matches_batch_and_keeps_receipt_times():
    """Feeding lines one by one gives the same points, stamped with the harness clock."""
    text = SPEEDRUN_LOGS[0].read_text()
    parser = LogParser()
    for i, line in enumerate(text.splitlines()):
        parser.feed(line, received_s=i * 0.5)
    batch = parse_log(text)
    assert [p.model_dump(exclude={"received_s"}) for p in parser.points] == [
        p.model_dump(exclude={"received_s"}) for p in batch
    ]
    assert all(p.received_s is not None for p in parser.points)
    assert parser.last_val.val_loss == [p for p in batch if p.val_loss is not None][-1].val_loss


def test_format_round_trips():
    """The line the baseline prints parses back to the same numbers."""
    line = format_log_line(20, 240, 3001.4, 150.07, val_loss=2.54321)
    point = parse_line(line)
    assert (point.step, point.total_steps, point.val_loss) == (20, 240, pytest.approx(2.5432))
    assert point.train_time_ms == 3001 and point.step_avg_ms == pytest.approx(150.07)
