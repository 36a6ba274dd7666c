"""Independent re-evaluation of a run's model, and the checks that guard the reward.

After a run, a fresh sandbox of the same backend (no network, no data mounted) loads the
run's ``model.safetensors`` through the candidate's ``build_model`` and writes raw logits for
token windows the harness chose (see ``verify_worker.py``). Everything else happens here, in
harness code the candidate never ran next to:

- the loss, with our own log-softmax and gather, on the public val tokens (the ones the script
  reports on) and on hidden val tokens that were never mounted while training ran;
- causality: copies of some windows with the tokens after a random position replaced; the
  log-probs at and before that position must not move;
- determinism: duplicated windows, in other batches and places, must score the same (a model
  that remembers earlier evaluation calls does not);
- agreement: the reported final val loss must match the re-evaluated one; a large gap between
  public and hidden loss means the run saw the public val tokens;
- plausibility: no loss below what the data allows, no throughput above the hardware's peak.

All windows are shuffled together, so the worker cannot tell which is which by position.
A candidate that reads every window when it is imported could still match twins by their
prefixes and peek only where no twin exists; we say so rather than claim otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanoenv.data import Manifest, read_shard
from nanoenv.judging.verifier import Reevaluation, Worker, config_problem
from nanoenv.types import Check, Job, JobResult, LossPoint, TaskSpec, VerifySpec


@dataclass(frozen=True)
class EvalSet:
    """The token windows verification scores: inputs ``x`` and targets ``y``, [n, T] each.

    ``public``: the val tokens the script reports on (the first ``public_tokens``);
    ``spread``: public val windows drawn from the whole public split, fresh for each run;
    ``hidden``: hidden val windows drawn from the whole hidden split the same way, but the same
    windows for every run (a fixed eval set the script never sees: runs compare on it without
    the noise of a new sample each time; it is where a task that sets ``target_hidden_loss``
    scores the reward).
    spread and hidden are two samples of one distribution, so an honest model scores them
    alike; the public region alone is a few passages, easier or harder than the average.
    """

    public_x: np.ndarray
    public_y: np.ndarray
    hidden_x: np.ndarray
    hidden_y: np.ndarray
    vocab_size: int
    spread_x: np.ndarray | None = None
    spread_y: np.ndarray | None = None

    def kinds(self) -> tuple[str, ...]:
        return KINDS if self.spread_x is not None else ("public", "hidden")

    def windows(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of one kind of window: ``public``, ``spread`` or ``hidden``."""
        if kind == "spread" and self.spread_x is not None and self.spread_y is not None:
            return self.spread_x, self.spread_y
        if kind == "hidden":
            return self.hidden_x, self.hidden_y
        return self.public_x, self.public_y


KINDS = ("public", "spread", "hidden")


def _source(kind: str) -> str:
    """The kind of window a row was made from (a twin or duplicate names its source)."""
    return kind.removeprefix("twin-").removeprefix("dup-")


