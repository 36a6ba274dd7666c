"""Gymnasium spaces for scripts and reports: text of any Unicode, and the observation dict.

Gymnasium's :class:`~gymnasium.spaces.Text` holds strings over a fixed character set, and
its vector-env shared memory stores each character as its index in that set. A script may
hold any character (a ``²`` in a comment), so :class:`UnicodeText` makes the "set" all of
Unicode, indexed by code point, without materializing it. Samples stay short printable ASCII.

``AsyncVectorEnv`` (with its default ``shared_memory=True``) reads its observation buffer
once, when it starts: right for arrays, which are views of the shared memory, but a Text
space reads as a tuple of strings frozen at that moment, so every later observation would
repeat it (Farama-Foundation/Gymnasium#1164 describes the read-once design). For
:class:`UnicodeText` we register a reader that returns a live view instead, which decodes
the shared memory whenever it is read or copied.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import read_from_shared_memory

from nanoenv.types import Outcome

_UNICODE_SIZE = 0x110000
_SAMPLE_CHARS = string.ascii_letters + string.digits + " \n+-@,"


class _CodePoints(Sequence[str]):
    """All Unicode characters as a read-only sequence and set, indexed by code point."""

    def __len__(self) -> int:
        return _UNICODE_SIZE

    def __getitem__(self, i):  # type: ignore[override]
        return chr(i)

    def __contains__(self, c: object) -> bool:
        return isinstance(c, str) and len(c) == 1

    def __iter__(self):
        # Never iterate 1.1M characters by accident (e.g. in a repr).
        return iter(_SAMPLE_CHARS)


_ALL = _CodePoints()


class UnicodeText(spaces.Text):
    """A :class:`~gymnasium.spaces.Text` space whose characters are all of Unicode."""

    def __init__(self, max_length: int, *, min_length: int = 0, seed: int | None = None) -> None:
        super().__init__(max_length, min_length=min_length, charset=_SAMPLE_CHARS, seed=seed)

    @property
    def character_set(self) -> Any:  # type: ignore[override]
        return _ALL

    @property
    def character_list(self) -> Any:  # type: ignore[override]
        return _ALL

    def character_index(self, char: str) -> np.int32:
        return np.int32(ord(char))

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        """A short random string of printable ASCII (to an env: a malformed patch)."""
        length = int(self.np_random.integers(self.min_length, min(self.max_length, 64) + 1))
        return "".join(self.np_random.choice(list(_SAMPLE_CHARS), size=length))

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, UnicodeText)
            and self.min_length == other.min_length
            and self.max_length == other.max_length
        )


class LiveTextBatch(Sequence[str]):
    """The strings of a batch of envs, decoded from vector-env shared memory on every read."""

    def __init__(self, space: UnicodeText, shared_memory: Any, n: int) -> None:
        self._data = np.frombuffer(shared_memory.get_obj(), dtype=np.int32).reshape(
            n, space.max_length
        )

    def _decode(self, row: np.ndarray) -> str:
        end = int(np.argmax(row >= _UNICODE_SIZE)) if (row >= _UNICODE_SIZE).any() else len(row)
        return "".join(map(chr, row[:end].tolist()))

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return tuple(self._decode(r) for r in self._data[i])
        return self._decode(self._data[i])

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, Sequence) else other)

    def __deepcopy__(self, memo: dict[int, Any]) -> tuple[str, ...]:
        return tuple(self)  # AsyncVectorEnv copies observations out: hand it plain strings

    def __repr__(self) -> str:
        return repr(tuple(self))


@read_from_shared_memory.register(UnicodeText)
def _read_unicode_text(space: UnicodeText, shared_memory: Any, n: int = 1) -> LiveTextBatch:
    return LiveTextBatch(space, shared_memory, n)


OUTCOMES = tuple(o.value for o in Outcome)
MAX_CURVE_POINTS = 128
MAX_FEEDBACK_CHARS = 16_000


def observation_space(max_script_chars: int) -> spaces.Dict:
    """The observation: the current script, a report, and the run's numbers.

    ``val_loss`` and ``train_time_s`` are ``inf`` when the step produced none; ``curve`` holds
    ``curve_points`` rows of (step, train_time_s, val_loss), the rest zeros.
    """
    scalar = spaces.Box(-np.inf, np.inf, shape=(), dtype=np.float64)
    return spaces.Dict(
        {
            "script": UnicodeText(max_script_chars),
            "feedback": UnicodeText(MAX_FEEDBACK_CHARS),
            "outcome": UnicodeText(16),
            "val_loss": scalar,
            "train_time_s": scalar,
            "curve": spaces.Box(-np.inf, np.inf, shape=(MAX_CURVE_POINTS, 3), dtype=np.float64),
            "curve_points": spaces.Discrete(MAX_CURVE_POINTS + 1),
        }
    )


def action_space(max_chars: int) -> UnicodeText:
    """Actions as text: an edit, e.g. a unified diff (``""`` is a no-op). The env also takes
    Action and dicts."""
    return UnicodeText(max_chars)
