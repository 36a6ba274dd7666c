"""Applying and policing patches: every header style, located hunks, and clear refusals."""

from __future__ import annotations

import pytest

from nanoenv.actions.patching import (
    apply_diff,
    check_text,
    decode_action_text,
    make_diff,
    parse_diff,
)
from nanoenv.actions.protected import check_protected, protected_regions
from nanoenv.errors import PatchError, PolicyError

SOURCE = "".join(f"line {i}\n" for i in range(1, 41))
CHANGED = SOURCE.replace("line 20\n", "line twenty\n").replace("line 35\n", "line 35\nnew line\n")


def _diff(fromfile="a/train.py", tofile="b/train.py", old=SOURCE, new=CHANGED) -> str:
    return make_diff(old, new).replace("a/train.py", fromfile, 1).replace("b/train.py", tofile, 1)


@pytest.mark.parametrize(
    "diff",
    [
        _diff(),
        _diff("train.py", "train.py"),
        _diff("./train.py", "./train.py"),
        "diff --git a/train.py b/train.py\nindex 123..456 100644\n" + _diff(),
        "\n".join(ln for ln in _diff().splitlines() if not ln.startswith(("---", "+++"))) + "\n",
        _diff().replace("\n", "\r\n"),
    ],
    ids=["git", "plain", "dot-slash", "git-extended", "bare-hunks", "crlf"],
)
def test_header_styles_apply(diff):
    """git-style, plain, extended git headers, bare hunks and CRLF all apply the same way."""
    assert apply_diff(SOURCE, diff, "train.py").script == CHANGED


def test_hunk_found_at_an_offset_and_noted():
    """A hunk whose line numbers are off still applies where its context is, with a note."""
    shifted = "header 1\nheader 2\nheader 3\n" + SOURCE
    applied = apply_diff(shifted, _diff(), "train.py")
    assert applied.script == "header 1\nheader 2\nheader 3\n" + CHANGED
    assert any("offset +3" in n for n in applied.notes)


def test_trailing_whitespace_is_forgiven():
    """Context that differs only in trailing spaces matches, with a note."""
    source = SOURCE.replace("line 19\n", "line 19   \n")
    applied = apply_diff(source, _diff(), "train.py")
    assert "line twenty" in applied.script
    assert any("trailing whitespace" in n for n in applied.notes)


def test_wrong_hunk_counts_read_by_body():
    """A model-written hunk with wrong counts in its header is read by its body."""
    diff = "--- a/train.py\n+++ b/train.py\n@@ -19,2 +19,9 @@\n line 19\n-line 20\n+line twenty\n line 21\n"
    assert apply_diff(SOURCE, diff, "train.py").script.count("line twenty") == 1


def test_empty_context_lines_without_space():
    """Blank context lines whose leading space was stripped still match blank lines."""
    source = "a\n\nb\n"
    diff = "--- a/train.py\n+++ b/train.py\n@@ -1,3 +1,3 @@\n a\n\n-b\n+c\n"
    assert apply_diff(source, diff, "train.py").script == "a\n\nc\n"


def test_dev_null_replaces_whole_script():
    """A diff from /dev/null is a whole new file."""
    diff = "--- /dev/null\n+++ b/train.py\n@@ -0,0 +1,2 @@\n+print(1)\n+print(2)\n"
    assert apply_diff(SOURCE, diff, "train.py").script == "print(1)\nprint(2)\n"


@pytest.mark.parametrize(
    ("diff", "error", "match"),
    [
        ("please make it faster", PatchError, "not a unified diff"),
        ("", PatchError, "not a unified diff"),
        ("--- a/train.py\n+++ b/train.py\n@@ -x +y @@\n", PatchError, "not a hunk header"),
        ("--- a/train.py\n+++ b/train.py\n@@ bogus @@\n", PatchError, "is empty"),
        (_diff("a/data.py", "b/data.py"), PolicyError, "only the script 'train.py' may change"),
        (_diff("a/../../etc/passwd", "b/../../etc/passwd"), PolicyError, "without `..`"),
        (_diff("/etc/train.py", "/etc/train.py"), PolicyError, "must be relative"),
        (
            "--- a/train.py\n+++ b/train.py\n@@ -20,1 +20,1 @@\n-line 2O\n+x\n",
            PatchError,
            r"hunk 1 of 1 \(@@ -20,1 \+20,1 @@\) does not apply.*reads 'line 20' but the hunk expects 'line 2O'",
        ),
    ],
    ids=[
        "prose",
        "empty",
        "bad-header",
        "empty-hunk",
        "other-file",
        "traversal",
        "absolute",
        "mismatch",
    ],
)
def test_bad_diffs_say_why(diff, error, match):
    """Malformed or foreign diffs fail with a message naming the problem."""
    with pytest.raises(error, match=match):
        apply_diff(SOURCE, diff, "train.py")