def _region(
    root: Path, files: list[str], tokens: int, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``tokens`` tokens of a split, in consecutive windows."""
    parts, have = [], 0
    for rel in files:
        shard = np.asarray(read_shard(root / rel), dtype=np.int64)
        parts.append(shard[: tokens + 1 - have])
        have += len(parts[-1])
        if have >= tokens + 1:
            break
    flat = np.concatenate(parts)
    n = min(tokens, len(flat) - 1) // seq_len * seq_len
    return flat[:n].reshape(-1, seq_len), flat[1 : n + 1].reshape(-1, seq_len)


def _spread(
    root: Path, files: list[str], tokens: int, seq_len: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``tokens // seq_len`` windows drawn without replacement from all of a split's shards."""
    shards = [read_shard(root / rel) for rel in files]
    per_shard = np.array([max(0, (len(t) - 1) // seq_len) for t in shards])
    total = int(per_shard.sum())
    picks = np.sort(rng.choice(total, size=min(tokens // seq_len, total), replace=False))
    ends = np.cumsum(per_shard)
    x = np.empty((len(picks), seq_len), dtype=np.int64)
    y = np.empty_like(x)
    for r, k in enumerate(picks):
        f = int(np.searchsorted(ends, k, side="right"))
        start = (int(k) - int(ends[f] - per_shard[f])) * seq_len
        window = np.asarray(shards[f][start : start + seq_len + 1], dtype=np.int64)
        x[r], y[r] = window[:-1], window[1:]
    return x, y


def load_eval_set(
    root: Path, manifest: Manifest, spec: VerifySpec, rng: np.random.Generator
) -> EvalSet:
    """The public region the script reports on, a fresh spread sample of public val for this
    run (drawn with ``rng``, which the candidate cannot know), and the dataset's fixed sample
    of hidden val."""
    T = spec.eval_seq_len
    px, py = _region(root, manifest.split_files("val"), spec.public_tokens, T)
    sx, sy = _spread(root, manifest.split_files("val"), spec.hidden_tokens, T, rng)
    fixed = np.random.default_rng(int(manifest.content_hash()[:8], 16))
    hx, hy = _spread(root, manifest.split_files("hidden_val"), spec.hidden_tokens, T, fixed)
    return EvalSet(px, py, hx, hy, manifest.vocab_size, sx, sy)


@dataclass(frozen=True)
class Layout:
    """Which window each input row is: (kind, index into its set, cut position or -1)."""

    rows: list[tuple[str, int, int]]

    def first(self) -> dict[tuple[str, int], int]:
        """The row of each original window (not a twin or a duplicate)."""
        return {(k, i): r for r, (k, i, _) in enumerate(self.rows) if k in KINDS}


def build_inputs(
    es: EvalSet, spec: VerifySpec, rng: np.random.Generator
) -> tuple[np.ndarray, Layout]:
    """All windows to score, shuffled: public, spread, hidden, causal twins, duplicates."""
    rows = [(kind, i, -1) for kind in es.kinds() for i in range(len(es.windows(kind)[0]))]
    T = es.public_x.shape[1]
    sources = list(rows)
    for k in rng.choice(len(sources), size=min(spec.causal_pairs, len(sources)), replace=False):
        kind, i, _ = sources[k]
        # The cut is before the last position: the target there is still a token of the input.
        rows.append((f"twin-{kind}", i, int(rng.integers(0, T - 2))))
    for i in rng.choice(
        len(es.public_x), size=min(spec.duplicates, len(es.public_x)), replace=False
    ):
        rows.append(("dup-public", int(i), -1))
    order = rng.permutation(len(rows))
    rows = [rows[j] for j in order]
    x = np.empty((len(rows), T), dtype=np.int64)
    for r, (kind, i, cut) in enumerate(rows):
        base = es.windows(_source(kind))[0]
        x[r] = base[i]
        if cut >= 0:  # replace every token after the cut; the first one surely changes
            noise = rng.integers(0, es.vocab_size, size=T - cut - 1)
            noise[0] = (base[i][cut + 1] + 1 + noise[0] % (es.vocab_size - 1)) % es.vocab_size
            x[r, cut + 1 :] = noise
    return x, Layout(rows)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """The harness's own log-softmax over the last axis, in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def log_sum_exp(window: np.ndarray) -> np.ndarray:
    """The log-normaliser at each position of one window's logits ([T, vocab] -> [T]).

    The exponentials stay in the logits' float32 and are summed in float64: about 1e-7 from
    :func:`log_softmax`, and a tiny-track step's scoring takes 0.11 s instead of 0.18 s. One
    window at a time, so equal windows get bit-equal results, which the causality and
    determinism gaps compare."""
    z = np.asarray(window)
    top = z.max(axis=-1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=-1, dtype=np.float64))


def score(logits: np.ndarray, layout: Layout, es: EvalSet) -> dict[str, float]:
    """Losses (with standard errors over windows) and the causality and determinism gaps, from
    raw logits at every position, in harness code. Each window's log-normaliser is computed
    once; the full log-probs only for the windows a twin or a duplicate is compared with."""
    first = layout.first()
    lse = [log_sum_exp(logits[r]) for r in range(len(layout.rows))]

    def logp(r: int) -> np.ndarray:
        return np.asarray(logits[r], dtype=np.float64) - lse[r][:, None]

    per_window: dict[str, list[np.ndarray]] = {k: [] for k in es.kinds()}
    causal, repeat = 0.0, 0.0
    for r, (kind, i, cut) in enumerate(layout.rows):
        if kind in KINDS:
            y = es.windows(kind)[1][i]
            picked = np.asarray(logits[r])[np.arange(len(y)), y].astype(np.float64)
            per_window[kind].append(lse[r] - picked)
        elif kind.startswith("twin-"):
            orig = first[(kind.removeprefix("twin-"), i)]
            causal = max(causal, float(np.abs(logp(r)[: cut + 1] - logp(orig)[: cut + 1]).max()))
        else:
            repeat = max(repeat, float(np.abs(logp(r) - logp(first[("public", i)])).max()))
    return {"causal_max_diff": causal, "repeat_max_diff": repeat, **losses(per_window)}


def losses(per_window: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """Each kind's mean loss over all its scored positions, and its standard error with the
    windows as the independent units."""
    numbers = {}
    for kind, windows in per_window.items():
        numbers[f"{kind}_loss"] = float(np.concatenate(windows).mean())
        means = np.array([w.mean() for w in windows])
        n = len(means)
        numbers[f"{kind}_se"] = float(means.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return numbers


def reevaluate(
    run: Callable[[Job], JobResult],
    task: TaskSpec,
    script: str,
    run_out: Path,
    es: EvalSet,
    rng: np.random.Generator,
    keep_dir: Path | None = None,
    masked: list[Path] | None = None,
) -> Reevaluation:
    """Re-evaluate the run's checkpoint in fresh sandboxes (``run`` runs a job there) and score
    it here: raw logits at every position, or, where the task audits (a big vocabulary), target
    log-probs at every position checked against raw logits at positions drawn afterwards.
    ``masked``: host paths the worker must not see (the data)."""
    missing = [n for n in ("model.safetensors", "model.json") if not (run_out / n).is_file()]
    if missing:
        return Reevaluation({}, error=f"the run wrote no {' or '.join(missing)} to NANOENV_OUT_DIR")
    if (problem := config_problem(run_out / "model.json")) is not None:
        return Reevaluation({}, error=f"model.json is not a plain model config: {problem}")
    worker = Worker(run, task, script, run_out, list(masked or []), keep_dir)
    x, layout = build_inputs(es, task.verify, rng)
    if task.verify.audit_positions:
        from nanoenv.judging.audit import audited

        return audited(worker, x, layout, es, rng)
    found = worker.run("logits", x)
    if isinstance(found, Reevaluation):
        return found
    logits, report = found
    want = x.shape
    if logits.ndim != 3 or logits.shape[:2] != want or not np.isfinite(logits).all():
        return Reevaluation(
            {},
            error=f"the logits have shape {logits.shape}, expected {want} x vocab, or are not finite",
        )
    return Reevaluation({**score(logits, layout, es), **report})


# --------------------------------------------------------------------------- checks


def model_checks(
    numbers: dict[str, float], reported: float | None, spec: VerifySpec
) -> list[Check]:
    """Checks on the re-evaluated numbers: causality, determinism, agreement, gap, floor."""
    pub, hid = numbers["public_loss"], numbers["hidden_loss"]
    # The hidden loss is compared with public val drawn the same way (spread over the split),
    # never with the few passages the script reports on: their difficulty is their own.
    spread = numbers.get("spread_loss", pub)
    tol = spec.logprob_tolerance
    # Spread and hidden windows are samples of their splits, so the gaps are estimates: allow
    # three standard errors. The reported region is scored whole: its loss is no estimate.
    se = {k: numbers.get(f"{k}_se", 0.0) for k in ("spread", "hidden")}
    max_gap = spec.max_gap + 3 * math.hypot(se["spread"], se["hidden"])
    max_region = spec.max_region_gap + 3 * se["spread"]
    report_tol = spec.report_tolerance
    checks = [
        Check(name="causality", passed=numbers["causal_max_diff"] <= tol,
              detail="log-probs at and before a position not to depend on later tokens",
              numbers={"max_diff": numbers["causal_max_diff"], "tolerance": tol}),
        Check(name="determinism", passed=numbers["repeat_max_diff"] <= tol,
              detail="the same window to score the same wherever and whenever it is evaluated",
              numbers={"max_diff": numbers["repeat_max_diff"], "tolerance": tol}),
        Check(name="hidden_gap", passed=hid - spread <= max_gap,
              detail="the loss on hidden val windows to be close to the loss on public val windows drawn the same way",
              numbers={"public_loss": spread, "hidden_loss": hid, "max_gap": max_gap}),
        Check(name="region_gap", passed=spread - pub <= max_region,
              detail="the val tokens the script reports on not to score far better than the rest of public val",
              numbers={"reported_region_loss": pub, "public_loss": spread, "max_gap": max_region}),
        Check(name="plausible_loss", passed=min(pub, spread, hid) >= spec.min_val_loss,
              detail="a loss no lower than this data allows",
              numbers={"loss": min(pub, spread, hid), "floor": spec.min_val_loss}),
    ]  # fmt: skip
    if "audit_max_diff" in numbers:
        checks.append(
            Check(name="audit", passed=numbers["audit_max_diff"] <= tol,
                  detail="the log-probs the verifier returned to match the harness's own "
                  "log-softmax of raw logits at positions drawn after it answered",
                  numbers={"max_diff": numbers["audit_max_diff"], "tolerance": tol,
                           "positions": numbers.get("audit_positions", 0.0)})
        )  # fmt: skip
    if reported is None or not math.isfinite(reported):
        checks.append(
            Check(
                name="reported_matches",
                passed=False,
                detail="the script reported no finite val_loss",
            )
        )
    else:
        diff = abs(reported - pub)
        checks.append(
            Check(name="reported_matches", passed=diff <= report_tol,
                  detail="the val_loss the script reported to be the loss of the model it saved",
                  numbers={"reported": reported, "verified": pub, "tolerance": report_tol})
        )  # fmt: skip
    return checks


def throughput_check(
    points: list[LossPoint], parameters: float, train_s: float, spec: VerifySpec
) -> Check | None:
    """6 x parameters x tokens / time against the hardware's peak, when the log says tokens."""
    if spec.peak_flops is None or not parameters or train_s <= 0:
        return None
    tokens = next((p.extra.get("tokens") for p in reversed(points) if "tokens" in p.extra), None)
    if tokens is None or not tokens.isdigit():
        return None
    flops = 6.0 * parameters * int(tokens) / train_s
    return Check(name="plausible_throughput", passed=flops <= spec.peak_flops,
                 detail="the training compute the log implies to fit the hardware's peak",
                 numbers={"flops_per_s": flops, "peak_flops": spec.peak_flops})  # fmt: skip
