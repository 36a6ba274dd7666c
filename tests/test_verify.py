"""Verification's parts: the harness's scoring, timing from receipt stamps, significance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from nanoenv import Outcome
from nanoenv.judging.significance import significance
from nanoenv.judging.timing import cores_check, harness_clock, harness_time, timing_checks
from nanoenv.judging.verify import EvalSet, build_inputs, log_softmax, model_checks, score
from nanoenv.sandbox.fake import FakeSandbox
from nanoenv.types import LossPoint, TimingSpec, VerifySpec

V, T = 16, 8


def _eval_set(rng) -> EvalSet:
    toks = rng.integers(0, V, size=(2, 6, T + 1))
    return EvalSet(toks[0, :, :-1], toks[0, :, 1:], toks[1, :, :-1], toks[1, :, 1:], V)


def _causal_logits(x: np.ndarray) -> np.ndarray:
    """A "model" whose logits at t depend on tokens <= t only (a running bag of tokens)."""
    onehot = np.eye(V)[x]
    return np.cumsum(onehot, axis=1) * 0.5


def test_log_softmax_matches_the_definition():
    """The harness's log-softmax sums to one in probability and is shift-invariant."""
    z = np.random.default_rng(0).normal(size=(3, 4, V)) * 30
    lp = log_softmax(z)
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(log_softmax(z + 1000.0), lp, atol=1e-9)


def test_inputs_are_shuffled_with_twins_and_duplicates():
    """Every window appears; twins differ only after their cut; duplicates are exact."""
    rng = np.random.default_rng(1)
    es = _eval_set(rng)
    spec = VerifySpec(causal_pairs=4, duplicates=3)
    x, layout = build_inputs(es, spec, rng)
    kinds = [k for k, _, _ in layout.rows]
    assert kinds.count("public") == 6 and kinds.count("hidden") == 6
    assert sum(k.startswith("twin-") for k in kinds) == 4 and kinds.count("dup-public") == 3
    assert kinds[:12] != ["public"] * 6 + ["hidden"] * 6  # shuffled
    for r, (kind, i, cut) in enumerate(layout.rows):
        src = es.hidden_x[i] if kind.endswith("hidden") else es.public_x[i]
        if cut >= 0:
            assert (x[r, : cut + 1] == src[: cut + 1]).all() and x[r, cut + 1] != src[cut + 1]
        else:
            assert (x[r] == src).all()


def test_score_an_honest_model():
    """A causal, stateless model: losses are the mean NLL; no causal or repeat difference."""
    rng = np.random.default_rng(2)
    es = _eval_set(rng)
    x, layout = build_inputs(es, VerifySpec(causal_pairs=5, duplicates=4), rng)
    numbers = score(_causal_logits(x), layout, es)
    assert numbers["causal_max_diff"] == 0.0 and numbers["repeat_max_diff"] == 0.0
    lp = log_softmax(_causal_logits(es.public_x))
    expected = -np.take_along_axis(lp, es.public_y[..., None], -1).mean()
    assert numbers["public_loss"] == pytest.approx(expected)


def test_score_in_float32_is_the_float64_log_softmax_and_reads_a_mapped_file(tmp_path):
    """The scoring keeps the logits' float32 (summing in float64): on a tiny-track-sized
    vocabulary its losses are the float64 log-softmax's to 1e-6, and it reads the worker's
    file mapped, as the verifier hands it over, with the same numbers as from memory."""
    rng = np.random.default_rng(5)
    vocab, T = 1024, 16
    toks = rng.integers(0, vocab, size=(2, 8, T + 1))
    es = EvalSet(toks[0, :, :-1], toks[0, :, 1:], toks[1, :, :-1], toks[1, :, 1:], vocab)
    x, layout = build_inputs(es, VerifySpec(causal_pairs=3, duplicates=3), rng)
    logits = (rng.normal(size=(*x.shape, vocab)) * 8).astype(np.float32)
    numbers = score(logits, layout, es)
    first = layout.first()
    for kind, (_, ys) in (("public", es.windows("public")), ("hidden", es.windows("hidden"))):
        lp = [log_softmax(logits[first[(kind, i)]])[np.arange(T), y] for i, y in enumerate(ys)]
        assert numbers[f"{kind}_loss"] == pytest.approx(-np.mean(lp), abs=1e-6)
    np.save(tmp_path / "logits.npy", logits)
    mapped = np.load(tmp_path / "logits.npy", mmap_mode="r", allow_pickle=False)
    assert score(mapped, layout, es) == numbers


