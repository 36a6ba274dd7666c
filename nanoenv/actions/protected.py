"""Protected regions: the parts of a task's script a patch may not change, nor rebind.

A region lies between ``# --- nanoenv: protected begin [name] ---`` and its end marker. It must
stand in the candidate exactly as in the baseline, and no name it defines may be bound again
anywhere else in the script (a static check of the syntax tree; see check_protected_names for
what it cannot see). Violations are :class:`PolicyError` (outcome ``rejected``).
"""

from __future__ import annotations

import ast
import re
import threading

from nanoenv.actions.patching import normalize_text
from nanoenv.errors import PolicyError

_PROTECTED = re.compile(r"^# --- nanoenv: protected (begin|end) \[([\w-]+)\] ---\s*$", re.M)
# CPython 3.11.7 keeps ast.parse's recursion counter in state all threads share: two threads
# parsing at once (two sessions of `nanoenv serve` making their envs) can raise SystemError
# "AST constructor recursion depth mismatch" (seen in benchmarks/soak.py). One parse at a time.
_AST_LOCK = threading.Lock()


def parse_module(text: str) -> ast.Module:
    """``ast.parse``, one thread at a time (every parse of a script in nanoenv goes here)."""
    with _AST_LOCK:
        return ast.parse(text)


def protected_regions(script: str) -> dict[str, str]:
    """Map each protected region's name to its text (markers included).

    Raises:
        PolicyError: a marker is missing, unbalanced, or repeated.
    """
    regions: dict[str, str] = {}
    open_at: dict[str, int] = {}
    for m in _PROTECTED.finditer(script):
        kind, name = m.group(1), m.group(2)
        if kind == "begin":
            if name in open_at or name in regions:
                raise PolicyError(f"protected region [{name}] begins twice")
            open_at[name] = m.start()
        else:
            if name not in open_at:
                raise PolicyError(f"protected region [{name}] ends without a begin marker")
            regions[name] = script[open_at.pop(name) : m.end()]
    if open_at:
        raise PolicyError(f"protected region [{next(iter(open_at))}] has no end marker")
    return regions


def check_protected(baseline: str, candidate: str, names: list[str]) -> None:
    """Every named protected region of the baseline must stand unchanged in the candidate.

    Raises:
        PolicyError: naming the region and the first line that differs.
    """
    if not names:
        return
    before = protected_regions(normalize_text(baseline))
    after = protected_regions(normalize_text(candidate))
    for name in names:
        if name not in after:
            raise PolicyError(
                f"the protected region [{name}] is gone: keep the lines between "
                f"`# --- nanoenv: protected begin [{name}] ---` and its end marker as they are"
            )
        if after[name] != before.get(name):
            old, new = before.get(name, "").split("\n"), after[name].split("\n")
            k = next(
                (i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
                min(len(old), len(new)),
            )
            shown = new[k] if k < len(new) else "<end of region>"
            raise PolicyError(
                f"the patch changes the protected region [{name}] (line {k + 1} of the region "
                f"now reads {shown!r}); this region must stay exactly as in the baseline"
            )


def protected_names(baseline: str, names: list[str]) -> set[str]:
    """The names the baseline's protected regions define at their top level (functions,
    classes, constants, imports)."""
    defined: set[str] = set()
    regions = protected_regions(normalize_text(baseline))
    for name in names:
        if name not in regions:
            continue
        for node in parse_module(regions[name]).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                defined.update((a.asname or a.name).split(".")[0] for a in node.names)
            else:
                defined.update(
                    n.id
                    for n in ast.walk(node)
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
                )
    return defined


def check_protected_names(baseline: str, candidate: str, names: list[str]) -> None:
    """No name a protected region defines may be bound again anywhere else in the script:
    keeping `evaluate` byte for byte and then redefining it below would change what it means.

    A static check of the module's AST: assignments, definitions, imports, arguments, loop and
    `with` targets, `global`/`nonlocal`, `setattr`/`globals()[...]`/`__dict__[...]` with the
    name as a string, and assignments to an attribute of the name (`DataLoader.next_batch = f`).
    It cannot see names built at run time (`exec`, `getattr` on computed strings), attributes
    reached through an expression (`type(loader).next_batch`), or changes to what the region calls
    (torch's own functions).

    Raises:
        PolicyError: naming the name, the line, and the region it belongs to.
    """
    guarded = protected_names(baseline, names)
    if not guarded:
        return
    text = normalize_text(candidate)
    inside: list[tuple[int, int]] = []
    for m in _PROTECTED.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        if m.group(1) == "begin":
            inside.append((line, line))
        else:
            inside[-1] = (inside[-1][0], line)
    try:
        tree = parse_module(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return  # the syntax check reports it (or the run crashes on it): nothing runs anyway

    def bound(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            return [node.id]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return [node.name]
        if isinstance(node, ast.Import | ast.ImportFrom):
            return [(a.asname or a.name).split(".")[0] for a in node.names]
        if isinstance(node, ast.arg):
            return [node.arg]
        if isinstance(node, ast.Global | ast.Nonlocal):
            return list(node.names)
        if (  # DataLoader.next_batch = f: the region's own objects, changed from outside it
            isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del)
            and isinstance(node.value, ast.Name)
        ):  # fmt: skip
            return [node.value.id]
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("setattr", "delattr"):
            return [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
        if (  # globals()["name"] = ..., module.__dict__["name"] = ...
            isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store | ast.Del)
            and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)
        ):  # fmt: skip
            return [node.slice.value]
        return []

    for node in ast.walk(tree):
        for name in bound(node):
            line = getattr(node, "lineno", 0)
            if name in guarded and not any(a <= line <= b for a, b in inside):
                raise PolicyError(
                    f"line {line} binds or changes `{name}`, which a protected region "
                    "defines; a protected name keeps the meaning the region gives it (rename your own, e.g. "
                    f"`my_{name}`)"
                )
