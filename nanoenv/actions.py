"""Actions into candidate scripts: accept what the agent sent, apply it, police the result.

Errors are :class:`PatchError` (outcome ``patch_failed``) or :class:`PolicyError` (``rejected``).
"""

from __future__ import annotations

from typing import Any

from nanoenv import patching
from nanoenv.errors import PatchError, PolicyError
from nanoenv.types import Action, TaskSpec


def coerce_action(action: Any, max_bytes: int) -> Action:
    """Accept a diff string, bytes, a dict or an Action.

    Raises:
        PatchError: the action has the wrong type or fields.
        PolicyError: bytes that are not UTF-8.
    """
    if isinstance(action, Action):
        return action
    if isinstance(action, bytes | bytearray):
        return Action(diff=patching.decode_action_text(bytes(action), "diff"))
    if isinstance(action, str):
        return Action(diff=action)
    if isinstance(action, dict):
        try:
            return Action.model_validate(action)
        except ValueError as e:
            raise PatchError(f"the action dict is not a valid nanoenv.Action: {e}") from None
    raise PatchError(
        f"an action must be a diff (str), a dict or a nanoenv.Action; got {type(action).__name__}"
    )


def build_script(
    action: Action, base_script: str, baseline: str, task: TaskSpec
) -> patching.Applied:
    """The candidate script an action makes from ``base_script``, policed against the task.

    Raises:
        PatchError: the diff does not parse or apply.
        PolicyError: size, encoding, other files, protected regions, empty script.
    """
    if action.script is not None:
        patching.check_text(action.script, "script", task.max_script_bytes)
        applied = patching.Applied(patching.normalize_text(action.script))
    elif action.is_noop:
        applied = patching.Applied(base_script, ["no-op: the base script runs unchanged"])
    else:
        assert action.diff is not None
        patching.check_text(action.diff, "diff", task.max_patch_bytes)
        applied = patching.apply_diff(base_script, action.diff, task.script)
    if not applied.script.strip():
        raise PolicyError("the script is empty")
    patching.check_text(applied.script, "script", task.max_script_bytes)
    patching.check_protected(baseline, applied.script, [r.name for r in task.protected])
    return applied


def syntax_error(script: str, name: str) -> str | None:
    """A readable SyntaxError for a Python script, or None if it compiles."""
    if not name.endswith(".py"):
        return None
    try:
        compile(script, name, "exec")
    except SyntaxError as e:
        where = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
        text = (e.text or "").rstrip()
        return f"SyntaxError in {name} at {where}: {e.msg}" + (f"\n    {text}" if text else "")
    except ValueError as e:  # e.g. "source code string cannot contain null bytes"
        return f"{name} cannot be compiled: {e}"
    return None


def defines_build_model(script: str) -> bool:
    """True when the script defines a top-level ``build_model`` (the verifier needs it)."""
    import ast

    try:
        tree = ast.parse(script)
    except SyntaxError:
        return False
    return any(isinstance(n, ast.FunctionDef) and n.name == "build_model" for n in tree.body)
