"""Write the fidelity suite's patches for a track: each idea as edits of the track's baseline.

    python benchmarks/fidelity_suite/write_patches.py [--env ID|DIR] [--cumulative]
    [--tune NAME=VALUE ...]
    (a task id or a candidate folder; --cumulative: also the stacks of the cumulative replay;
    --tune: an idea's own hyperparameter at another default, e.g. muon_lr=0.01)

Each idea is a list of (old, new) text edits of the baseline script; every `old` must occur
exactly once, so a baseline that drifted fails loudly here instead of silently in a run (an
edit marked OPTIONAL applies where its text is, for what differs between tracks). The
diffs land in benchmarks/fidelity_suite/<task folder>/<idea>.diff; ideas.toml describes them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from nanoenv.actions.patching import make_diff  # noqa: E402
from nanoenv.fidelity import load_ideas  # noqa: E402
from nanoenv.tasks import baseline_script, load_task  # noqa: E402

Edit = tuple[str, str] | tuple[str, str, bool]
OPTIONAL = True

ROTARY = """class Rotary(nn.Module):
    def __init__(self, dim, base=10000):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x):  # x: [B, H, T, D]
        freqs = torch.outer(torch.arange(x.size(2), device=x.device).float(), self.inv_freq)
        cos, sin = freqs.cos().to(x.dtype), freqs.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):"""

MUON = """# -----------------------------------------------------------------------------
# Muon: momentum, then orthogonalize the update with a Newton-Schulz iteration


def zeropower_via_newtonschulz5(G, steps=5, eps=1e-7):
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G / (G.norm() + eps)
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if transposed else X


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr=0.02, momentum=0.95, ns_steps=5):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"])  # Nesterov
                g = zeropower_via_newtonschulz5(g, steps=group["ns_steps"])
                p.add_(g, alpha=-group["lr"] * max(1, p.size(0) / p.size(1)) ** 0.5)


# -----------------------------------------------------------------------------
# Training
"""

OPTIMIZER = """    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
        betas=(0.9, 0.95),
    )
"""

LR_UPDATE = """        for group in optimizer.param_groups:
            group["lr"] = get_lr(step)
"""

FORWARD_HEAD = "        return self.lm_head(self.ln_f(x))\n"
EMBED = "        x = self.wte(idx) + self.wpe(pos)\n"
TIED = "        self.lm_head.weight = self.wte.weight  # tied input and output embeddings\n"
BLOCK_LOOP = "        for block in self.h:\n            x = block(x)\n"
ATTN_QKV = "        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))\n"
GET_LR = """def get_lr(step):
    if step < args.warmup_iters:
        return args.learning_rate * (step + 1) / args.warmup_iters
    decay = (step - args.warmup_iters) / max(1, args.num_iterations - args.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * min(decay, 1.0)))
    return args.learning_rate * (args.min_lr_frac + (1 - args.min_lr_frac) * coeff)
