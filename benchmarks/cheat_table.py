"""The cheat suite as a table: each cheat's outcome and reward against the honest no-op.

Usage: python benchmarks/cheat_table.py [--docker] [-- PYTEST_ARGS...]
Runs tests/test_cheats.py and tests/test_cheats_bought.py (the local sandbox; with --docker,
their Docker variants as well) with NANOENV_CHEAT_TABLE set, so that every step they take is
noted, then prints one row per run: the test, the sandbox, the outcome, the reward, and the
bar it is held to (the better of the two honest no-ops of its module; a cheat whose env has
its own reward or repeats is compared inside its test).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docker", action="store_true", help="include the Docker variants")
    ap.add_argument("pytest_args", nargs="*")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "table.jsonl"
        select = [] if args.docker else ["-m", "not docker"]
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *select,
             "tests/test_cheats.py", "tests/test_cheats_bought.py", *args.pytest_args],
            cwd=root, env={**os.environ, "NANOENV_CHEAT_TABLE": str(table)}, check=False,
        )  # fmt: skip
        rows = (
            [json.loads(line) for line in table.read_text().splitlines()] if table.exists() else []
        )
    bars: dict[str, float] = {}
    for r in rows:
        module = r["test"].split("::")[0]
        if r["test"].endswith("(setup)") and r["outcome"] == "ok":
            bars[module] = max(bars.get(module, -9.0), r["reward"])
    print(f"\n{'cheat':<72} {'sandbox':<7} {'outcome':<14} {'reward':>8} {'honest':>8}")
    for r in rows:
        module, _, name = r["test"].partition("::")
        honest_run = name.endswith(" (setup)")  # the module's honest no-ops, in its fixture
        name = "(honest no-op)" if honest_run else name.removesuffix(" (call)")
        honest = (
            ""
            if r["reward_kind"] != "time_to_target"
            else f"{bars.get(module, float('nan')):+8.3f}"
        )
        kind = "" if r["reward_kind"] == "time_to_target" else f" [{r['reward_kind']}]"
        print(
            f"{(name + kind)[:72]:<72} {r['sandbox']:<7} {r['outcome']:<14} {r['reward']:+8.3f} {honest:>8}"
        )


if __name__ == "__main__":
    main()
