"""Apply and police patches: which file, how big, what encoding (regions: protected.py).

A patch is a unified diff against the task's one script, with git-style (``a/train.py``,
``b/train.py``) or plain (``train.py``) headers, or bare hunks with no file header at all; a
hunk header may be a bare ``@@`` without line ranges (placed by its context). OpenAI's
apply_patch envelope and Aider's SEARCH/REPLACE blocks are read into the same hunks
(edit_formats.py).
Hunks are located the way GNU patch does it, exact context first at the stated line and then
at the nearest offset; failing that, ignoring trailing whitespace; failing that, with fuzz 1
or 2 (a context line or two dropped at each end of the hunk), noted in the step's feedback. Hunk headers whose line
counts are wrong (common in hand- or model-written diffs) are read by their body instead.

Errors come in two kinds: :class:`PatchError` (the diff is malformed or does not apply,
outcome ``patch_failed``) and :class:`PolicyError` (it breaks a rule of the task, outcome
``rejected``). Both say which hunk or file, and why.
"""

from __future__ import annotations

import difflib
import itertools
import posixpath
import re
from dataclasses import dataclass, field

from nanoenv.actions import edit_formats
from nanoenv.errors import PatchError, PolicyError

MAX_HUNKS = 2000
MAX_COMPARED = 50_000_000  # about a second of list comparisons
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
# `@@`, `@@ @@` or `@@ def main():` (a scope note some diff writers add): no ranges at all.
_BARE_HUNK = re.compile(r"^@@(?:\s*|\s+[^\s+-].*)$")
# Control characters that never belong in a script (tab, newline and carriage return do).
_BINARY = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


@dataclass
class Hunk:
    """One ``@@`` hunk: its header numbers and its body as (tag, text) pairs."""

    header: str
    old_start: int
    new_start: int
    lines: list[tuple[str, str]] = field(default_factory=list)
    bare: bool = False  # no line numbers: placed by context alone, after the hunk before
    anchor: str | None = None  # apply_patch's `@@ line`: the hunk comes after this line
    search_all: bool = False  # a SEARCH/REPLACE block: anywhere in the script, not in order

    @property
    def old(self) -> list[str]:
        return [t for tag, t in self.lines if tag in " -"]

    @property
    def new(self) -> list[str]:
        return [t for tag, t in self.lines if tag in " +"]


@dataclass
class FilePatch:
    """The hunks for one file of a diff."""

    old_path: str | None
    new_path: str | None
    hunks: list[Hunk] = field(default_factory=list)


@dataclass
class Applied:
    """The result of applying a diff: the new script and notes for the agent."""

    script: str
    notes: list[str] = field(default_factory=list)


