"""Speedrun-Tiny-v1 baseline: a small GPT-2 on Shakespeare in 1,024 BPE tokens, on 2 CPU cores.

One flat file, read top to bottom: hyperparameters, model, data and evaluation (protected),
training loop. A plain baseline of the kind the NanoGPT speedrun started from: learned
position embeddings, LayerNorm, GELU, a tied head, AdamW with warmup and cosine decay, its
learning rate, batch size and initialisation tuned for this budget (the README's fidelity
section says how).

The nanoenv contract: read NANOENV_DATA_DIR, NANOENV_OUT_DIR, NANOENV_SEED, NANOENV_DEVICE
and NANOENV_OVERRIDES; print speedrun log lines; write model.safetensors and model.json at
the end; define build_model(config) so the harness can load the weights on its own.
"""

import glob
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Hyperparameters


@dataclass
class Hyperparameters:
    # model
    vocab_size: int = 1024
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    seq_len: int = 128
    # optimization
    batch_size: int = 8
    num_iterations: int = 1200
    learning_rate: float = 6e-3
    warmup_iters: int = 20
    min_lr_frac: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # evaluation and logging
    val_every: int = 100
    train_log_every: int = 50


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
    vocab_size: int = 1024
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    seq_len: int = 128


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
            # std 0.5 / sqrt(fan_in), as the speedrun's own layers: GPT-2's 0.02 is that rule at
            # width 768, and at width 64 it would start every unit 3.5x too small.
            nn.init.normal_(module.weight, mean=0.0, std=0.5 * module.in_features**-0.5)
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
VAL_TOKENS = 32768  # the first VAL_TOKENS tokens of the public val split (four passages)
EVAL_SEQ_LEN = 128  # scored in windows of this length, whatever the training context
EVAL_BATCH_SIZE = 64  # windows per forward pass when scoring
DATA_ORDER_SEED = 1234  # the train windows' order: the same for every run and every seed


def load_tokens(pattern):
    tokens = []
    for path in sorted(glob.glob(pattern)):
        header = np.fromfile(path, dtype=np.int32, count=256)
        assert header[0] == 20240520 and header[1] == 1, f"bad shard header in {path}"
        tokens.append(np.fromfile(path, dtype=np.uint16, offset=256 * 4)[: header[2]])
    assert tokens, f"no shards match {pattern}"
    return torch.from_numpy(np.concatenate(tokens).astype(np.int64))


class DataLoader:
    """Serves batch_size windows of seq_len tokens, the train split's windows in one fixed
    shuffled order: every batch mixes passages from all the plays (as the speedrun's batches
    mix FineWeb documents), and every run and seed reads the same windows in the same order.
    B and T may change between batches (a window then starts where a seq_len window would).
    `served` counts the training tokens handed out: the log reports it, the steps objective
    reads it."""

    served = 0

    def __init__(self, tokens, batch_size, seq_len):
        self.tokens, self.B, self.T, self.pos = tokens, batch_size, seq_len, 0
        order = torch.Generator().manual_seed(DATA_ORDER_SEED)
        self.starts = torch.randperm((len(tokens) - 1) // seq_len, generator=order) * seq_len

    def next_batch(self):
        if self.pos + self.B > len(self.starts):
            self.pos = 0
        starts = self.starts[self.pos : self.pos + self.B]
        self.pos += self.B
        DataLoader.served += self.B * self.T
        buf = self.tokens[starts[:, None] + torch.arange(self.T + 1)]
        return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()


@torch.no_grad()
def evaluate(model, val_tokens, batch_size, device):
    """Mean cross-entropy (nats per token) over the first VAL_TOKENS val tokens."""
    model.eval()
    x_all = val_tokens[:VAL_TOKENS].view(-1, EVAL_SEQ_LEN)
    y_all = val_tokens[1 : VAL_TOKENS + 1].view(-1, EVAL_SEQ_LEN)
    total = 0.0
    for i in range(0, len(x_all), batch_size):
        x, y = x_all[i : i + batch_size].to(device), y_all[i : i + batch_size].to(device)
        logits = model(x).float()
        total += F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
    model.train()
    return total / VAL_TOKENS


# --- nanoenv: protected end [data] ---

# --- nanoenv: protected begin [log] ---
def log_line(step, total, train_time_ms, key, value):
    """One line of the speedrun's log protocol; the harness reads these. `tokens` is what the
    train loader has served so far."""
    step_avg = train_time_ms / max(step, 1)
    print(f"step:{step}/{total} {key}:{value:.4f} train_time:{train_time_ms:.0f}ms step_avg:{step_avg:.2f}ms tokens:{DataLoader.served}", flush=True)


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
    seed = int(os.environ.get("NANOENV_SEED", "0"))
    device = os.environ.get("NANOENV_DEVICE", "cpu")
    data_dir = os.environ["NANOENV_DATA_DIR"]
    out_dir = os.environ.get("NANOENV_OUT_DIR", "out")
    torch.manual_seed(seed)
    np.random.seed(seed)

    config = GPTConfig(args.vocab_size, args.n_layer, args.n_head, args.n_embd, args.seq_len)
    model = build_model(asdict(config)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.3f}M parameters, config {asdict(config)}", flush=True)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
        betas=(0.9, 0.95),
    )
    train_loader = DataLoader(load_tokens(os.path.join(data_dir, "train_*.bin")), args.batch_size, args.seq_len)
    val_tokens = load_tokens(os.path.join(data_dir, "val_*.bin"))

    # The clock runs only while training: validation is not timed (the speedrun's rule).
    training_time_ms = 0.0
    t0 = time.perf_counter()
    for step in range(args.num_iterations + 1):
        last_step = step == args.num_iterations
        if last_step or step % args.val_every == 0:
            training_time_ms += 1000 * (time.perf_counter() - t0)
            val_loss = evaluate(model, val_tokens, EVAL_BATCH_SIZE, device)
            log_line(step, args.num_iterations, training_time_ms, "val_loss", val_loss)
            t0 = time.perf_counter()
        if last_step:
            break

        x, y = train_loader.next_batch()
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        if (step + 1) % args.train_log_every == 0:
            now_ms = training_time_ms + 1000 * (time.perf_counter() - t0)
            log_line(step + 1, args.num_iterations, now_ms, "train_loss", loss.item())

    from safetensors.torch import save_model

    os.makedirs(out_dir, exist_ok=True)
    save_model(model, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "model.json"), "w") as f:
        json.dump(asdict(config), f)
    print(f"saved model to {out_dir}", flush=True)


if __name__ == "__main__":
    main()
