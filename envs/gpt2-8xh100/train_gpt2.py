"""Speedrun-GPT2 baseline: GPT-2 small (124M) on FineWeb10B, under torchrun, one process per GPU.

One flat file, read top to bottom: hyperparameters, model, data and evaluation (protected),
training loop. A plain baseline of the kind the speedrun started from (llm.c's GPT-2 124M):
learned position embeddings, LayerNorm, GELU, a tied head, AdamW with warmup and cosine decay,
bfloat16 autocast and torch.compile on GPUs. It trains on 10B tokens; the target is 3.28 val
loss over the first 10,485,760 val tokens, the speedrun's own rule.

On CPUs (tests, smoke size) the same file runs under torchrun with the gloo backend.
The nanoenv contract: read NANOENV_DATA_DIR, NANOENV_OUT_DIR, NANOENV_SEED, NANOENV_DEVICE and
NANOENV_OVERRIDES; print speedrun log lines from rank 0; write model.safetensors and model.json;
define build_model(config) so the harness can load the weights on its own.
"""

import glob
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Hyperparameters


@dataclass
class Hyperparameters:
    # model: GPT-2 small, vocabulary padded from 50257 to a multiple of 128
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    seq_len: int = 1024
    # optimization: 524,288 tokens per step across all processes
    total_batch_tokens: int = 524288
    device_batch_size: int = 64
    num_iterations: int = 19073  # 10B tokens
    learning_rate: float = 1.8e-3
    warmup_iters: int = 700
    min_lr_frac: float = 0.0
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # evaluation and logging
    val_every: int = 250
    train_log_every: int = 1
    compile: int = 1


args = Hyperparameters()
# The harness may override hyperparameters (for example a smoke-size run for tests).
for _key, _value in json.loads(os.environ.get("NANOENV_OVERRIDES") or "{}").items():
    if not hasattr(args, _key):
        raise KeyError(f"NANOENV_OVERRIDES names unknown hyperparameter {_key!r}")
    setattr(args, _key, type(getattr(args, _key))(_value))

# -----------------------------------------------------------------------------
# The model


@dataclass
class GPTConfig:
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    seq_len: int = 1024


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.seq_len, config.n_embd)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input and output embeddings
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx):
        T = idx.size(1)
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def build_model(config: dict) -> nn.Module:
    """The harness calls this to rebuild the model from model.json before loading weights."""
    return GPT(GPTConfig(**config))


# --- nanoenv: protected begin [data] ---
# The data pipeline and the evaluation: which tokens a run trains and is scored on.
# The first VAL_TOKENS tokens of the public val split (the speedrun's rule), scored in windows
# of EVAL_SEQ_LEN whatever the training context. The harness sets smaller values for its
# smoke-size runs on CPUs; a script cannot change what the harness itself re-measures.
VAL_TOKENS = int(os.environ.get("NANOENV_VAL_TOKENS", 10485760))
EVAL_SEQ_LEN = int(os.environ.get("NANOENV_EVAL_SEQ_LEN", 1024))


def load_shard(path):
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[0] == 20240520 and header[1] == 1, f"bad shard header in {path}"
    return np.memmap(path, dtype=np.uint16, mode="r", offset=256 * 4, shape=(int(header[2]),))