def test_score_catches_peeking_and_memory():
    """Logits that see the whole window break causality; logits that drift with calls break
    determinism."""
    rng = np.random.default_rng(3)
    es = _eval_set(rng)
    x, layout = build_inputs(es, VerifySpec(causal_pairs=5, duplicates=4), rng)
    peeking = np.repeat(np.eye(V)[x].sum(axis=1, keepdims=True), T, axis=1)
    assert score(peeking, layout, es)["causal_max_diff"] > 0.1
    drifting = _causal_logits(x) * (1 + 0.05 * np.arange(len(x))[:, None, None])  # call-dependent
    assert score(drifting, layout, es)["repeat_max_diff"] > 1e-3


def _points(*stamps: tuple[int, float, float]) -> list[LossPoint]:
    return [LossPoint(step=s, val_loss=3.0, train_time_ms=ms, received_s=t) for s, ms, t in stamps]


def test_harness_time_counts_from_start_and_charges_warmup():
    """The window runs between the step-0 and last val lines; warm-up beyond the allowance counts."""
    spec = TimingSpec(untimed_allowance_s=2.0)
    t = harness_time(_points((0, 0, 5.0), (10, 900, 6.0), (20, 1800, 7.0)), spec)
    assert (t.window_s, t.untimed_s, t.train_s, t.reported_s) == (2.0, 5.0, 5.0, 1.8)
    assert all(c.passed for c in timing_checks(t, spec))


def test_harness_clock_puts_each_point_at_the_time_the_reward_charges():
    """A point's clock time is its receipt less the free warm-up: at the last val line it is
    harness_time's train_s, whatever the script's own clock says."""
    points = _points((0, 0, 5.0), (10, 900, 6.0), (20, 1800, 7.0))
    spec = TimingSpec(untimed_allowance_s=2.0)
    clock = harness_clock(points, spec.untimed_allowance_s)
    assert [t for t, _ in clock] == [3.0, 4.0, 5.0]
    assert clock[-1][0] == harness_time(points, spec).train_s
    assert [t for t, _ in harness_clock(points, 0.0)] == [5.0, 6.0, 7.0]  # all warm-up charged
    assert harness_clock([LossPoint(step=0, val_loss=3.0)], 0.0) == []  # nothing received


@pytest.mark.parametrize(
    ("points", "failed"),
    [
        (_points((5, 0, 1.0), (10, 100, 2.0)), "timed_window"),  # no step-0 line
        (_points((0, 0, 1.0)), "timed_window"),  # one line: no window
        (_points((0, 0, 1.0), (20, 0, 31.0)), "reported_time"),  # a frozen clock
        (_points((0, 0, 1.0), (20, 90_000, 31.0)), "reported_time"),  # more time than elapsed
        (_points((0, 0, 100.0), (20, 1000, 101.0)), "untimed_work"),  # long work before step 0
    ],
)
def test_timing_checks_fail(points, failed):
    """Missing windows, lying clocks and long pre-window work are each named."""
    checks = timing_checks(
        harness_time(points, TimingSpec(max_untimed_s=60)), TimingSpec(max_untimed_s=60)
    )
    assert failed in [c.name for c in checks if not c.passed]


def test_a_job_may_use_the_cores_it_was_given_and_no_more():
    """CPU time over wall time against the job's cores, with room for the sandbox's processes;
    nothing to read without a CPU time, a limit, or a second of run."""
    assert cores_check(4.1, 4.2, 1).passed  # an honest one-core smoke run
    assert cores_check(14.4, 8.3, 2).passed  # two processes on two cores
    failed = cores_check(7.0, 4.0, 1)  # a second core taken
    assert not failed.passed
    assert failed.numbers == {"cores_used": 1.75, "cores_given": 1, "max_cores": 1.25}
    assert None is cores_check(None, 4.0, 1) is cores_check(7.0, 4.0, None)
    assert cores_check(7.0, 0.5, 1) is None


def test_significance_is_a_one_sided_t_test():
    """p < 0.01 only when the mean is clearly below the target; one run gives no p."""
    from scipy import stats

    clear = significance([3.50, 3.51, 3.49, 3.50], [1, 1, 1, 1], target=3.56)
    assert clear.significant and clear.p_value == pytest.approx(
        stats.ttest_1samp([3.50, 3.51, 3.49, 3.50], 3.56, alternative="less").pvalue
    )
    close = significance([3.55, 3.57, 3.54], [1, 1, 1], target=3.56)
    assert not close.significant and close.p_value > 0.01
    single = significance([3.0], [1], target=3.56)
    assert single.p_value is None and not single.significant
    assert math.isclose(single.mean, 3.0)


