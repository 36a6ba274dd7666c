"""Audited verification, for vocabularies too big to bring every logit back (GPT-2's 50,304).

Raw logits at every position of the GPU tracks' 10,485,760 val tokens would be 2 PB; a sample
of positions (what verification did before) estimates the loss within about 0.06 nats, enough
for a run to report 3.279 while its model scores 3.33. Instead, in two fresh sandboxes:

1. the worker returns the log-prob of every next token at every position of every window (the
   whole reported region, spread and hidden windows, twins and duplicates): the loss is the
   mean over all of them, with no sampling error;
2. only then does the harness draw ``audit_positions`` positions, and a second worker, in a new
   process that cannot know which, returns raw logits there; the harness's own log-softmax at
   each must match what the first worker said, to ``logprob_tolerance``. Causal twins and their
   originals come back whole at their cut positions, so a model that peeks at the next token
   (which every target is: the worker is given only the windows) moves its distribution there.

What the audit can miss: a change of every log-prob by less than the tolerance (so the verified
loss is the model's within ``logprob_tolerance``), or a change at a fraction f of positions,
which escapes k audited positions with probability (1 - f)^k: at k = 1024, f = 0.3 % escapes
one time in 20. The cost: one forward over every window, and a second run of the worker on
a few dozen windows.
"""

from __future__ import annotations

import numpy as np

from nanoenv.judging.verifier import Reevaluation, Worker
from nanoenv.judging.verify import KINDS, EvalSet, Layout, log_softmax, losses


def audited(
    worker: Worker, x: np.ndarray, layout: Layout, es: EvalSet, rng: np.random.Generator
) -> Reevaluation:
    """Both phases: every next-token log-prob, then raw logits at positions drawn after."""
    n, T = x.shape
    found = worker.run("logprobs", x, name="-logprobs")
    if isinstance(found, Reevaluation):
        return found
    lp, report = found
    if lp.shape != (n, T - 1) or not np.isfinite(lp).all():
        return Reevaluation(
            {},
            error=f"the log-probs have shape {lp.shape}, expected {(n, T - 1)}, or are not finite",
        )
    rows, pos = _audit_plan(layout, n, T, worker.task.verify.audit_positions or 0, rng)
    found = worker.run("logits", x[rows], pos, name="-audit")
    if isinstance(found, Reevaluation):
        return found
    logits, _ = found
    if logits.shape[:2] != pos.shape or not np.isfinite(logits).all():
        return Reevaluation(
            {}, error=f"the audit's logits have shape {logits.shape}, expected {pos.shape} x vocab"
        )
    return Reevaluation({**score_audited(lp, x, rows, pos, logits, layout, es), **report})


def _audit_plan(
    layout: Layout, n: int, T: int, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and positions to audit: every twin and its original at the twin's cut (and at
    positions before it), and ``k`` more drawn across all rows. Each row gets the same number
    of positions (P), so the logits come back as one [rows, P, vocab] array."""
    per_row = 8
    first = layout.first()
    chosen: dict[int, set[int]] = {}
    for r, (kind, i, cut) in enumerate(layout.rows):
        if kind.startswith("twin-"):
            orig = first[(kind.removeprefix("twin-"), i)]
            at = {cut, *rng.choice(cut + 1, size=min(per_row - 1, cut + 1), replace=False).tolist()}
            for row in (r, orig):
                chosen.setdefault(row, set()).update(at)
    extra = max(0, k // per_row - len(chosen))
    for r in rng.choice(n, size=min(extra, n), replace=False):
        chosen.setdefault(int(r), set())
    P = min(T - 1, max(per_row, *(len(v) for v in chosen.values())))
    rows = np.array(sorted(chosen), dtype=np.int64)
    pos = np.empty((len(rows), P), dtype=np.int64)
    for j, r in enumerate(rows):
        have = sorted(chosen[int(r)])
        rest = np.setdiff1d(np.arange(T - 1), have)
        fill = rng.choice(rest, size=P - len(have), replace=False) if len(have) < P else []
        pos[j] = np.sort(np.concatenate([have, fill]).astype(np.int64))
    return rows, pos


def score_audited(
    lp: np.ndarray,
    x: np.ndarray,
    rows: np.ndarray,
    pos: np.ndarray,
    logits: np.ndarray,
    layout: Layout,
    es: EvalSet,
) -> dict[str, float]:
    """Losses from the log-probs, determinism from the duplicates, and from the audit: how far
    the harness's own log-softmax is from the log-probs, and causality at the twins' cuts."""
    first = layout.first()
    per_window: dict[str, list[np.ndarray]] = {k: [] for k in es.kinds()}
    repeat = 0.0
    for r, (kind, i, _) in enumerate(layout.rows):
        if kind in KINDS:
            per_window[kind].append(-lp[r].astype(np.float64))
        elif kind.startswith("dup-"):
            repeat = max(repeat, float(np.abs(lp[r] - lp[first[("public", i)]]).max()))
    audit, causal = 0.0, 0.0
    full = {int(r): log_softmax(logits[j]) for j, r in enumerate(rows)}
    at = {int(r): {int(p): k for k, p in enumerate(pos[j])} for j, r in enumerate(rows)}
    for j, r in enumerate(rows):
        target = x[r, pos[j] + 1]
        mine = full[int(r)][np.arange(pos.shape[1]), target]
        audit = max(audit, float(np.abs(mine - lp[r, pos[j]]).max()))
        kind, i, cut = layout.rows[int(r)]
        if kind.startswith("twin-"):
            orig = first[(kind.removeprefix("twin-"), i)]
            for p, k in at[int(r)].items():
                if p <= cut and p in at[orig]:
                    diff = np.abs(full[int(r)][k] - full[orig][at[orig][p]]).max()
                    causal = max(causal, float(diff))
    return {
        "causal_max_diff": causal,
        "repeat_max_diff": repeat,
        "audit_max_diff": audit,
        "audit_positions": float(pos.size),
        **losses(per_window),
    }
