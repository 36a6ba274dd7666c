"""The layout's boundaries, read from the imports: who may import whom.

The architecture page (README, Development) states these rules; this test keeps them true, and
keeps the page naming every module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nanoenv"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every nanoenv module a file imports, at any depth (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("nanoenv")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nanoenv"):
            # `from nanoenv.x import y` may name a submodule y: count both
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


# What judges, keeps and configures a run: a room below them (a sandbox, an action) knows none.
_ABOVE_THE_RUN = {
    "nanoenv.judging", "nanoenv.records", "nanoenv.env", "nanoenv.episode", "nanoenv.settings",
    "nanoenv.feedback",
}  # fmt: skip

# room -> rooms (or modules) it must never import
FORBIDDEN = {
    "nanoenv.types": {"nanoenv"},  # pydantic and the standard library only
    "nanoenv.errors": {"nanoenv"},
    "nanoenv.actions": _ABOVE_THE_RUN | {"nanoenv.sandbox"},
    "nanoenv.sandbox": _ABOVE_THE_RUN | {"nanoenv.actions"},
    "nanoenv.judging": {
        "nanoenv.records",
        "nanoenv.env",
        "nanoenv.episode",
        "nanoenv.feedback",
        "nanoenv.cli",
    },
    "nanoenv.records": {
        "nanoenv.judging.runner",
        "nanoenv.judging.verify",
        "nanoenv.sandbox",
        "nanoenv.env",
        "nanoenv.episode",
    },
    "nanoenv.data": {
        "nanoenv.actions",
        "nanoenv.judging",
        "nanoenv.records",
        "nanoenv.sandbox",
        "nanoenv.env",
        "nanoenv.episode",
        "nanoenv.settings",
    },
}


def _breaks(imported: str, forbidden: str) -> bool:
    if forbidden == "nanoenv":  # nothing of nanoenv at all
        return imported.startswith("nanoenv")
    return imported == forbidden or imported.startswith(forbidden + ".")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_respects_its_rooms_boundaries(module: str) -> None:
    own = module if module in FORBIDDEN else _room(module)
    forbidden = FORBIDDEN.get(own, set())
    bad = sorted(
        i
        for i in _imports(MODULES[module])
        if not i.startswith(own) and any(_breaks(i, f) for f in forbidden)
    )
    assert not bad, f"{module} imports {bad}, across a boundary of the layout"


def _owner(imported: str) -> str:
    """The module an import names: `nanoenv.types.Outcome` is `nanoenv.types`."""
    while imported not in MODULES and "." in imported:
        imported = imported.rsplit(".", 1)[0]
    return imported


def test_rules_are_pure() -> None:
    """judging.rules decides the outcome from measurements alone: no sandbox, no disk, no clock."""
    path = MODULES["nanoenv.judging.rules"]
    owners = {_owner(i) for i in _imports(path)}
    assert owners <= {"nanoenv.types", "nanoenv.judging.significance", "nanoenv.judging.telemetry"}
    tree = ast.parse(path.read_text())
    top = {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    top |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not top & {
        "os",
        "subprocess",
        "time",
        "shutil",
        "socket",
        "docker",
        "sqlite3",
        "pathlib",
    }


def test_integrations_are_reached_only_through_the_cli() -> None:
    """Each integration is an extra: no room imports one, and the CLI reaches `nanoenv serve`
    through serve_cli, which imports no extra at its top (the command runs without them)."""
    for module, path in MODULES.items():
        if module.startswith("nanoenv.integrations"):
            continue
        bad = {_owner(i) for i in _imports(path) if i.startswith("nanoenv.integrations")}
        allowed = {"nanoenv.integrations.serve_cli"} if module == "nanoenv.cli" else set()
        assert bad <= allowed, f"{module} imports {sorted(bad - allowed)}"
    tree = ast.parse(MODULES["nanoenv.integrations.serve_cli"].read_text())
    top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert not {t for t in top if t.split(".")[0] in ("openenv", "uvicorn", "fastapi")}
    assert not {t for t in top if t.startswith("nanoenv.integrations.openenv")}


def test_architecture_page_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    page = readme[readme.index("### Architecture") :]

    def named(module: str) -> bool:
        if MODULES[module].name == "__init__.py":  # a room: its folder
            return f"`{module.replace('.', '/')}/`" in page
        return f"`{module.rsplit('.', 1)[-1]}`" in page

    missing = [m for m in MODULES if m != "nanoenv" and not named(m)]
    assert not missing, f"the README's architecture page does not name {missing}"
