"""Fidelity: does a gain on a track predict a gain in the speedrun? The statistics of the suite.

A suite is a list of ideas from the speedrun's record history, each run as a patch on a track's
baseline alone, paired with the baseline by seed. This module holds what is computed from those
runs (benchmarks/fidelity.py runs them):

- an idea's **effect** on the track: the mean over seeds of (idea - baseline) in final val loss,
  with the standard error of that paired mean; its **gain** is minus the effect;
- the **record's gain**: log(time before / time after) of the record that brought the idea,
  shared equally among the changes that record names (a record of four changes credits each
  with a quarter), so that a bundle does not rank each of its parts as the whole;
- **agreement**: the track's gain has the sign of the record's (a negative control, which has
  no record, agrees when it loses on the track);
- **spearman**: the rank correlation of the track's gains with the records' gains (ideas only);
- **noise floor**: the smallest effect the track detects at p < 0.01 (one-sided, paired) with
  n seeds: t(0.99, df) x the pooled sd of the paired differences / sqrt(n).
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

P_DETECT = 0.01


@dataclass(frozen=True)
class Idea:
    """One entry of a suite's ideas.toml."""

    name: str
    title: str
    control: bool = False
    record: int | None = None
    record_title: str = ""
    date: str = ""
    before_min: float | None = None
    after_min: float | None = None
    ideas_in_record: int = 1
    why: str = ""

    @property
    def record_gain(self) -> float | None:
        """log(before / after) of the idea's record, shared among the changes it names."""
        if self.before_min is None or self.after_min is None:
            return None
        return math.log(self.before_min / self.after_min) / self.ideas_in_record

    @property
    def expected_sign(self) -> int:
        """+1 for an idea the speedrun kept, -1 for a negative control."""
        return -1 if self.control else 1


def load_ideas(path: Path) -> list[Idea]:
    """The ideas of a suite file (``[[idea]]`` tables)."""
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    ideas = [Idea(**entry) for entry in raw.get("idea", [])]
    names = [i.name for i in ideas]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: idea names repeat")
    for idea in ideas:
        if not idea.control and idea.record_gain is None:
            raise ValueError(f"{path}: idea {idea.name} has no record times and is not a control")
    return ideas


@dataclass
class Paired:
    """An idea's paired differences from the baseline, one per seed (None: no value that seed)."""

    diffs: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.diffs) if self.diffs else None

    @property
    def se(self) -> float | None:
        return statistics.stdev(self.diffs) / math.sqrt(self.n) if self.n > 1 else None


def paired(base: dict[int, float | None], idea: dict[int, float | None]) -> Paired:
    """idea - baseline for every seed where both have a finite value."""
    diffs = [
        idea[s] - base[s]  # type: ignore[operator]
        for s in sorted(base)
        if s in idea and _finite(base[s]) and _finite(idea[s])
    ]
    return Paired(diffs)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def agrees(idea: Idea, gain: float | None) -> bool:
    """The track's gain points the way the speedrun's did (a zero or missing gain does not)."""
    return gain is not None and gain != 0 and math.copysign(1, gain) == idea.expected_sign


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (scipy's: average ranks for ties); None below three pairs."""
    if len(xs) != len(ys):
        raise ValueError("spearman needs pairs")
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    from scipy import stats

    return float(stats.spearmanr(xs, ys).statistic)


def noise_floor(groups: list[Paired], n_seeds: int) -> float | None:
    """The smallest mean paired effect significant at p < 0.01 (one-sided) with n_seeds seeds.

    The sd of a paired difference is pooled over every idea (each contributes n - 1 degrees of
    freedom), so that two seeds per idea still give a usable estimate.
    """
    from scipy import stats

    dof = sum(g.n - 1 for g in groups if g.n > 1)
    if dof == 0 or n_seeds < 1:
        return None
    ss = sum(statistics.variance(g.diffs) * (g.n - 1) for g in groups if g.n > 1)
    sd = math.sqrt(ss / dof)
    return float(stats.t.ppf(1 - P_DETECT, dof)) * sd / math.sqrt(n_seeds)


def summarize(ideas: list[Idea], effects: dict[str, Paired]) -> dict[str, Any]:
    """Rows per idea and the suite's agreement, rank correlation and noise floor (loss effects)."""
    rows = []
    for idea in ideas:
        p = effects.get(idea.name, Paired())
        gain = None if p.mean is None else -p.mean
        rows.append({
            "name": idea.name, "title": idea.title, "control": idea.control,
            "record": idea.record, "record_title": idea.record_title, "date": idea.date,
            "before_min": idea.before_min, "after_min": idea.after_min,
            "record_gain": idea.record_gain,
            "effect": p.mean, "se": p.se, "n": p.n,
            "agrees": agrees(idea, gain),
        })  # fmt: skip
    ranked = [r for r in rows if r["record_gain"] is not None and r["effect"] is not None]
    n_seeds = max((r["n"] for r in rows), default=0)
    return {
        "ideas": rows,
        "agreement": sum(r["agrees"] for r in rows) / len(rows) if rows else None,
        "spearman": spearman([r["record_gain"] for r in ranked], [-r["effect"] for r in ranked]),
        "noise_floor": noise_floor(list(effects.values()), n_seeds),
        "seeds": n_seeds,
    }
