"""The edit formats models write besides unified diffs, read into the same hunks.

- **Bare ``@@`` hunks**: a unified-diff hunk whose header has no line ranges (``@@`` or
  ``@@ def main():``), placed by its context alone (read by patching.parse_diff).
- **apply_patch** (OpenAI's format, which Codex-style agents emit)::

      *** Begin Patch
      *** Update File: train.py
      @@ def main():
       context
      -old line
      +new line
      *** End Patch

  Text after ``@@`` names a line the hunk comes after (the format's scope marker).
- **SEARCH/REPLACE blocks** (Aider's)::

      train.py
      <<<<<<< SEARCH
      old lines
      =======
      new lines
      >>>>>>> REPLACE

Each parser returns patching's FilePatch/Hunk objects, so placing, applying and every error
message after parsing are the unified diff's own. Prose around the edit, markdown fences and
CRLF line ends are tolerated, as models write them.
"""

from __future__ import annotations

import re

from nanoenv.errors import PatchError

BEGIN_PATCH = "*** Begin Patch"
END_PATCH = "*** End Patch"
# Markers start their line (a diff's context line " <<<<<<< SEARCH" is not one).
SEARCH = re.compile(r"^<{5,9} SEARCH\s*$")
DIVIDER = re.compile(r"^={5,9}\s*$")
REPLACE = re.compile(r"^>{5,9} REPLACE\s*$")
_FILE_OP = re.compile(r"^\*\*\* (Update|Add|Delete) File: (.+)$")
_MOVE = "*** Move to: "
_FENCE = re.compile(r"^\s*```")


def detect(text: str) -> str:
    """Which format ``text`` is in: ``apply_patch``, ``search_replace`` or ``unified``."""
    lines = text.split("\n")
    if any(line.rstrip() == BEGIN_PATCH for line in lines):
        return "apply_patch"
    if any(SEARCH.match(line) for line in lines):
        return "search_replace"
    return "unified"


def parse_apply_patch(text: str) -> list:
    """Parse OpenAI's apply_patch envelope into file patches (one per ``*** Update File``).

    Raises:
        PatchError: no ``*** End Patch``, an operation other than updating a file, or a hunk
            line that is not context, removal or addition (the message names the line).
    """
    from nanoenv.actions.patching import FilePatch, Hunk

    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.rstrip() == BEGIN_PATCH)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].rstrip() == END_PATCH), None)
    if end is None:
        raise PatchError(f"the apply_patch edit has `{BEGIN_PATCH}` but no `{END_PATCH}` line")
    patches: list[FilePatch] = []
    current: FilePatch | None = None
    hunk: Hunk | None = None
    for i in range(start + 1, end):
        line = lines[i]
        where = f"line {i + 1} of the edit"
        if m := _FILE_OP.match(line):
            op, path = m.group(1), m.group(2).strip()
            if op != "Update":
                raise PatchError(
                    f"{where}: `*** {op} File` is not allowed; only `*** Update File:` of the "
                    "script (send a whole new script as Action(script=...))"
                )
            current, hunk = FilePatch(path, path), None
            patches.append(current)
        elif current is None:
            if line.strip():
                raise PatchError(f"{where} comes before any `*** Update File:` line: {line[:80]!r}")
        elif line.startswith(_MOVE):
            raise PatchError(f"{where}: `*** Move to:` is not allowed; the script keeps its name")
        elif line.strip() == "*** End of File":
            continue
        elif line.startswith("@@"):
            hunk = Hunk(line, 0, 0, bare=True, anchor=line[2:].strip() or None)
            current.hunks.append(hunk)
        elif line.startswith(("+", "-", " ")) or line == "":
            if hunk is None:  # the format allows a file's first hunk without an @@ line
                hunk = Hunk("@@", 0, 0, bare=True)
                current.hunks.append(hunk)
            hunk.lines.append((line[0], line[1:]) if line else (" ", ""))
        else:
            raise PatchError(
                f"{where} is not a context (` `), removed (`-`) or added (`+`) line: {line[:80]!r}"
            )
    for p in patches:
        for h in p.hunks:
            while h.lines and h.lines[-1] == (" ", ""):
                h.lines.pop()
    if not any(p.hunks for p in patches):
        raise PatchError("the apply_patch edit changes nothing: no hunk under `*** Update File:`")
    return patches


def parse_search_replace(text: str) -> list:
    """Parse Aider-style SEARCH/REPLACE blocks into one file patch, a hunk per block.

    A block's file name is the last non-fence line before it; blocks without one apply to the
    script (the caller checks the names). Raises PatchError for a block that is not closed,
    has no divider, or has an empty SEARCH part.
    """
    from nanoenv.actions.patching import FilePatch, Hunk

    lines = text.split("\n")
    blocks: list[tuple[str, Hunk]] = []
    i, name, n = 0, "", 0
    while i < len(lines):
        line = lines[i]
        if not SEARCH.match(line):
            if line.strip() and not _FENCE.match(line):
                name = line.strip()
            i += 1
            continue
        n += 1
        opened = i + 1
        divider = next((j for j in range(opened, len(lines)) if DIVIDER.match(lines[j])), None)
        close = next((j for j in range(opened, len(lines)) if REPLACE.match(lines[j])), None)
        if divider is None or close is None or close < divider:
            raise PatchError(
                f"SEARCH/REPLACE block {n} (line {opened}) is not closed: it needs a `=======` "
                "line and then a `>>>>>>> REPLACE` line"
            )
        old, new = lines[opened:divider], lines[divider + 1 : close]
        if not any(s.strip() for s in old):
            raise PatchError(
                f"SEARCH/REPLACE block {n} (line {opened}) has an empty SEARCH part: give the "
                "lines to replace (to replace the whole script, send Action(script=...))"
            )
        hunk = Hunk(f"SEARCH/REPLACE block {n}", 0, 0, search_all=True)
        hunk.lines = [("-", s) for s in old] + [("+", s) for s in new]
        blocks.append((_block_path(name), hunk))
        i, name = close + 1, ""
    # Blocks that name no file go with the one file the others name (or with the script).
    named = sorted({path for path, _ in blocks if path})
    patches = {path: FilePatch(path, path) for path in named} or {"": FilePatch(None, "")}
    for path, hunk in blocks:
        patches[path or next(iter(patches))].hunks.append(hunk)
    return list(patches.values())


def _block_path(name: str) -> str:
    """The file a block names: its path if the line before it looks like one, else ''."""
    name = name.strip("`*:# ").strip()
    if name and " " not in name and ("." in name or "/" in name):
        return name
    return ""