def normalize_text(text: str) -> str:
    """Unix line ends, so diffs written on any platform match."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _strip_path(raw: str) -> str | None:
    """``a/train.py\\t2024-..`` -> ``train.py``; ``/dev/null`` -> None."""
    path = raw.split("\t")[0].strip()
    if path.startswith('"') and path.endswith('"'):
        path = path[1:-1]
    if path == "/dev/null":
        return None
    if path.startswith(("a/", "b/")):
        path = path[2:]
    return path


def parse_edit(text: str) -> list[FilePatch]:
    """Parse an edit in any accepted format (unified diff, apply_patch, SEARCH/REPLACE)."""
    text = normalize_text(text)
    kind = edit_formats.detect(text)
    if kind == "apply_patch":
        return edit_formats.parse_apply_patch(text)
    if kind == "search_replace":
        return edit_formats.parse_search_replace(text)
    return parse_diff(text)


def parse_diff(diff: str) -> list[FilePatch]:
    """Parse a unified diff into file patches.

    Raises:
        PatchError: the text holds no hunk, or a hunk header is malformed.
    """
    lines = normalize_text(diff).split("\n")
    patches: list[FilePatch] = []
    current: FilePatch | None = None
    hunk: Hunk | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        is_header = (
            line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")
        )
        if is_header:
            current = FilePatch(_strip_path(line[4:]), _strip_path(lines[i + 1][4:]))
            patches.append(current)
            hunk = None
            i += 2
            continue
        if line.startswith("diff ") or line.startswith("index ") or line.startswith("Index: "):
            hunk = None
        elif line.startswith("@@"):
            m = _HUNK.match(line)
            if m is None and not _BARE_HUNK.match(line):
                raise PatchError(
                    f"line {i + 1} of the diff is not a hunk header: {line[:80]!r} "
                    "(expected `@@ -start,count +start,count @@`, or a bare `@@`)"
                )
            if current is None:  # hunks with no file header apply to the script
                current = FilePatch(None, "")
                patches.append(current)
            if m is None:  # `@@` or `@@ def main():`: no line numbers, found by context
                hunk = Hunk(line, 0, 0, bare=True)
            else:
                hunk = Hunk(line, int(m.group(1)), int(m.group(3)))
            current.hunks.append(hunk)
        elif hunk is not None:
            if line.startswith(("+", "-", " ")):
                hunk.lines.append((line[0], line[1:]))
            elif line == "":
                # Editors and models drop the space of empty context lines; keep them as context.
                hunk.lines.append((" ", ""))
            elif line.startswith("\\"):
                pass  # "\ No newline at end of file"
            else:
                hunk = None  # the hunk is over; what follows is commentary
        i += 1
    for p in patches:
        for h in p.hunks:
            while h.lines and h.lines[-1] == (" ", ""):
                h.lines.pop()  # trailing blank lines of the diff text, not context
    patches = [p for p in patches if p.hunks or p.old_path is None]
    if not any(p.hunks for p in patches):
        raise PatchError(
            "the action is not a unified diff: no `@@ -a,b +c,d @@` hunk found. Send a diff "
            "(e.g. from `diff -u` or `git diff`), or the whole script as Action(script=...)"
        )
    return patches


def _target_ok(path: str | None, script_name: str) -> bool:
    if path is None or path == "":
        return True
    if path.startswith("/") or ".." in path.split("/"):
        return False
    return posixpath.basename(posixpath.normpath(path)) == script_name


class LineIndex:
    """Where each line of a script occurs (exactly, and with trailing whitespace stripped), so
    that a hunk is found by its rarest line instead of by sliding it along the whole script.
    Built once per diff; matching a hunk costs about its length times that line's count."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = {False: lines, True: [s.rstrip() for s in lines]}
        self.where: dict[bool, dict[str, list[int]]] = {}
        self.compared = 0  # lines compared so far, against MAX_COMPARED
        for strip, text in self.lines.items():
            where: dict[str, list[int]] = {}
            for i, line in enumerate(text):
                where.setdefault(line, []).append(i)
            self.where[strip] = where

    def find(self, block: list[str], start: int, lo: int, strip: bool) -> int | None:
        """Index (at or after ``lo``) where ``block`` matches, nearest to ``start``."""
        lines, where = self.lines[strip], self.where[strip]
        if strip:
            block = [s.rstrip() for s in block]
        n, m = len(lines), len(block)
        if m == 0 or m > n - lo:
            return None
        k = min(range(m), key=lambda j: len(where.get(block[j], ())))  # the rarest line
        starts = [p - k for p in where.get(block[k], ()) if lo <= p - k <= n - m]
        for pos in sorted(starts, key=lambda p: (abs(p - start), p)):
            self.compared += m
            if self.compared > MAX_COMPARED:  # a diff built to be ambiguous: bounded, refused
                raise PatchError(
                    f"the diff is too ambiguous to place: over {MAX_COMPARED:,} lines compared; "
                    "give hunks with distinctive context lines"
                )
            if lines[pos : pos + m] == block:
                return pos
        return None

    def closest(self, block: list[str], want: int) -> str:
        """Describe where the block comes closest to matching (ties: nearest ``want``)."""
        lines = self.lines[False]
        if not block:
            return ""
        votes: dict[int, int] = {}
        for j, line in enumerate(block):
            places = self.where[False].get(line, ())
            if len(places) <= _MAX_VOTES:  # a line found everywhere (blank, `else:`) says nothing
                for p in places:
                    votes[p - j] = votes.get(p - j, 0) + 1
        # No line of it anywhere: the closest place is where the hunk header says.
        best_pos = max(votes, key=lambda p: (votes[p], -abs(p - want))) if votes else want
        best_pos = min(max(best_pos, 0), max(len(lines) - 1, 0))
        window = lines[best_pos : best_pos + len(block)]
        score = sum(a == b for a, b in zip(window, block, strict=False))
        for k, expected in enumerate(block):
            got = lines[best_pos + k] if best_pos + k < len(lines) else "<end of file>"
            if got != expected:
                return (
                    f" The closest place is line {best_pos + 1} ({score}/{len(block)} lines match); "
                    f"there line {best_pos + k + 1} reads {got!r} but the hunk expects {expected!r}."
                )
        return ""