@pytest.mark.slow
def test_repeats_in_the_env(make_env):
    """repeats=2: two verified runs with harness seeds, their mean, std and p in one result."""
    env = make_env(repeats=2)
    env.reset(seed=0)
    obs, reward, _, _, info = env.step("")
    result = info["result"]
    sig = result.significance
    assert sig is not None and sig.n == 2 and len(set(sig.losses)) > 1
    assert result.outcome is (Outcome.OK if sig.significant else Outcome.MISSED_TARGET)
    assert result.val_loss == pytest.approx(sig.mean) and math.isfinite(reward)
    assert "one-sided t-test" in obs["feedback"] and f"{sig.p_value:.3g}" in obs["feedback"]
    step_dir = Path(result.artifacts_dir)
    assert sorted(p.name for p in step_dir.glob("repeat-*")) == ["repeat-1", "repeat-2"]
    assert all((p / "result.json").exists() for p in step_dir.glob("repeat-*"))


def test_verify_none_trusts_the_log(make_env):
    """verify='none' skips the re-evaluation and says the result is unverified."""
    env = make_env(verify="none", sandbox=FakeSandbox())
    env.reset(seed=0)
    obs, _, _, _, info = env.step("")
    result = info["result"]
    assert not result.verdict.verified and result.hidden_val_loss is None
    assert result.val_loss == result.reported_val_loss
    assert "UNVERIFIED" in obs["feedback"]
    assert not (Path(result.artifacts_dir) / "verify").exists()


# --------------------------------------------------------------------------- spread samples and gaps


def _numbers(public: float, spread: float, hidden: float) -> dict[str, float]:
    return {"public_loss": public, "spread_loss": spread, "hidden_loss": hidden,
            "causal_max_diff": 0.0, "repeat_max_diff": 0.0}  # fmt: skip


def _failed(numbers: dict[str, float], reported: float) -> set[str]:
    return {c.name for c in model_checks(numbers, reported, VerifySpec()) if not c.passed}


def test_gaps_compare_like_with_like():
    """hidden_gap holds hidden val against public val drawn the same way, not against the
    reported passages; region_gap flags a reported region far better than public val at large."""
    # An honest good model (measured on the tiny track): the reported passages are easy.
    assert _failed(_numbers(2.182, 2.295, 2.309), 2.182) == set()
    # Trained on public val at large: hidden val does not follow.
    assert _failed(_numbers(2.0, 2.0, 2.4), 2.0) == {"hidden_gap"}
    # Trained on the reported passages (measured: 2.05 against 2.82 at large).
    assert _failed(_numbers(2.05, 2.82, 2.83), 2.05) == {"region_gap"}


def test_spread_windows_come_from_the_whole_split_and_change_with_the_seed(tmp_path):
    """Spread windows are real windows of the split (y is x shifted by one) from all over it,
    different for every seed; the region is the split's first tokens."""
    from nanoenv.data.manifest import load_manifest, write_splits
    from nanoenv.judging.verify import load_eval_set

    tokens = np.arange(50_000, dtype=np.uint16)  # a token is its own position
    write_splits(tmp_path, {"train": tokens[:4000], "val": tokens, "hidden_val": tokens[:20_000]},
                 dataset="t", vocab_size=65_536, train_shard_tokens=1000, source={})  # fmt: skip
    spec = VerifySpec(eval_seq_len=16, public_tokens=64, hidden_tokens=1024)
    manifest = load_manifest(tmp_path)
    a = load_eval_set(tmp_path, manifest, spec, np.random.default_rng(1))
    b = load_eval_set(tmp_path, manifest, spec, np.random.default_rng(2))
    assert (a.public_x.ravel() == tokens[:64]).all()
    assert a.spread_x.shape == a.hidden_x.shape == (64, 16)
    for x, y in ((a.spread_x, a.spread_y), (a.hidden_x, a.hidden_y)):
        assert (x[:, 1:] == y[:, :-1]).all() and (y - x == 1).all() and (x[:, 0] % 16 == 0).all()
    starts = a.spread_x[:, 0]
    assert len(set(starts)) == 64 and starts.min() < 10_000 and starts.max() > 40_000
    assert a.hidden_x[:, 0].max() < 20_000  # hidden windows come from the hidden split
    assert not np.array_equal(a.spread_x, b.spread_x)