"""
HPARAM_TAIL = "    grad_clip: float = 1.0\n"


def hparam(line: str) -> Edit:
    """Add a hyperparameter after grad_clip (so overrides and the log see it)."""
    return HPARAM_TAIL, HPARAM_TAIL + line


IDEAS: dict[str, list[Edit]] = {
    "rope": [
        ("class CausalSelfAttention(nn.Module):", ROTARY),
        (
            "        self.n_head = config.n_head\n",
            "        self.n_head = config.n_head\n        self.rotary = Rotary(config.n_embd // config.n_head)\n",
        ),
        (ATTN_QKV, ATTN_QKV + "        q, k = self.rotary(q), self.rotary(k)\n"),
        ("        self.wpe = nn.Embedding(config.seq_len, config.n_embd)\n", ""),
        (
            "        T = idx.size(1)\n        pos = torch.arange(T, device=idx.device)\n" + EMBED,
            "        x = self.wte(idx)\n",
        ),
    ],
    "muon": [
        hparam("    muon_lr: float = 0.02\n    muon_momentum: float = 0.95\n"),
        (
            "# -----------------------------------------------------------------------------\n# Training\n",
            MUON,
        ),
        (
            OPTIMIZER,
            """    # Muon for the matrices inside the blocks; AdamW for embeddings, head, gains and biases.
    matrices = [p for name, p in model.named_parameters() if p.dim() == 2 and name.startswith("h.")]
    others = [p for name, p in model.named_parameters() if not (p.dim() == 2 and name.startswith("h."))]
    adamw = torch.optim.AdamW(others, lr=args.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    muon = Muon(matrices, lr=args.muon_lr, momentum=args.muon_momentum)
    optimizers = [(adamw, args.learning_rate), (muon, args.muon_lr)]
""",
        ),
        (
            LR_UPDATE + "        optimizer.step()\n        optimizer.zero_grad(set_to_none=True)\n",
            """        scale = get_lr(step) / args.learning_rate
        for opt, base_lr in optimizers:
            for group in opt.param_groups:
                group["lr"] = base_lr * scale
            opt.step()
        model.zero_grad(set_to_none=True)
""",
        ),
    ],
    "relu2": [
        (
            "        return self.c_proj(F.gelu(self.c_fc(x)))\n",
            "        return self.c_proj(F.relu(self.c_fc(x)).square())\n",
        )
    ],
    "qk-norm": [
        (
            ATTN_QKV,
            ATTN_QKV
            + "        q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))\n",
        )
    ],
    "untied-head": [
        (TIED, ""),
        (
            "        self.apply(self._init_weights)\n",
            "        self.apply(self._init_weights)\n        nn.init.zeros_(self.lm_head.weight)  # untied head, zero-initialized\n",
        ),
    ],
    "logit-softcap": [
        (
            FORWARD_HEAD,
            "        logits = self.lm_head(self.ln_f(x))\n        return 30 * torch.tanh(logits / 30)\n",
        )
    ],
    "trapezoid": [
        hparam("    cooldown_frac: float = 0.4\n"),
        (
            GET_LR,
            """def get_lr(step):
    # Trapezoidal (warmup-stable-decay): linear warmup, flat, then linear decay to zero.
    if step < args.warmup_iters:
        return args.learning_rate * (step + 1) / args.warmup_iters
    cooldown = int(args.cooldown_frac * args.num_iterations)
    if step < args.num_iterations - cooldown:
        return args.learning_rate
    return args.learning_rate * (args.num_iterations - step) / cooldown
""",
        ),
    ],
    "unet-skips": [
        (
            "        self.ln_f = nn.LayerNorm(config.n_embd)\n",
            "        self.ln_f = nn.LayerNorm(config.n_embd)\n"
            "        self.skip_weights = nn.Parameter(torch.ones(config.n_layer // 2))\n",
        ),
        (
            BLOCK_LOOP,
            """        # U-net: the first half's outputs feed the second half in reverse order.
        n_enc = len(self.h) // 2
        skips = []
        for i, block in enumerate(self.h):
            if i >= len(self.h) - n_enc:
                x = x + self.skip_weights[i - (len(self.h) - n_enc)] * skips.pop()
            x = block(x)
            if i < n_enc:
                skips.append(x)
""",
        ),
    ],
    "value-embeddings": [
        (
            "        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)\n",
            "        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)\n"
            "        self.value_embed = nn.Embedding(config.vocab_size, config.n_embd)\n"
            "        self.value_lambda = nn.Parameter(torch.tensor(0.5))\n",
        ),
        (
            "    def forward(self, x):\n        B, T, C = x.size()\n        q, k, v = self.c_attn(x).split(C, dim=2)\n",
            "    def forward(self, x, idx):\n        B, T, C = x.size()\n        q, k, v = self.c_attn(x).split(C, dim=2)\n"
            "        v = (1 - self.value_lambda) * v + self.value_lambda * self.value_embed(idx)\n",
        ),
        (
            "    def forward(self, x):\n        x = x + self.attn(self.ln_1(x))\n",
            "    def forward(self, x, idx):\n        x = x + self.attn(self.ln_1(x), idx)\n",
        ),
        (BLOCK_LOOP, "        for block in self.h:\n            x = block(x, idx)\n"),
    ],
    "zero-init-proj": [
        (
            '            if name.endswith("c_proj.weight"):  # GPT-2\'s scaled init of residual projections\n'
            "                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))\n",
            '            if name.endswith("c_proj.weight"):  # residual projections start at zero\n'
            "                nn.init.zeros_(p)\n",
        ),
    ],
    "embed-lr": [
        hparam("    embed_lr_mult: float = 5.0\n"),
        (
            OPTIMIZER,
            """    # The embedding tables get their own, larger learning rate (and no weight decay).
    embeds = [p for n, p in model.named_parameters() if n.startswith(("wte.", "wpe."))]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith(("wte.", "wpe."))]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay, "mult": 1.0},
         {"params": no_decay, "weight_decay": 0.0, "mult": 1.0},
         {"params": embeds, "weight_decay": 0.0, "mult": args.embed_lr_mult}],
        lr=args.learning_rate,
        betas=(0.9, 0.95),
    )