_MAX_VOTES = 64


def _trim(hunk: Hunk, fuzz: int) -> tuple[list[str], list[str]] | None:
    """The hunk with up to ``fuzz`` context lines dropped at each end (GNU patch's fuzz)."""
    body = list(hunk.lines)
    for _ in range(fuzz):
        if body and body[0][0] == " ":
            body.pop(0)
        if body and body[-1][0] == " ":
            body.pop()
    if not any(tag == " " for tag, _ in body) and not any(tag == "-" for tag, _ in body):
        return None  # nothing left to anchor on
    return [t for tag, t in body if tag in " -"], [t for tag, t in body if tag in " +"]


def _locate(
    index: LineIndex, hunk: Hunk, want: int, lo: int
) -> tuple[int, list[str], list[str], str] | None:
    """Where a hunk applies: exactly, ignoring trailing whitespace, or with fuzz 1 or 2 (fewer
    context lines at its ends, as GNU patch does). Returns (position, old, new, how)."""
    for fuzz in (0, 1, 2):
        trimmed = (hunk.old, hunk.new) if fuzz == 0 else _trim(hunk, fuzz)
        if trimmed is None:
            break
        old, new = trimmed
        for strip in (False, True):
            pos = index.find(old, want + (len(hunk.old) - len(old)) // 2, lo, strip=strip)
            if pos is not None:
                how = " ".join(filter(None, ("ignoring trailing whitespace" if strip else "",
                                             f"with fuzz {fuzz}" if fuzz else "")))  # fmt: skip
                return pos, old, new, how
    return None


def _place(
    index: LineIndex, hunk: Hunk, k: int, total: int, lo: int, script: str, notes: list[str]
) -> tuple[int, list[str], list[str]]:
    """Where hunk ``k`` applies, at or after line ``lo``: (position, old lines, new lines).
    Notes how it matched when not exactly where its header says."""
    old, new = hunk.old, hunk.new
    if not old and not new:
        raise PatchError(f"hunk {k} of {total} ({hunk.header}) is empty: it has no lines")
    if hunk.anchor is not None:
        lo = _after_anchor(index, hunk, k, total, lo, script)
        if not old:  # apply_patch's `@@ line` then only `+` lines: right after that line
            return lo, old, new
    if not old:
        if hunk.bare:
            raise PatchError(
                f"hunk {k} of {total} ({hunk.header}) only adds lines and has no line numbers, "
                "so there is nothing to place it by: add a context line or two around it"
            )
        return min(max(hunk.old_start, lo), len(index.lines[False])), old, new  # after old_start
    want = lo if hunk.bare or hunk.search_all else hunk.old_start - 1
    found = _locate(index, hunk, want, lo)
    if found is None and hunk.search_all and lo:
        found = _locate(index, hunk, 0, 0)
    if found is None:
        raise PatchError(
            f"hunk {k} of {total} ({hunk.header}) does not apply: its {len(old)} context and "
            f"removed lines are not in {script}"
            + (f" after line {lo}" if lo and not hunk.search_all else "")
            + "."
            + index.closest(old, want)
        )
    pos, old, new, how = found
    if how:
        notes.append(f"hunk {k} matched {how}")
    if pos != want and not (hunk.bare or hunk.search_all):
        notes.append(f"hunk {k} applied at line {pos + 1} (offset {pos - want:+d} lines)")
    return pos, old, new


def _after_anchor(index: LineIndex, hunk: Hunk, k: int, total: int, lo: int, script: str) -> int:
    """The line after apply_patch's ``@@ anchor`` (a line of the script, matched stripped)."""
    want = hunk.anchor.strip() if hunk.anchor else ""
    for i in range(lo, len(index.lines[True])):
        if index.lines[True][i].strip() == want:
            return i + 1
    raise PatchError(
        f"hunk {k} of {total} ({hunk.header}) does not apply: the line it comes after, "
        f"{want!r}, is not in {script}" + (f" after line {lo}" if lo else "")
    )


def apply_diff(source: str, diff: str, script_name: str) -> Applied:
    """Apply a unified diff to the script ``script_name`` whose text is ``source``.

    Raises:
        PatchError: the diff is malformed or a hunk does not apply (the message names it).
        PolicyError: the diff touches a file other than the script, or a path outside it.
    """
    patches = parse_edit(diff)
    for p in patches:
        for path in (p.old_path, p.new_path):
            if not _target_ok(path, script_name):
                raise PolicyError(
                    f"the diff changes {path!r}; only the script {script_name!r} may change "
                    "(paths must be relative, without `..`)"
                )
    if len(patches) > 1:
        raise PatchError(f"the diff has {len(patches)} sections for {script_name!r}; send one")
    patch = patches[0]
    if patch.old_path is None and patch.new_path:  # `--- /dev/null`: the whole file is new
        return Applied(
            "\n".join(patch.hunks[0].new) + "\n",
            ["the diff creates the script from /dev/null: it replaces it whole"],
        )

    text = normalize_text(source)
    had_newline = text.endswith("\n")
    lines = text.split("\n")
    if had_newline:
        lines.pop()
    if len(patch.hunks) > MAX_HUNKS:
        raise PatchError(f"the diff has {len(patch.hunks):,} hunks; at most {MAX_HUNKS:,} apply")
    # Every hunk is found in the original script (hunks apply in order, each after the one
    # before), so one index serves them all; the edits are made at the end.
    index = LineIndex(lines)
    notes: list[str] = []
    edits: list[tuple[int, int, list[str]]] = []  # (position, lines removed, lines put there)
    lo = 0
    for k, hunk in enumerate(patch.hunks, start=1):
        pos, old, new = _place(index, hunk, k, len(patch.hunks), lo, script_name, notes)
        edits.append((pos, len(old), new))
        lo = pos + len(old)
    edits.sort(key=lambda e: e[0])  # SEARCH/REPLACE blocks may come in any order
    for (p1, n1, _), (p2, _, _) in itertools.pairwise(edits):
        if p1 + n1 > p2:
            raise PatchError(
                f"two edits overlap at line {p2 + 1} of {script_name}: merge them into one"
            )
    out: list[str] = []
    at = 0
    for pos, removed, new in edits:
        out += lines[at:pos]
        out += new
        at = pos + removed
    out += lines[at:]
    return Applied("\n".join(out) + ("\n" if had_newline or not out else ""), notes)


def make_diff(old: str, new: str, script_name: str = "train.py") -> str:
    """A git-style unified diff from ``old`` to ``new`` (empty if they are equal)."""
    return "".join(
        difflib.unified_diff(
            normalize_text(old).splitlines(keepends=True),
            normalize_text(new).splitlines(keepends=True),
            fromfile=f"a/{script_name}",
            tofile=f"b/{script_name}",
        )
    )


# --------------------------------------------------------------------------- policy


def check_text(text: str, what: str, max_bytes: int) -> None:
    """Police an incoming diff or script: size, and no binary content.

    Raises:
        PolicyError: naming the size or the first binary character and where it is.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise PolicyError(f"the {what} is {size:,} bytes; the limit is {max_bytes:,} bytes")
    if m := _BINARY.search(text):
        line = text.count("\n", 0, m.start()) + 1
        raise PolicyError(
            f"the {what} holds binary content: byte {ord(m.group()):#04x} on line {line}"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PolicyError(f"the {what} is not valid UTF-8 text: {e.reason}") from None


def decode_action_text(data: bytes, what: str) -> str:
    """Decode bytes that an agent sent as text; invalid UTF-8 is a policy error."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(
            f"the {what} is not valid UTF-8: byte {data[e.start]:#04x} at offset {e.start}"
        ) from None
