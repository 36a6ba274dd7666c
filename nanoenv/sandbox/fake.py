"""A sandbox that runs nothing: it replays a speedrun log and writes a real small model.

For testing what surrounds a run (the runner, episodes, feedback, records, rewards, an agent's
loop) in milliseconds, where training is not the subject. Pass an instance,
``SpeedrunEnv(..., sandbox=FakeSandbox(), verify="none")``: it is never chosen by name, so a
fake run cannot be mistaken for a measurement. Its clock is virtual (each line is stamped at
``step_s`` per step), so harness times are exact and repeatable.

What a job "does" is read from directives in its script, one per line, anywhere::

    # fake: val_loss=3.2          final val loss (default: a number from the script's hash)
    # fake: steps=20              steps in the log (default 10; val lines at 0, half, end)
    # fake: step_s=0.5            virtual seconds per step (default 0.1)
    # fake: exit=1                exit code, after the log (with a Python traceback if not 0)
    # fake: print=some text       a plain line of output (repeatable)
    # fake: hang                  run until cancelled or past the deadline
    # fake: no_model              write no model files

The loss falls from ln(vocab) towards the final one; the seed moves it by a few thousandths,
so repeats differ as real runs do. Verification jobs are refused (an infra error that says
so): re-evaluating a model needs a real run, so use ``verify="none"``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from pathlib import Path

from nanoenv.sandbox.base import Capabilities, LineCallback
from nanoenv.types import Job, JobResult, StampedLine

_DIRECTIVE = re.compile(r"^\s*#\s*fake:\s*(\w+)(?:\s*=\s*(.*?))?\s*$", re.M)


def directives(script: str) -> dict[str, list[str]]:
    """The ``# fake: key[=value]`` lines of a script, as {key: [values in order]}."""
    found: dict[str, list[str]] = {}
    for key, value in _DIRECTIVE.findall(script):
        found.setdefault(key, []).append(value)
    return found


class FakeSandbox:
    """Replays a log for each training job; see the module docstring for what it reads.

    Args:
        vocab_size: Sets the loss at step 0 (ln of it) and the model's shape.
        wall_s: Real seconds each job takes (0: return at once), e.g. to test concurrency.
    """

    name = "fake"
    capabilities = Capabilities(summary="replays a log on a virtual clock (tests)")
    containment = "a fake sandbox: nothing runs, a log is replayed"

    def __init__(self, vocab_size: int = 256, wall_s: float = 0.0) -> None:
        self.vocab_size = vocab_size
        self.wall_s = wall_s
        self.jobs: list[Job] = []  # every job it was given, for tests to inspect

    def run(
        self, job: Job, on_line: LineCallback | None = None, cancel: threading.Event | None = None
    ) -> JobResult:
        self.jobs.append(job)
        if job.labels.get("nanoenv.role") == "verify":
            return JobResult(infra_error="the fake sandbox cannot verify a model (it trains "
                             "none); use verify=\"none\"")  # fmt: skip
        script = next((t for name, t in job.files.items() if name.endswith(".py")), "")
        d = directives(script)
        steps = int(_last(d, "steps", "10"))
        step_s = float(_last(d, "step_s", "0.1"))
        seed = int(job.env.get("NANOENV_SEED", "0"))
        final = float(_last(d, "val_loss", "") or self._default_loss(script))
        final += ((seed * 2654435761) % 1000) / 1e6 * 4  # up to 0.004 nats between seeds
        lines: list[StampedLine] = []

        def emit(t: float, text: str, stream: str = "stdout") -> None:
            line = StampedLine(t=round(t, 6), stream=stream, text=text)  # type: ignore[arg-type]
            lines.append(line)
            if on_line is not None:
                on_line(line)

        for text in d.get("print", []):
            emit(0.0, text)
        start = math.log(self.vocab_size)
        for step in range(steps + 1):
            t = 1.0 + step * step_s  # a second of "start-up" before step 0, as a real job has
            frac = step / max(steps, 1)
            loss = final + (start - final) * (1 - frac) ** 2
            ms = step * step_s * 1000
            avg = ms / max(step, 1)
            if step in (0, steps // 2, steps):
                emit(t, f"step:{step}/{steps} val_loss:{loss:.4f} train_time:{ms:.0f}ms "
                     f"step_avg:{avg:.2f}ms tokens:{step * 1024}")  # fmt: skip
            elif step % max(1, steps // 5) == 0:
                emit(t, f"step:{step}/{steps} train_loss:{loss:.4f} train_time:{ms:.0f}ms "
                     f"step_avg:{avg:.2f}ms")  # fmt: skip
        end = 1.0 + steps * step_s + 0.05
        if "hang" in d:
            deadline = time.monotonic() + job.limits.timeout_s
            while not (cancel is not None and cancel.wait(0.05)) and time.monotonic() < deadline:
                pass
            cancelled = cancel is not None and cancel.is_set()
            return JobResult(exit_code=None, lines=lines, wall_time_s=job.limits.timeout_s,
                             timed_out=not cancelled,
                             infra_error="cancelled" if cancelled else None)  # fmt: skip
        if self.wall_s and cancel is not None and cancel.wait(self.wall_s):
            return JobResult(lines=lines, infra_error="cancelled")
        exit_code = int(_last(d, "exit", "0"))
        if exit_code:
            for text in ("Traceback (most recent call last):",
                         f'  File "{job.command[-1]}", line 1, in <module>',
                         "RuntimeError: the fake script was told to fail"):  # fmt: skip
                emit(end, text, "stderr")
        ended = False
        if not exit_code and "no_model" not in d and job.out_dir is not None:
            self._write_model(job.out_dir)
            if job.end_line:  # as the baselines do: the run ends at its end line
                emit(end, f"{job.end_line}{job.out_dir}")
                ended = True
        return JobResult(exit_code=exit_code, lines=lines, wall_time_s=end, exit_s=end,
                         telemetry={"cpu_time_s": end, "peak_rss_mb": 1.0},
                         ended_at_end_line=ended)  # fmt: skip

    def close(self) -> None:
        """Nothing to release."""

    def _default_loss(self, script: str) -> float:
        # Different scripts, different (but repeatable) results: 40-60 % of ln(vocab).
        h = int(hashlib.sha256(script.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return math.log(self.vocab_size) * (0.4 + 0.2 * h)

    def _write_model(self, out_dir: Path) -> None:
        import torch
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(
            {"wte.weight": torch.zeros(self.vocab_size, 4)}, str(out_dir / "model.safetensors")
        )
        (out_dir / "model.json").write_text(json.dumps({"vocab_size": self.vocab_size}))


def _last(d: dict[str, list[str]], key: str, default: str) -> str:
    return d[key][-1] if d.get(key) else default