class DistributedDataLoader:
    """Reads the shards in order; each process takes its own slice of every batch."""

    def __init__(self, pattern, batch_size, seq_len, rank, world):
        self.files = sorted(glob.glob(pattern))
        assert self.files, f"no shards match {pattern}"
        self.B, self.T, self.rank, self.world = batch_size, seq_len, rank, world
        self.shard, self.tokens, self.pos = 0, load_shard(self.files[0]), 0

    def require(self, batches):
        """Stop before training when the shards hold fewer than ``batches`` micro-batches: past
        the last shard the loader wraps to the first, and the run would repeat data unawares.
        Each shard's tail is counted as next_batch drops it."""
        n = self.world * self.B * self.T
        sizes = [int(np.fromfile(f, dtype=np.int32, count=256)[2]) for f in self.files]
        have = sum((size - 1) // n for size in sizes)
        if have < batches:
            per_shard = max(1, (sizes[0] - 1) // n)
            raise RuntimeError(
                f"the train data is short: {len(self.files)} shard(s) hold {have:,} batches of "
                f"{n:,} tokens, the run needs {batches:,} ({-(-batches // per_shard)} shards of "
                "this size); fetch more, e.g. nanoenv data fetch fineweb10B --train-shards N"
            )

    def next_batch(self):
        n = self.B * self.T
        if self.pos + self.world * n + 1 > len(self.tokens):
            self.shard = (self.shard + 1) % len(self.files)
            self.tokens, self.pos = load_shard(self.files[self.shard]), 0
        start = self.pos + self.rank * n
        buf = torch.from_numpy(self.tokens[start : start + n + 1].astype(np.int64))
        self.pos += self.world * n
        return buf[:-1].view(self.B, self.T), buf[1:].view(self.B, self.T)


@torch.no_grad()
def evaluate(model, val_tokens, batch_size, device, rank, world):
    """Mean cross-entropy (nats per token) over the first VAL_TOKENS val tokens, all processes."""
    model.eval()
    x_all = torch.from_numpy(val_tokens[:VAL_TOKENS].astype(np.int64)).view(-1, EVAL_SEQ_LEN)
    y_all = torch.from_numpy(val_tokens[1 : VAL_TOKENS + 1].astype(np.int64)).view(-1, EVAL_SEQ_LEN)
    total = torch.zeros((), device=device, dtype=torch.float64)
    for i in range(rank * batch_size, len(x_all), world * batch_size):
        x, y = x_all[i : i + batch_size].to(device), y_all[i : i + batch_size].to(device)
        logits = model(x).float()
        total += F.cross_entropy(
            logits.view(-1, logits.size(-1)), y.reshape(-1), reduction="sum"
        ).double()
    if world > 1:
        dist.all_reduce(total)
    model.train()
    return total.item() / VAL_TOKENS


# --- nanoenv: protected end [data] ---


# --- nanoenv: protected begin [log] ---
def log_line(step, total, train_time_ms, key, value, tokens):
    """One line of the speedrun's log protocol; the harness reads these."""
    step_avg = train_time_ms / max(step, 1)
    print(
        f"step:{step}/{total} {key}:{value:.4f} train_time:{train_time_ms:.0f}ms step_avg:{step_avg:.2f}ms tokens:{tokens}",
        flush=True,
    )


# --- nanoenv: protected end [log] ---

# -----------------------------------------------------------------------------
# Training


def get_lr(step):
    if step < args.warmup_iters:
        return args.learning_rate * (step + 1) / args.warmup_iters
    decay = (step - args.warmup_iters) / max(1, args.num_iterations - args.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * min(decay, 1.0)))
    return args.learning_rate * (args.min_lr_frac + (1 - args.min_lr_frac) * coeff)


def main():
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device_kind = os.environ.get("NANOENV_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    master = rank == 0
    data_dir, out_dir = os.environ["NANOENV_DATA_DIR"], os.environ.get("NANOENV_OUT_DIR", "out")
    torch.manual_seed(int(os.environ.get("NANOENV_SEED", "0")))

    config = GPTConfig(args.vocab_size, args.n_layer, args.n_head, args.n_embd, args.seq_len)
    raw_model = build_model(asdict(config)).to(device)
    model = raw_model
    if device.type == "cuda" and args.compile:
        model = torch.compile(model)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None
        )
    if master:
        n_params = sum(p.numel() for p in raw_model.parameters())
        print(
            f"model: {n_params / 1e6:.2f}M parameters, {world} process(es) on {device.type}",
            flush=True,
        )

    decay = [p for p in raw_model.parameters() if p.dim() >= 2]
    no_decay = [p for p in raw_model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.learning_rate,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    tokens_per_micro = args.device_batch_size * args.seq_len * world
    assert args.total_batch_tokens % tokens_per_micro == 0, (
        "total_batch_tokens must be a multiple of micro-batches"
    )
    grad_accum = args.total_batch_tokens // tokens_per_micro
    train_loader = DistributedDataLoader(
        os.path.join(data_dir, "train_*.bin"), args.device_batch_size, args.seq_len, rank, world
    )
    train_loader.require(args.num_iterations * grad_accum)
    val_tokens = load_shard(sorted(glob.glob(os.path.join(data_dir, "val_*.bin")))[0])
    autocast = torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )

    # Warm-up (compilation) happens before the step-0 val line: the speedrun leaves it untimed.
    # It runs forward and backward once and throws the gradients away: no update is made.
    if device.type == "cuda" and args.compile:
        x, y = train_loader.next_batch()
        with autocast:
            logits = model(x.to(device))
        F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.to(device).view(-1)).backward()
        optimizer.zero_grad(set_to_none=True)
        train_loader = DistributedDataLoader(
            os.path.join(data_dir, "train_*.bin"), args.device_batch_size, args.seq_len, rank, world
        )

    # The clock runs only while training: validation is not timed (the speedrun's rule).
    training_time_ms = 0.0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for step in range(args.num_iterations + 1):
        last_step = step == args.num_iterations
        if last_step or step % args.val_every == 0:
            sync()
            training_time_ms += 1000 * (time.perf_counter() - t0)
            with autocast:
                val_loss = evaluate(model, val_tokens, args.device_batch_size, device, rank, world)
            if master:
                log_line(
                    step,
                    args.num_iterations,
                    training_time_ms,
                    "val_loss",
                    val_loss,
                    step * args.total_batch_tokens,
                )
            sync()
            t0 = time.perf_counter()
        if last_step:
            break

        for micro in range(grad_accum):
            x, y = train_loader.next_batch()
            x, y = x.to(device), y.to(device)
            if world > 1:
                model.require_backward_grad_sync = micro == grad_accum - 1
            with autocast:
                logits = model(x)
            loss = (
                F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1)) / grad_accum
            )
            loss.backward()
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        if master and (step + 1) % args.train_log_every == 0:
            sync()
            now_ms = training_time_ms + 1000 * (time.perf_counter() - t0)
            log_line(
                step + 1,
                args.num_iterations,
                now_ms,
                "train_loss",
                loss.item() * grad_accum,
                (step + 1) * args.total_batch_tokens,
            )

    if master:
        from safetensors.torch import save_model

        os.makedirs(out_dir, exist_ok=True)
        save_model(raw_model, os.path.join(out_dir, "model.safetensors"))
        with open(os.path.join(out_dir, "model.json"), "w") as f:
            json.dump(asdict(config), f)
        if device.type == "cuda":
            print(
                f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20} MiB",
                flush=True,
            )
        print(f"saved model to {out_dir}", flush=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
