"""The verifier's worker, run in a fresh sandbox: the job, its inputs and what comes back.

``Worker`` writes the candidate's script, its checkpoint and the windows to score into a
read-only input folder, runs ``verify_worker.py`` there (no network, no data, the host's files
hidden as for a training job) and reads back one array and the worker's report, or says why
there is none. ``config_problem`` polices ``model.json`` before any of that.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanoenv.types import Job, JobResult, Limits, TaskSpec

WORKER = Path(__file__).with_name("verify_worker.py")
MAX_WORKER_OUT_BYTES = 8 * 1024**3


@dataclass
class Reevaluation:
    """What the verifier's sandbox run produced: numbers, or the reason there are none."""

    numbers: dict[str, float]
    error: str | None = None
    infra_error: str | None = None


@dataclass
class Worker:
    """Runs the verifier's worker on one checkpoint in a fresh sandbox, as often as asked."""

    run_job: Callable[[Job], JobResult]
    task: TaskSpec
    script: str
    run_out: Path
    masked: list[Path]
    keep_dir: Path | None = None

    def limits(self) -> Limits:
        """The worker job's limits: the task's, with the verifier's deadline and room for what
        it writes back (two files; logits may be far bigger than a model)."""
        out_bytes = max(self.task.limits.max_out_bytes, MAX_WORKER_OUT_BYTES)
        update = {"timeout_s": self.task.verify.timeout_s, "max_out_files": 4,
                  "max_out_bytes": out_bytes}  # fmt: skip
        return self.task.limits.model_copy(update=update)

    def run(
        self, mode: str, x: np.ndarray, pos: np.ndarray | None = None, name: str = ""
    ) -> tuple[np.ndarray, dict[str, float]] | Reevaluation:
        """``mode`` ``logits`` (raw logits of ``x``, at ``pos`` if given) or ``logprobs`` (the
        log-prob of each next token of ``x``). Returns the array and the worker's numbers, or
        a Reevaluation that says why there are none."""
        spec, task = self.task.verify, self.task
        out_name = "logits.npy" if mode == "logits" else "logprobs.npy"
        with tempfile.TemporaryDirectory(prefix="nanoenv-verify-") as tmp:
            inputs, out = Path(tmp) / "in", Path(tmp) / "out"
            inputs.mkdir()
            for module, text in task.modules.items():  # what the script imports beside it
                (inputs / module).write_text(text, encoding="utf-8")
            (inputs / task.script).write_text(self.script, encoding="utf-8")
            for name_ in ("model.safetensors", "model.json"):
                shutil.copyfile(self.run_out / name_, inputs / name_)
            arrays = {"x": x} if pos is None else {"x": x, "pos": pos}
            np.savez(inputs / "inputs.npz", **arrays)
            plan = {"script": task.script, "batch_size": spec.batch_size, "mode": mode,
                    "autocast": spec.autocast if task.device == "cuda" else None}  # fmt: skip
            (inputs / "plan.json").write_text(json.dumps(plan))
            for p in inputs.iterdir():
                p.chmod(0o644)
            inputs.chmod(0o755)
            job = Job(
                files={WORKER.name: WORKER.read_text(encoding="utf-8")},
                command=["{python}", WORKER.name],
                env={"NANOENV_DEVICE": task.device},
                input_dir=inputs,
                out_dir=out,
                masked=self.masked,
                limits=self.limits(),
                gpus=min(task.gpus, 1),
                labels={"nanoenv.task": task.id, "nanoenv.role": "verify"},
            )
            result = self.run_job(job)
            if self.keep_dir is not None:
                keep = self.keep_dir
                keep.mkdir(parents=True, exist_ok=True)
                with open(keep / f"log{name}.txt", "w") as f:
                    f.write("\n".join(ln.text for ln in result.lines) + "\n")
                if (out / "report.json").is_file():
                    shutil.copyfile(out / "report.json", keep / f"report{name}.json")
            if result.infra_error:
                return Reevaluation(
                    {}, infra_error=f"the verifier could not run: {result.infra_error}"
                )
            if result.timed_out:
                return Reevaluation(
                    {}, error=f"the verifier ran past its {spec.timeout_s:.0f} s deadline"
                )
            report = _read_json(out / "report.json")
            if report.get("error"):
                return Reevaluation({}, error=str(report["error"])[:2000])
            if result.oom:
                return Reevaluation({}, error="the verifier ran out of memory loading the model")
            try:
                # Mapped, not read: the harness reads each window once (the tiny track's
                # logits are 0.3 GB), and the mapping outlives the folder's removal.
                array = np.load(out / out_name, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                return Reevaluation({}, error=f"the verifier produced no readable {out_name}: {e}")
        numbers = {"parameters": float(report.get("parameters", 0)),
                   "eval_seconds": float(report.get("seconds", 0.0))}  # fmt: skip
        return array, numbers


MAX_CONFIG_BYTES = 16 * 1024
MAX_CONFIG_STRING = 64


def config_problem(path: Path) -> str | None:
    """Why ``model.json`` is not a small, flat config of numbers, booleans and short words
    (what ``build_model`` needs), or None. Nothing in it may be a path or a payload: the
    verifier hands it to the candidate's code, so it must not carry a way to anything else."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        return f"{size:,} bytes; the limit is {MAX_CONFIG_BYTES:,}"
    try:
        config = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        return f"not JSON ({e})"
    if not isinstance(config, dict):
        return f"a JSON {type(config).__name__}, expected an object of hyperparameters"

    def plain(v: object) -> bool:
        if isinstance(v, str):
            return len(v) <= MAX_CONFIG_STRING and "/" not in v and "\\" not in v
        return v is None or isinstance(v, bool | int | float)

    for key, value in config.items():
        items = value if isinstance(value, list) else [value]
        if len(key) > MAX_CONFIG_STRING or not all(plain(v) for v in items):
            return (
                f"the value of {key[:MAX_CONFIG_STRING]!r} is not a number, a boolean, a word of "
                f"at most {MAX_CONFIG_STRING} characters without slashes, or a flat list of those"
            )
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {"error": "the verifier wrote no report (it crashed before the end)"}
