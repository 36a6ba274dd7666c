"""Actions into candidate scripts: accept what the agent sent, apply it, police the result.

Errors are :class:`PatchError` (outcome ``patch_failed``) or :class:`PolicyError` (``rejected``).
"""

from __future__ import annotations

from typing import Any

from nanoenv.actions import patching, protected
from nanoenv.errors import PatchError, PolicyError
from nanoenv.types import Action, TaskSpec


def coerce_action(action: Any, max_bytes: int, max_script_bytes: int | None = None) -> Action:
    """Accept a diff string, bytes, a dict or an Action; refuse one over its size limit
    (``max_bytes`` for a diff, ``max_script_bytes`` for a whole script) before it is kept.

    Raises:
        PatchError: the action has the wrong type or fields.
        PolicyError: bytes that are not UTF-8.
    """
    if isinstance(action, bytes | bytearray):
        _check_size(len(action), "diff", max_bytes)
        action = patching.decode_action_text(bytes(action), "diff")
    if isinstance(action, str):
        _check_size(len(action.encode("utf-8", "surrogatepass")), "diff", max_bytes)
        return Action(diff=action)
    if isinstance(action, Action):
        # Validated again: Action.model_construct(...) skips validation and can hold anything.
        action = {k: getattr(action, k, None) for k in ("diff", "script", "base")}
    if isinstance(action, dict):
        limits = {"diff": max_bytes, "script": max_script_bytes or max_bytes}
        for key, limit in limits.items():
            if isinstance(text := action.get(key), str):
                _check_size(len(text.encode("utf-8", "surrogatepass")), key, limit)
        try:
            return Action.model_validate(action)
        except ValueError as e:
            raise PatchError(f"the action is not a valid nanoenv.Action: {e}") from None
    raise PatchError(
        f"an action must be a diff (str), a dict or a nanoenv.Action; got {type(action).__name__}"
    )


def _check_size(size: int, what: str, max_bytes: int) -> None:
    """Refuse an oversized action before any of it is written to disk."""
    if size > max_bytes:
        raise PolicyError(f"the {what} is {size:,} bytes; the limit is {max_bytes:,} bytes")


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
    regions = [r.name for r in task.protected]
    protected.check_protected(baseline, applied.script, regions)
    protected.check_protected_names(baseline, applied.script, regions)
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
    except (RecursionError, MemoryError, OverflowError) as e:
        return f"{name} cannot be compiled: it is nested too deeply for Python's parser ({type(e).__name__})"
    return None


def defines_build_model(script: str) -> bool:
    """True when the script defines a top-level ``build_model`` (the verifier needs it)."""
    import ast

    try:
        tree = protected.parse_module(script)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(n, ast.FunctionDef) and n.name == "build_model" for n in tree.body)
