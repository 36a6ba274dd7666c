"""FLOPs per token and tokens trained by a task's baseline, and what time that implies.

Usage: python benchmarks/flops.py [--env nanoenv/Speedrun-GPT2-8xH100-v0] [--mfu 0.4]
The model is built on the meta device (no memory, no GPU) from the baseline's own
Hyperparameters. Training FLOPs per token = 6 x parameters (forward and backward of every
weight) + 12 x layers x context x width (attention scores and mixing), as in the PaLM appendix.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import asdict

import torch

from nanoenv.tasks import load_task

# Dense bf16 peak FLOP/s by card name (the vendors' sheets, without sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12}


def baseline_flops(task, overrides: dict | None = None) -> dict:
    """Parameters, training FLOPs per token and tokens of the task's baseline (its own
    Hyperparameters, with ``overrides`` applied as NANOENV_OVERRIDES would)."""
    path = task.task_dir / (task.source or task.script)
    spec = importlib.util.spec_from_file_location("baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["baseline"] = mod
    spec.loader.exec_module(mod)  # top level only: hyperparameters and model classes
    hp = mod.args
    for key, value in (overrides or {}).items():
        setattr(hp, key, type(getattr(hp, key))(value))
    config = mod.GPTConfig(hp.vocab_size, hp.n_layer, hp.n_head, hp.n_embd, hp.seq_len)
    with torch.device("meta"):
        model = mod.build_model(asdict(config))
    params = sum(p.numel() for p in model.parameters())
    position = sum(p.numel() for n, p in model.named_parameters() if n.startswith("wpe"))
    n = params - position
    attention = 12 * hp.n_layer * hp.seq_len * hp.n_embd
    tokens_per_step = getattr(hp, "total_batch_tokens", None) or hp.batch_size * hp.seq_len
    return {
        "path": path, "params": params, "position_params": position,
        "flops_per_token": 6 * n + attention, "attention_flops_per_token": attention,
        "tokens_per_step": tokens_per_step, "steps": hp.num_iterations,
        "tokens": hp.num_iterations * tokens_per_step,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="nanoenv/Speedrun-GPT2-8xH100-v0")
    ap.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization to assume")
    args = ap.parse_args()
    task = load_task(args.env)
    f = baseline_flops(task)
    params, position, flops_token = f["params"], f["position_params"], f["flops_per_token"]
    tokens, total = f["tokens"], f["flops_per_token"] * f["tokens"]
    print(f"task {task.id}: baseline {f['path'].name}")
    print(f"parameters {params / 1e6:.1f}M ({position / 1e6:.2f}M of them position embeddings)")
    print(f"training FLOPs per token {flops_token / 1e9:.3f} G (6N "
          f"{(flops_token - f['attention_flops_per_token']) / 1e9:.3f} G + attention "
          f"{f['attention_flops_per_token'] / 1e9:.3f} G)")  # fmt: skip
    print(f"tokens trained {tokens:,} ({f['steps']} steps x {f['tokens_per_step']:,})")
    print(f"total training compute {total:.3e} FLOPs")
    gpus = max(task.gpus, 1)
    if task.device == "cuda":
        rate = gpus * PEAK_BF16["H100"] * args.mfu
        print(f"on {gpus}x H100 at {args.mfu:.0%} MFU: {total / rate / 60:.1f} min of training")


if __name__ == "__main__":
    main()
