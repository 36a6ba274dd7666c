"""The edit formats models write: bare `@@` hunks, OpenAI's apply_patch, Aider's SEARCH/REPLACE.

Each sample is written the way a model answers: prose before and after, markdown fences,
CRLF line ends. Each must give the same script as the equivalent unified diff, and fail with
the same kind of precise message.
"""

from __future__ import annotations

import pytest

from nanoenv.actions.edit_formats import detect
from nanoenv.actions.patching import apply_diff, make_diff
from nanoenv.errors import PatchError, PolicyError
from nanoenv.tasks import DEFAULT_TASK, baseline_script, load_task

BASE = baseline_script(load_task(DEFAULT_TASK))
OLD_LR = "    learning_rate: float = 6e-3\n"
NEW_LR = "    learning_rate: float = 5e-3\n"
OLD_ACT = "        return self.c_proj(F.gelu(self.c_fc(x)))\n"
NEW_ACT = "        return self.c_proj(F.relu(self.c_fc(x)).square())\n"
WANT = BASE.replace(OLD_LR, NEW_LR).replace(OLD_ACT, NEW_ACT)


def test_the_samples_edit_real_lines():
    assert BASE.count(OLD_LR) == 1 and BASE.count(OLD_ACT) == 1


def _context(line: str, before: int = 2, after: int = 1) -> tuple[list[str], list[str]]:
    lines = BASE.split("\n")
    i = lines.index(line.rstrip("\n"))
    return lines[i - before : i], lines[i + 1 : i + 1 + after]


def _bare_hunk(old: str, new: str) -> str:
    pre, post = _context(old)
    return "\n".join(
        ["@@"] + [" " + s for s in pre] + ["-" + old.rstrip("\n"), "+" + new.rstrip("\n")]
        + [" " + s for s in post]
    )  # fmt: skip


BARE = (
    "Here is the change: a lower lr and ReLU squared.\n\n```diff\n--- a/train.py\n+++ b/train.py\n"
    + _bare_hunk(OLD_LR, NEW_LR) + "\n" + _bare_hunk(OLD_ACT, NEW_ACT)
    + "\n```\n\nThis should train faster.\n"
)  # fmt: skip

APPLY_PATCH = f"""I'll make two edits.

```
*** Begin Patch
*** Update File: train.py
@@ class Hyperparameters:
-{OLD_LR.rstrip()}
+{NEW_LR.rstrip()}
@@ class MLP(nn.Module):
-{OLD_ACT.rstrip()}
+{NEW_ACT.rstrip()}
*** End Patch
```
Done.
"""

SEARCH_REPLACE = f"""Two edits:

train.py
```python
<<<<<<< SEARCH
{OLD_ACT.rstrip()}
=======
{NEW_ACT.rstrip()}
>>>>>>> REPLACE
```

train.py
```python
<<<<<<< SEARCH
{OLD_LR.rstrip()}
=======
{NEW_LR.rstrip()}
>>>>>>> REPLACE
```
(the blocks need not come in file order)
"""


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize(
    ("edit", "kind"),
    [(BARE, "unified"), (APPLY_PATCH, "apply_patch"), (SEARCH_REPLACE, "search_replace")],
    ids=["bare-hunk", "apply-patch", "search-replace"],
)
def test_each_format_gives_the_diffs_script(edit, kind, crlf):
    assert detect(edit) == kind
    text = edit.replace("\n", "\r\n") if crlf else edit
    assert apply_diff(BASE, text, "train.py").script == WANT
    assert apply_diff(BASE, make_diff(BASE, WANT), "train.py").script == WANT


def test_a_diff_whose_context_holds_a_marker_stays_a_diff():
    """A unified diff of a script that itself contains the markers (as context) is a diff."""
    source = "x = 1\n<<<<<<< SEARCH\n*** Begin Patch\ny = 2\n"
    diff = make_diff(source, source.replace("y = 2", "y = 3"))
    assert detect(diff) == "unified"
    assert apply_diff(source, diff, "train.py").script == source.replace("y = 2", "y = 3")


def test_a_bare_hunk_goes_after_the_one_before():
    """Without line numbers, a context that occurs twice is taken after the previous hunk."""
    source = "def a():\n    x = 1\n    return x\n\ndef b():\n    x = 1\n    return x\n"
    diff = "@@\n def b():\n-    x = 1\n+    x = 2\n"
    assert (
        apply_diff(source, diff, "train.py").script
        == source[::-1].replace("1 = x", "2 = x", 1)[::-1]
    )