def _audit(lp_shift: float = 0.0, peek: bool = False, seed: int = 4) -> dict[str, float]:
    """Both phases of audited verification on a numpy "model": the first phase's log-probs
    (shifted by ``lp_shift``, as a tampered log-softmax would), the audit's raw logits."""
    from nanoenv.judging.audit import _audit_plan, score_audited

    rng = np.random.default_rng(seed)
    es = _eval_set(rng)
    x, layout = build_inputs(es, VerifySpec(causal_pairs=4, duplicates=3), rng)
    logits = _causal_logits(x)
    if peek:  # the next token's logit raised: every target is in the input
        logits[:, :-1] += 3.0 * np.eye(V)[x[:, 1:]]
    full = log_softmax(logits)
    lp = np.take_along_axis(full[:, :-1], x[:, 1:, None], -1)[..., 0] + lp_shift
    rows, pos = _audit_plan(layout, len(x), T, 16, rng)
    audit_logits = np.stack([logits[r][pos[j]] for j, r in enumerate(rows)])
    return score_audited(lp, x, rows, pos, audit_logits, layout, es)


def test_an_honest_audit_passes_and_scores_every_next_token():
    """An honest model: the audit agrees exactly, no causal or repeat gap, and the loss is the
    mean over every next token of the input."""
    numbers = _audit()
    assert numbers["audit_max_diff"] < 1e-9
    assert numbers["causal_max_diff"] == 0.0 and numbers["repeat_max_diff"] == 0.0
    assert numbers["audit_positions"] >= 16


def test_the_audit_catches_tampered_log_probs_and_peeking():
    """Log-probs claimed better than the logits say fail the audit; a model that reads the
    next token (a target that lies in its input) breaks causality at a twin's cut."""
    assert _audit(lp_shift=0.1)["audit_max_diff"] == pytest.approx(0.1)
    assert _audit(peek=True)["causal_max_diff"] > 0.1


def test_model_config_must_be_plain(tmp_path):
    """model.json is a small flat config: no paths, no payloads, no nesting."""
    from nanoenv.judging.verifier import config_problem

    cases = {
        '{"n_layer": 4, "act": "relu2", "dims": [1, 2]}': None,
        '{"data": "/root/.cache/nanoenv"}': "slashes",
        '{"nested": {"a": 1}}': "flat list",
        "[1, 2]": "expected an object",
        '{"x": "' + "a" * 100 + '"}': "at most 64",
        "not json": "not JSON",
        '{"pad": "' + " " * 20_000 + '"}': "the limit is 16,384",
    }
    for text, problem in cases.items():
        path = tmp_path / "model.json"
        path.write_text(text)
        found = config_problem(path)
        assert (found is None) if problem is None else (problem in found), (text[:40], found)


def test_the_worker_returns_the_trained_models_own_logits(tmp_path):
    """verify_worker.py, run as the verifier runs it (a fresh process, the candidate's script
    beside the checkpoint): its logits are the model's forward on the harness's windows, and a
    checkpoint that is not the model build_model makes is refused."""
    import json
    import os
    import subprocess
    import sys

    import torch
    from safetensors.torch import save_file

    from nanoenv.judging.verifier import WORKER

    root = Path(__file__).resolve().parents[1]
    spec = _import_script(root / "envs" / "tiny" / "train.py")
    config = {"vocab_size": 256, "n_layer": 1, "n_head": 2, "n_embd": 16, "seq_len": 32}
    model = spec.build_model(config)
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (inp / "train.py").write_text((root / "envs" / "tiny" / "train.py").read_text())
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              inp / "model.safetensors")  # fmt: skip
    (inp / "model.json").write_text(json.dumps(config))
    x = np.random.default_rng(0).integers(0, 256, size=(3, 32)).astype(np.int64)
    np.savez(inp / "inputs.npz", x=x)
    (inp / "plan.json").write_text(json.dumps({"script": "train.py", "batch_size": 2}))

    def work() -> subprocess.CompletedProcess:
        env = {**os.environ, "NANOENV_INPUT_DIR": str(inp), "NANOENV_OUT_DIR": str(out)}
        return subprocess.run([sys.executable, str(WORKER)], env=env, cwd=inp, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    done = work()
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(out / "logits.npy"), want, rtol=1e-5, atol=1e-5)

    wrong = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    wrong["wte.weight"] = wrong["wte.weight"][:, :8].contiguous()  # another model's shape
    save_file(wrong, inp / "model.safetensors")
    done = work()
    assert done.returncode != 0
    assert json.loads((out / "report.json").read_text())["error"]


def _import_script(path: Path):
    """The tiny baseline script, imported as a module (its training guarded by __main__)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_baseline_for_worker_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