""",
        ),
        (
            LR_UPDATE,
            """        for group in optimizer.param_groups:
            group["lr"] = get_lr(step) * group["mult"]
""",
        ),
    ],
    "batch-size-schedule": [
        (
            "    training_time_ms = 0.0\n",
            "    training_time_ms = 0.0\n"
            "    # Batch-size schedule: the first third of the tokens in half-size batches (so twice the\n"
            "    # steps there), the rest at full size; the same tokens in all, with 4/3 the steps.\n"
            "    small_steps = 2 * (args.num_iterations // 3)\n"
            "    args.num_iterations += args.num_iterations // 3\n"
            "    tokens_seen = 0\n",
        ),
        (
            "        x, y = train_loader.next_batch()\n",
            "        train_loader.B = args.batch_size // 2 if step < small_steps else args.batch_size\n"
            "        x, y = train_loader.next_batch()\n"
            "        tokens_seen += x.numel()\n",
        ),
        # v0's log takes the token count from its caller (v1's loader counts them itself).
        (
            '"val_loss", val_loss, step * tokens_per_step)',
            '"val_loss", val_loss, tokens_seen)',
            OPTIONAL,
        ),
        (
            '"train_loss", loss.item(), (step + 1) * tokens_per_step)',
            '"train_loss", loss.item(), tokens_seen)',
            OPTIONAL,
        ),
    ],
    "seq-len-schedule": [
        (
            "    training_time_ms = 0.0\n",
            "    training_time_ms = 0.0\n"
            "    # Sequence-length schedule: half-length sequences (twice as many per batch, the same\n"
            "    # tokens per step) for the first third of the steps.\n"
            "    short_steps = args.num_iterations // 3\n",
        ),
        (
            "        x, y = train_loader.next_batch()\n",
            "        short = step < short_steps\n"
            "        train_loader.B = args.batch_size * 2 if short else args.batch_size\n"
            "        train_loader.T = args.seq_len // 2 if short else args.seq_len\n"
            "        x, y = train_loader.next_batch()\n",
        ),
    ],
    "x0-skip": [
        (
            "        self.ln_f = nn.LayerNorm(config.n_embd)\n",
            "        self.ln_f = nn.LayerNorm(config.n_embd)\n"
            "        # Embedding skip: every block reads a learned mix of the stream and the embedding x0.\n"
            "        self.x_lambdas = nn.Parameter(torch.ones(config.n_layer))\n"
            "        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))\n",
        ),
        (
            BLOCK_LOOP,
            "        x0 = x\n        for i, block in enumerate(self.h):\n"
            "            x = block(self.x_lambdas[i] * x + self.x0_lambdas[i] * x0)\n",
        ),
    ],
    "smear": [
        (
            "        self.ln_f = nn.LayerNorm(config.n_embd)\n",
            "        self.ln_f = nn.LayerNorm(config.n_embd)\n"
            "        # Smear: each token's embedding takes a gated share of the previous token's.\n"
            "        self.smear_gate = nn.Linear(12, 1, bias=False)\n"
            "        self.smear_lambda = nn.Parameter(torch.zeros(1))\n",
        ),
        (
            EMBED,
            EMBED
            + "        gate = self.smear_lambda * torch.sigmoid(self.smear_gate(x[:, 1:, :12]))\n"
            "        x = torch.cat([x[:, :1], x[:, 1:] + gate * x[:, :-1]], dim=1)\n",
        ),
        (
            "        self.apply(self._init_weights)\n",
            "        self.apply(self._init_weights)\n        nn.init.zeros_(self.smear_gate.weight)\n",
        ),
    ],
    "bigram-hash": [
        (
            "        self.ln_f = nn.LayerNorm(config.n_embd)\n",
            "        self.ln_f = nn.LayerNorm(config.n_embd)\n"
            "        # Bigram hash embedding: (previous, current) token pairs hashed into a table.\n"
            "        self.bigram = nn.Embedding(4096, config.n_embd)\n",
        ),
        (
            EMBED,
            EMBED + "        prev = torch.cat([torch.zeros_like(idx[:, :1]), idx[:, :-1]], dim=1)\n"
            "        x = x + self.bigram((prev * 1000003 + idx) % 4096)\n",
        ),
        (
            "        self.apply(self._init_weights)\n",
            "        self.apply(self._init_weights)\n        nn.init.zeros_(self.bigram.weight)\n",
        ),
    ],
    # Negative controls: plain duds for this regime (one pass over the data; cross-entropy scored).
    "dropout": [
        (
            "        x = x + self.attn(self.ln_1(x))\n        return x + self.mlp(self.ln_2(x))\n",
            "        x = x + F.dropout(self.attn(self.ln_1(x)), 0.1, self.training)\n"
            "        return x + F.dropout(self.mlp(self.ln_2(x)), 0.1, self.training)\n",
        ),
    ],
    "label-smoothing": [
        (
            "        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))\n",
            "        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), label_smoothing=0.1)\n",
        ),
    ],
}


# The cumulative replay: each idea on the stack of every idea before it (ideas.toml's order, the
# records' order). Where an earlier idea rewrote an idea's anchor, the idea's edits on the stack:
ROPE_EMBED = "        x = self.wte(idx)\n"
X0_LOOP = "            x = block(self.x_lambdas[i] * x + self.x0_lambdas[i] * x0)\n"
MUON_ADAMW = "    adamw = torch.optim.AdamW(others, lr=args.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)\n"
MUON_LR_UPDATE = '                group["lr"] = base_lr * scale\n'

STACKED: dict[str, list[Edit]] = {
    # Muon's AdamW holds the embeddings: they get their own group there, at the larger lr.
    "embed-lr": [
        hparam("    embed_lr_mult: float = 5.0\n"),
        (
            MUON_ADAMW,
            """    # The embedding tables get their own, larger learning rate.
    embeds = [p for p in others if any(p is q for q in model.wte.parameters())]
    rest = [p for p in others if not any(p is q for q in embeds)]
    adamw = torch.optim.AdamW(
        [{"params": rest, "mult": 1.0}, {"params": embeds, "mult": args.embed_lr_mult}],
        lr=args.learning_rate, betas=(0.9, 0.95), weight_decay=0.0,
    )
