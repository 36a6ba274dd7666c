"""Time patch matching at the sizes an adversarial action can reach.

Usage: python benchmarks/patch_matching.py [--lines 32000] [--hunk 16000]
A script of N distinct lines and one hunk of M context lines (every 1000th line changed),
which took 14-17 s when hunks were found by sliding them along the script; and the same hunk
on a script of N identical lines, the worst case for an index of lines.
"""

from __future__ import annotations

import argparse
import time

from nanoenv.actions.patching import apply_diff


def _time(script: str, lines: list[str], start: int, m: int) -> float:
    body = "".join(f"-{ln}\n+{ln}  # changed\n" if i % 1000 == 0 else f" {ln}\n"
                   for i, ln in enumerate(lines[start : start + m]))  # fmt: skip
    diff = f"--- a/train.py\n+++ b/train.py\n@@ -{start + 1},{m} +{start + 1},{m} @@\n" + body
    t = time.perf_counter()
    apply_diff(script, diff, "train.py")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=32_000)
    ap.add_argument("--hunk", type=int, default=16_000)
    args = ap.parse_args()
    distinct = [f"x{i} = {i}" for i in range(args.lines)]
    same = ["pass"] * args.lines
    start = (args.lines - args.hunk) // 2
    print(
        f"distinct lines: {_time(chr(10).join(distinct) + chr(10), distinct, start, args.hunk):.3f} s"
    )
    print(f"identical lines: {_time(chr(10).join(same) + chr(10), same, start, args.hunk):.3f} s")
    # Two lines, alternating, and a hunk that fails only at its last line: every candidate
    # place is compared almost to its end, until the comparison budget refuses the diff.
    alt = ["a", "b"] * (args.lines // 2)
    bad = "".join(f" {ln}\n" for ln in alt[: args.hunk - 1]) + " a\n a\n"
    t = time.perf_counter()
    try:
        apply_diff(
            "\n".join(alt) + "\n",
            f"--- a/train.py\n+++ b/train.py\n@@ -1,1 +1,1 @@\n{bad}",
            "train.py",
        )
    except Exception as e:
        print(f"ambiguous (refused: {str(e)[:60]}...): {time.perf_counter() - t:.3f} s")


if __name__ == "__main__":
    main()