def test_second_hunk_failure_names_it():
    """When hunk 2 of 2 fails, the message says 2 of 2."""
    diff = _diff().replace(" line 36\n", " line 36 (edited)\n")
    with pytest.raises(PatchError, match=r"hunk 2 of 2"):
        apply_diff(SOURCE, diff, "train.py")


def test_parse_diff_keeps_sections():
    """Two file sections are two FilePatch objects."""
    two = _diff() + _diff("a/other.py", "b/other.py")
    assert [p.new_path for p in parse_diff(two)] == ["train.py", "other.py"]


@pytest.mark.parametrize(
    ("text", "limit", "match"),
    [
        ("x" * 2000, 1000, "2,000 bytes; the limit is 1,000"),
        ("ok\x00bad", 1000, "binary content: byte 0x00 on line 1"),
        ("a\nb\n\x07", 1000, "byte 0x07 on line 3"),
        ("lone surrogate \ud800", 1000, "not valid UTF-8"),
    ],
)
def test_check_text_refuses(text, limit, match):
    """Size, binary bytes and unencodable text are policy errors."""
    with pytest.raises(PolicyError, match=match):
        check_text(text, "diff", limit)


def test_invalid_utf8_bytes():
    """Bytes that are not UTF-8 are refused with the offset of the bad byte."""
    with pytest.raises(PolicyError, match="not valid UTF-8: byte 0xff at offset 3"):
        decode_action_text(b"abc\xff", "diff")


PROTECTED = """x = 1
# --- nanoenv: protected begin [data] ---
VAL_TOKENS = 16384
# --- nanoenv: protected end [data] ---
y = 2
"""


def test_protected_regions_unchanged_pass():
    """Edits outside protected regions are fine."""
    check_protected(PROTECTED, PROTECTED.replace("y = 2", "y = 3"), ["data"])
    assert "VAL_TOKENS" in protected_regions(PROTECTED)["data"]


@pytest.mark.parametrize(
    ("candidate", "match"),
    [
        (
            PROTECTED.replace("16384", "128"),
            r"changes the protected region \[data\].*VAL_TOKENS = 128",
        ),
        (PROTECTED.replace("# --- nanoenv: protected end [data] ---\n", ""), "no end marker"),
        ("x = 1\n", r"region \[data\] is gone"),
        (PROTECTED + PROTECTED, "begins twice"),
    ],
)
def test_protected_regions_guarded(candidate, match):
    """Changing, unbalancing, deleting or duplicating a protected region is refused."""
    with pytest.raises(PolicyError, match=match):
        check_protected(PROTECTED, candidate, ["data"])


def test_fuzz_drops_a_stale_context_line():
    """A hunk whose outer context line changed still applies with fuzz 1, noted."""
    source = SOURCE.replace("line 18\n", "line eighteen\n")
    diff = "--- a/train.py\n+++ b/train.py\n@@ -18,5 +18,5 @@\n line 18\n line 19\n-line 20\n+line twenty\n line 21\n line 22\n"
    applied = apply_diff(source, diff, "train.py")
    assert "line twenty\n" in applied.script and "line eighteen\n" in applied.script
    assert any("fuzz 1" in n for n in applied.notes)


def test_fuzz_never_applies_a_hunk_with_no_anchor_left():
    """Fuzz stops where a hunk would keep no context or removed line to anchor it."""
    diff = "--- a/train.py\n+++ b/train.py\n@@ -5,2 +5,3 @@\n nowhere a\n+new\n nowhere b\n"
    with pytest.raises(PatchError, match="does not apply"):
        apply_diff(SOURCE, diff, "train.py")


def test_a_huge_hunk_on_a_huge_script_applies_by_its_lines():
    """A 16,000-line hunk on a 32,000-line script (once minutes of sliding comparisons) is
    found by an index of lines; `benchmarks/patch_matching.py` times it."""
    script = "".join(f"x{i} = {i}\n" for i in range(32_000))
    lines = script.splitlines()
    body = "".join(f"-{ln}\n+{ln}  # changed\n" if i % 1000 == 0 else f" {ln}\n"
                   for i, ln in enumerate(lines[8_000:24_000]))  # fmt: skip
    diff = "--- a/train.py\n+++ b/train.py\n@@ -8001,16000 +8001,16000 @@\n" + body
    applied = apply_diff(script, diff, "train.py")
    out = applied.script.splitlines()
    assert (
        len(out) == 32_000
        and out[8_000] == "x8000 = 8000  # changed"
        and out[8_001] == "x8001 = 8001"
    )


def test_too_many_hunks_are_refused():
    """A diff of more hunks than any script change needs is refused, not ground through."""
    hunk = "@@ -1,1 +1,1 @@\n-a\n+b\n"
    with pytest.raises(PatchError, match="hunks; at most 2,000 apply"):
        apply_diff("a\n", "--- a/train.py\n+++ b/train.py\n" + hunk * 2001, "train.py")