""",
        ),
        (
            MUON_LR_UPDATE,
            '                group["lr"] = base_lr * scale * group.get("mult", 1.0)\n',
        ),
    ],
    # U-net skips around the x0 mix of the stream.
    "unet-skips": [
        IDEAS["unet-skips"][0],
        (
            "        for i, block in enumerate(self.h):\n" + X0_LOOP,
            """        # U-net: the first half's outputs feed the second half in reverse order.
        n_enc = len(self.h) // 2
        skips = []
        for i, block in enumerate(self.h):
            if i >= len(self.h) - n_enc:
                x = x + self.skip_weights[i - (len(self.h) - n_enc)] * skips.pop()
"""
            + X0_LOOP
            + """            if i < n_enc:
                skips.append(x)
""",
        ),
    ],
    "value-embeddings": [
        *IDEAS["value-embeddings"][:3],
        (X0_LOOP, X0_LOOP.replace("* x0)", "* x0, idx)")),
    ],
    # After RoPE the embedding line has no position term.
    "smear": [
        IDEAS["smear"][0],
        (ROPE_EMBED, IDEAS["smear"][1][1].replace(EMBED, ROPE_EMBED)),
        IDEAS["smear"][2],
    ],
    "bigram-hash": [
        IDEAS["bigram-hash"][0],
        (ROPE_EMBED, IDEAS["bigram-hash"][1][1].replace(EMBED, ROPE_EMBED)),
        IDEAS["bigram-hash"][2],
    ],
    # Value embeddings gave the block's attention the tokens.
    "dropout": [
        (
            "        x = x + self.attn(self.ln_1(x), idx)\n        return x + self.mlp(self.ln_2(x))\n",
            "        x = x + F.dropout(self.attn(self.ln_1(x), idx), 0.1, self.training)\n"
            "        return x + F.dropout(self.mlp(self.ln_2(x)), 0.1, self.training)\n",
        ),
    ],
    # Short sequences in the batch-size schedule's batches: twice as many, half as long.
    "seq-len-schedule": [
        IDEAS["seq-len-schedule"][0],
        (
            "        x, y = train_loader.next_batch()\n",
            "        short = step < short_steps\n"
            "        if short:\n"
            "            train_loader.B = train_loader.B * 2\n"
            "        train_loader.T = args.seq_len // 2 if short else args.seq_len\n"
            "        x, y = train_loader.next_batch()\n",
        ),
    ],
}


def tuned(edits: list[Edit], values: dict[str, str]) -> list[Edit]:
    """The edits with an idea's own hyperparameters set to other defaults (``--tune``): its
    dataclass line ``    NAME: TYPE = VALUE`` takes the new value."""
    out: list[Edit] = []
    for old, new, *optional in edits:
        lines = new.split("\n")
        for i, line in enumerate(lines):
            name, sep, rest = line.strip().partition(":")
            if sep and name in values and "=" in rest and line.startswith("    "):
                lines[i] = f"    {name}:{rest.split('=')[0]}= {values[name]}"
        out.append((old, "\n".join(lines), *optional))  # type: ignore[arg-type]
    return out


def stacks(
    base: str, ideas: list[str], tune: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """(name, script) for the cumulative replay: the stack through each idea, in order."""
    out, source = [], base
    for idea in ideas:
        edits = tuned(STACKED.get(idea, IDEAS[idea]), tune or {})
        source = apply(source, edits, f"{idea} (on the stack)")
        out.append((idea, source))
    return out


def apply(source: str, edits: list[Edit], idea: str) -> str:
    """The baseline with every edit applied; each `old` must be there exactly once."""
    for old, new, *optional in edits:
        count = source.count(old)
        if count == 0 and optional:
            continue
        if count != 1:
            raise SystemExit(
                f"{idea}: expected one occurrence of {old.splitlines()[0]!r}, found {count}"
            )
        source = source.replace(old, new)
    return source


def write_cumulative(base: str, task: Any, out: Path, tune: dict[str, str]) -> None:
    """The cumulative replay's patches: cumulative/NN-<idea>.diff is the baseline with every idea
    through the NN-th (ideas.toml's order); a control's is the whole stack with the control."""
    ideas = load_ideas(HERE / "ideas.toml")
    out.mkdir(exist_ok=True)
    chain = stacks(base, [i.name for i in ideas if not i.control], tune)
    for n, (idea, script) in enumerate(chain, 1):
        compile(script, f"{idea}.py", "exec")
        (out / f"{n:02d}-{idea}.diff").write_text(make_diff(base, script, task.script))
    top = chain[-1][1]
    for control in (i.name for i in ideas if i.control):
        script = apply(top, STACKED.get(control, IDEAS[control]), f"{control} (on the stack)")
        (out / f"control-{control}.diff").write_text(make_diff(base, script, task.script))
    print(f"wrote {len(chain)} stacks and their controls in {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="Speedrun-Tiny-v0")
    ap.add_argument("--only", nargs="*", help="only these ideas")
    ap.add_argument(
        "--cumulative", action="store_true",
        help="also the cumulative replay's stacks (each idea on every idea before it)",
    )  # fmt: skip
    ap.add_argument(
        "--tune", action="append", default=[], metavar="NAME=VALUE",
        help="an idea's own hyperparameter at another default (e.g. muon_lr=0.01); the patches "
        "are rewritten in place, so rerun without it to restore the suite's",
    )  # fmt: skip
    args = ap.parse_args()
    tune = dict(t.split("=", 1) for t in args.tune)
    task = load_task(args.env)
    base = baseline_script(task)
    out = HERE / task.task_dir.name
    out.mkdir(exist_ok=True)
    for idea, edits in IDEAS.items():
        if args.only and idea not in args.only:
            continue
        patched = apply(base, tuned(edits, tune), idea)
        compile(patched, f"{idea}.py", "exec")
        (out / f"{idea}.diff").write_text(make_diff(base, patched, task.script))
        print(f"wrote {out / f'{idea}.diff'}")
    if args.cumulative:
        write_cumulative(base, task, out / "cumulative", tune)


if __name__ == "__main__":
    main()