def test_an_apply_patch_insertion_goes_after_its_anchor():
    """`@@ line` followed only by `+` lines: inserted right after that line, without a note."""
    edit = "*** Begin Patch\n*** Update File: train.py\n@@ class MLP(nn.Module):\n+    # ReLU^2 next\n*** End Patch\n"
    applied = apply_diff(BASE, edit, "train.py")
    assert applied.script == BASE.replace(
        "class MLP(nn.Module):\n", "class MLP(nn.Module):\n    # ReLU^2 next\n"
    )
    assert applied.notes == []
    assert (
        apply_diff(BASE, APPLY_PATCH, "train.py").notes == []
    )  # placed by context: no offset notes


def test_a_scope_note_after_the_bare_at_signs_is_allowed():
    diff = f"@@ class MLP(nn.Module):\n-{OLD_ACT.rstrip()}\n+{NEW_ACT.rstrip()}\n"
    assert apply_diff(BASE, diff, "train.py").script == BASE.replace(OLD_ACT, NEW_ACT)


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        ("@@\n+print('hi')\n", PatchError, "only adds lines and has no line numbers"),
        (f"@@\n-{OLD_LR.rstrip()}X\n+x\n", PatchError, r"hunk 1 of 1 \(@@\) does not apply.*closest"),
        ("*** Begin Patch\n*** Update File: train.py\n@@\n-x\n", PatchError, "no `\\*\\*\\* End Patch`"),
        ("*** Begin Patch\n*** Add File: evil.py\n+x\n*** End Patch\n", PatchError, "Add File` is not allowed"),
        ("*** Begin Patch\n*** Delete File: train.py\n*** End Patch\n", PatchError, "Delete File` is not allowed"),
        (f"*** Begin Patch\n*** Update File: data.py\n@@\n-{OLD_LR.rstrip()}\n+x\n*** End Patch\n",
         PolicyError, "only the script 'train.py' may change"),
        ("*** Begin Patch\n*** Update File: train.py\n@@ def nowhere():\n-x\n+y\n*** End Patch\n",
         PatchError, "the line it comes after, 'def nowhere\\(\\):', is not in train.py"),
        ("*** Begin Patch\n*** Update File: train.py\nhello\n*** End Patch\n", PatchError,
         "line 3 of the edit is not a context"),
        ("<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n", PatchError, "block 1 .* is not closed"),
        ("<<<<<<< SEARCH\n=======\nx = 2\n>>>>>>> REPLACE\n", PatchError, "empty SEARCH part"),
        ("<<<<<<< SEARCH\nnot in the script\n=======\nx\n>>>>>>> REPLACE\n", PatchError,
         r"hunk 1 of 1 \(SEARCH/REPLACE block 1\) does not apply"),
        (f"../../etc/passwd\n<<<<<<< SEARCH\n{OLD_LR.rstrip()}\n=======\nx\n>>>>>>> REPLACE\n",
         PolicyError, "without `..`"),
        (f"<<<<<<< SEARCH\n{OLD_LR}{OLD_LR}=======\nx\n>>>>>>> REPLACE\n", PatchError, "does not apply"),
    ],
    ids=["bare-insertion", "bare-mismatch", "no-end", "add-file", "delete-file", "other-file",
         "missing-anchor", "stray-line", "unclosed", "empty-search", "search-mismatch",
         "traversal", "twice"],
)  # fmt: skip
def test_bad_edits_say_why(edit, error, match):
    with pytest.raises(error, match=match):
        apply_diff(BASE, edit, "train.py")


def test_overlapping_blocks_are_refused():
    edit = (
        f"<<<<<<< SEARCH\n{OLD_LR.rstrip()}\n=======\n{NEW_LR.rstrip()}\n>>>>>>> REPLACE\n"
        f"<<<<<<< SEARCH\n{OLD_LR.rstrip()}\n=======\nx\n>>>>>>> REPLACE\n"
    )
    with pytest.raises(PatchError, match="overlap"):
        apply_diff(BASE, edit, "train.py")


def test_an_episode_polices_a_block_like_a_diff(unstepped_track):
    """Through env.step: a SEARCH/REPLACE block is applied and policed as a diff is: it may not
    edit a protected region."""
    from nanoenv import Action, Outcome

    env = unstepped_track
    task = env.unwrapped.task
    base = baseline_script(task)
    line = next(s for s in base.split("\n") if s.startswith("VAL_TOKENS = "))
    edit = f"<<<<<<< SEARCH\n{line}\n=======\nVAL_TOKENS = 1024\n>>>>>>> REPLACE\n"
    result = env.step(Action(diff=edit, base=0))[4]["result"]
    assert result.outcome is Outcome.REJECTED and "protected region [data]" in result.message
