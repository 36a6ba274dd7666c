"""The cheats that once bought reward (issue "the reward must not be for sale"), each a real
action on the default track (test_cheats.TRACK), each now earning no more than an honest run.

Every cheat here once earned more than an honest no-op or had a false claim verified. Each
test performs it through the public contract only and asserts it is rejected, or that its
reward is no better than an honest run's. Docker variants run where the cheat uses the
design rather than the local sandbox.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest
import test_cheats
from test_cheats import DATASET, TASK, TRACK, assert_caught, at_main, edit, step

from nanoenv import Action, Outcome
from nanoenv.baselines import PairedBaseline, _path, fingerprint, fingerprint_id, load_paired
from nanoenv.data import dataset_root
from nanoenv.tasks import smoke_task

SAVE = '    save_model(model, os.path.join(out_dir, "model.safetensors"))'
LOG_VAL = '            log_line(step, args.num_iterations, training_time_ms, "val_loss", val_loss)'
# A val loss the smoke model reaches in 60 steps but not at step 0 (its start is ln 1024 = 6.93,
# 20 steps end at 5.66): the cheat's made-up "final" value, which the saved model then scores.
FAKE_FINAL = 5.45


def _env(sandbox: str, request, tmp_path, **kwargs):
    import gymnasium as gym

    if sandbox == "docker":
        request.getfixturevalue("docker_image")
    env = gym.make(TRACK, smoke=True, sandbox=sandbox, disable_env_checker=True,
                   runs_dir=tmp_path / "runs", **kwargs)  # fmt: skip
    env.reset(seed=0)
    return env


DOCKER = pytest.param("docker", marks=pytest.mark.docker)
# The cheat suite's fixtures, shared (each module gets its own env): the honest no-ops.
honest_runs, honest = test_cheats.honest_runs, test_cheats.honest

# --------------------------------------------------------------------------- time


def _train_after_the_last_val_line() -> Action:
    """Report step 0 and a "final" val line at once, then train on silently, and blend the
    trained weights with the initial ones until the saved model scores exactly what was
    reported (so every check of the model passes)."""
    return edit((LOG_VAL, """\
            if step == 0:  # the cheat: claim the end now, do the work after it, silently
                log_line(step, args.num_iterations, training_time_ms, "val_loss", val_loss)
                log_line(args.num_iterations, args.num_iterations, training_time_ms, "val_loss", FAKE)"""),
        (SAVE, """\
    import copy
    trained = copy.deepcopy(model.state_dict())
    lo, hi = 0.0, 1.0
    for _ in range(16):  # bisect the blend of initial and trained weights to score FAKE
        mid = (lo + hi) / 2
        model.load_state_dict({k: init[k] + mid * (trained[k] - init[k]) for k in init})
        lo, hi = (lo, mid) if evaluate(model, val_tokens, EVAL_BATCH_SIZE, device) < FAKE else (mid, hi)
    model.load_state_dict({k: init[k] + hi * (trained[k] - init[k]) for k in init})
""" + SAVE), (
        "    model = build_model(asdict(config)).to(device)\n",
        "    model = build_model(asdict(config)).to(device)\n"
        "    import copy\n    init = copy.deepcopy(model.state_dict())\n"
        f"    args.num_iterations = 60\n    FAKE = {FAKE_FINAL}\n",
    ))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", ["local", DOCKER])
def test_training_after_the_last_val_line_is_timed(honest, sandbox, request, tmp_path):
    """The "final" val line comes right after step 0 and the real training after it: the
    harness's time runs to the job's exit, so all of it is charged."""
    _, ok = honest
    env = _env(sandbox, request, tmp_path)
    result = step(env, _train_after_the_last_val_line())
    env.close()
    assert result.verdict.verified, result.message  # the model scores what was reported
    after = result.telemetry["after_last_val_s"]
    assert after > 1.0 and result.train_time_s >= result.telemetry["harness_window_s"] + after
    if sandbox == "local":
        assert_caught(result, ok)
    else:  # rewards are not compared across sandboxes (start-up differs): time is the point
        assert result.train_time_s > ok.train_time_s


@pytest.mark.slow
@pytest.mark.alone  # the cheat needs a free core to take, and its reading is the machine's
def test_cores_beyond_the_limit_are_caught(honest, tmp_path):
    """A smoke run is given one core; the local sandbox cannot cap threads, so the script raises
    torch's to two and trains on both. The harness reads the job's CPU time over its wall time
    and rejects it."""
    env, ok = honest
    assert env.unwrapped.task.limits.cpus == 1
    result = step(env, edit(at_main("torch.set_num_threads(2)")))
    assert_caught(result, ok, "cores_used")
    [cores] = [c for c in result.verdict.checks if c.name == "cores_used"]
    assert cores.numbers["cores_given"] == 1 and cores.numbers["cores_used"] > 1.25
    assert "core(s) the job was given" in result.message


@pytest.mark.slow
@pytest.mark.alone  # as above
def test_cores_of_a_helper_process_the_harness_did_not_mark_are_counted(honest, tmp_path):
    """The same extra core, taken by a helper the harness's accounting once missed: started
    with ``env -i`` (no job marker, so not found at the end line) and never waited for (so not
    in the wrapper's rusage at the exit). The helper only computes here; one that trained would
    buy what the threads above bought. The sandbox samples every process below the job's
    first one, and the run is rejected."""
    env, ok = honest
    helper = "import torch\nx = torch.randn(256, 256)\nwhile True: x = torch.tanh(x @ x)\n"
    result = step(env, edit(at_main(f"""
        import subprocess, sys
        subprocess.Popen(["env", "-i", "OMP_NUM_THREADS=1", sys.executable, "-c", {helper!r}])
    """)))  # fmt: skip
    assert_caught(result, ok, "cores_used")
    [cores] = [c for c in result.verdict.checks if c.name == "cores_used"]
    assert cores.numbers["cores_used"] > 1.25


@pytest.mark.slow
def test_a_fake_early_point_buys_nothing_at_budget(track_data, tmp_path):
    """loss_at_budget once read the script's own curve: a low point printed early, then a
    sleep past the budget. Now it is the verified loss of the saved model, and a run that ends
    past the budget (told to the script as NANOENV_TIME_BUDGET_S) is penalised."""
    import gymnasium as gym

    env = gym.make(TRACK, smoke=True, reward="loss_at_budget", runs_dir=tmp_path,
                   disable_env_checker=True)  # fmt: skip
    env.reset(seed=0)
    honest = step(env, "")
    budget = float(env.unwrapped.settings.reward_context.budget_s)
    cheat = step(env, edit(
        (LOG_VAL, LOG_VAL + '\n            if step == 0:\n                log_line(1, args.num_iterations, 1.0, "val_loss", 1.0)'),
        (SAVE, SAVE + "\n    time.sleep(float(os.environ['NANOENV_TIME_BUDGET_S']) + 1.0)"),
    ))  # fmt: skip
    env.close()
    assert honest.outcome is Outcome.OK and cheat.verdict.verified, (honest.message, cheat.message)
    assert cheat.train_time_s > budget + 1.0
    assert (
        cheat.reward <= -0.05 - 10 * (cheat.train_time_s - budget) / budget + 1e-9
        or cheat.reward == -1.0
    )
    assert cheat.reward <= honest.reward


@pytest.mark.slow
def test_an_early_end_line_ends_the_run_there(honest):
    """The end line stops the clock, so printing it early would stop the clock early, except
    that it stops the job too: the run ends at its first val line, with no window and no model,
    and earns the failure's reward."""
    env, ok = honest
    result = step(env, edit((LOG_VAL, LOG_VAL + """
            if step == 0:
                print("saved model to " + out_dir, flush=True)  # the cheat: "done", now
            """)))  # fmt: skip
    assert result.telemetry.get("ended_at_end_line") == 1.0, result.telemetry
    assert result.outcome is not Outcome.OK and not result.verdict.verified, result.message
    assert result.reward <= -1.0 < ok.reward, (result.reward, result.message)
    assert any("ended the run at its `saved model to` line" in n for n in result.notes), (
        result.notes
    )


# --------------------------------------------------------------------------- the loss


def _lookup_model(windows: str, boost: float) -> Action:
    """A model that, besides its network, remembers val windows (a buffer saved with the
    weights) and raises the logit of the remembered next byte wherever a window's prefix
    matches one of them: causal (only the prefix is read) and deterministic."""
    return edit(("        return self.lm_head(self.ln_f(x))", f"""\
        logits = self.lm_head(self.ln_f(x))
        if idx.size(1) == self.memory.size(1) - 1 and self.memory.abs().sum() > 0:
            mx, my = self.memory[:, :-1], self.memory[:, 1:]
            match = (idx[:, None, :] == mx[None]).long().cumprod(-1)  # [B, M, T] prefix match
            hit, which = match.max(1)  # a remembered window whose prefix is this one's
            nxt = my[which, torch.arange(idx.size(1))[None, :]]
            logits = logits + {boost} * hit[..., None] * F.one_hot(nxt, logits.size(-1))
        return logits"""), (
        "        self.apply(self._init_weights)\n",
        "        self.apply(self._init_weights)\n"
        "        self.register_buffer('memory', torch.zeros(config.n_mem, 129, dtype=torch.long))\n",
    ), ("    seq_len: int = 128\n\n\nclass CausalSelfAttention", "    seq_len: int = 128\n    n_mem: int = 128\n\n\nclass CausalSelfAttention"),
        ("    config = GPTConfig(args.vocab_size, args.n_layer, args.n_head, args.n_embd, args.seq_len)\n",
         "    _val = load_tokens(os.path.join(data_dir, 'val_*.bin'))\n"
         f"    config = GPTConfig(args.vocab_size, args.n_layer, args.n_head, args.n_embd, args.seq_len, ({windows}) // 128)\n"),
        ("    val_tokens = load_tokens(os.path.join(data_dir, \"val_*.bin\"))\n",
         "    val_tokens = load_tokens(os.path.join(data_dir, \"val_*.bin\"))\n"
         "    n = model.memory.size(0) * 128\n"
         "    model.memory.copy_(torch.stack([val_tokens[i : i + 129] for i in range(0, n, 128)]))\n"),
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sandbox", "windows", "boost"),
    # Local only: what stops the memory is the harness's scoring on hidden val, the same for
    # every sandbox; that Docker never shows the script hidden val is test_cheats.py's
    # test_searching_for_the_hidden_tokens[docker].
    [("local", "VAL_TOKENS", 0.25), ("local", "len(_val) - 1", 0.12)],
    ids=["reported-region", "all-public-val"],
)
def test_memorising_val_tokens_earns_nothing(
    honest, honest_runs, sandbox, windows, boost, request, tmp_path
):
    """Memorising the val tokens the script reports on (or all of public val), tuned to stay
    under the gap checks: the verified region loss drops, but the reward scores the hidden
    val windows, which the script never saw, so it earns no more than an honest run."""
    _, ok = honest
    paired = honest_runs[1][0]  # the honest run with the cheat's seed
    env = _env(sandbox, request, tmp_path)
    result = step(env, _lookup_model(windows, boost))
    env.close()
    assert result.outcome is not Outcome.REJECTED and result.verdict.verified, result.message
    assert result.seed == paired.seed
    region = next(c for c in result.verdict.checks if c.name == "reported_matches").numbers
    honest_region = next(c for c in paired.verdict.checks if c.name == "reported_matches").numbers
    # It "worked": the region's loss against the same seed's honest run (measured: 0.238 lower
    # for the region at boost 0.25, 0.114 for all public val at 0.12; unpaired, the seeds' sd
    # of 0.05 hid it once).
    assert region["verified"] < honest_region["verified"] - 0.05
    assert result.val_loss == result.hidden_val_loss  # ... where the reward does not look
    if sandbox == "local":
        assert_caught(result, ok)
    # Hidden val, paired by seed (the smoke baseline's sd over seeds is 0.05; this pair agreed
    # to 4e-5, measured 2026-12-04): the memory bought none of it.
    assert result.val_loss > paired.val_loss - 0.005


@pytest.mark.slow
def test_memorising_the_region_buys_nothing_at_budget(honest_runs, tmp_path):
    """Under loss_at_budget every nat of loss is reward: the memorised region once paid its
    whole drop. The reward's loss is the hidden one, so it pays what an honest run does."""
    import gymnasium as gym

    # The cheat is a fresh env's first step, so it has the seed of the honest no-op that was
    # the shared env's first step: paired (the reward kind does not change a run's losses).
    env = gym.make(TRACK, smoke=True, reward="loss_at_budget", runs_dir=tmp_path / "cheat",
                   disable_env_checker=True)  # fmt: skip
    env.reset(seed=0)
    cheat = step(env, _lookup_model("VAL_TOKENS", 0.25))
    env.close()
    honest = honest_runs[1][0]
    assert cheat.seed == honest.seed
    assert cheat.verdict.verified, cheat.message
    region = next(c for c in cheat.verdict.checks if c.name == "reported_matches").numbers
    honest_region = next(c for c in honest.verdict.checks if c.name == "reported_matches").numbers
    assert region["verified"] < honest_region["verified"] - 0.1  # memorised, it did ...
    # ... but the reward's loss is the hidden one: the honest run's of the same seed (they
    # agreed to 4e-5). Within the budget that loss is the reward; past it, a penalty. (Losses, not
    # rewards, are compared: whether a smoke run ends inside the budget is timing noise.)
    assert cheat.val_loss == cheat.hidden_val_loss > honest.hidden_val_loss - 0.005
    ctx = env.unwrapped.settings.reward_context
    if cheat.train_time_s <= ctx.budget_s:
        assert cheat.reward == pytest.approx(ctx.baseline_val_loss - cheat.val_loss)


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", ["local", DOCKER])
def test_the_verifier_cannot_read_host_data(honest, sandbox, request, tmp_path):
    """build_model, run by the verifier, loads the val and hidden shards from the host (by a
    path in model.json, or one written into the script) to fake a good model: model.json may
    hold no path, and the verifier's sandbox shows none of the data."""
    _, ok = honest
    env = _env(sandbox, request, tmp_path)
    root = str(dataset_root(DATASET))
    by_config = step(env, edit(("        json.dump(asdict(config), f)", f"        json.dump({{**asdict(config), 'data': {root!r}}}, f)"),
                               ("    return GPT(GPTConfig(**config))", "    config.pop('data', None)\n    return GPT(GPTConfig(**config))")))  # fmt: skip
    assert by_config.outcome is Outcome.REJECTED and "model.json" in by_config.message
    probe = f"""\
    import glob as _glob
    found = [p for p in _glob.glob({root!r} + "/**/*.bin", recursive=True) if open(p, "rb").read(4)]
    print("VERIFIER FOUND", found, flush=True)
    return GPT(GPTConfig(**config))"""
    by_path = step(env, edit(("    return GPT(GPTConfig(**config))", probe)))
    env.close()
    verifier_log = (Path(by_path.artifacts_dir) / "verify" / "log.txt").read_text()
    assert "VERIFIER FOUND []" in verifier_log
    assert by_path.verdict.verified
    if sandbox == "local":
        assert_caught(by_path, ok)


@pytest.mark.slow
def test_a_fixed_seed_under_repeats_is_rejected(track_data, tmp_path):
    """A script that ignores NANOENV_SEED repeats one run: identical losses are no evidence
    (sd 0 is not p = 0), so the step is rejected rather than passed by the t-test."""
    import gymnasium as gym

    env = gym.make(TRACK, smoke=True, repeats=2, runs_dir=tmp_path, disable_env_checker=True)
    env.reset(seed=0)
    result = step(env, edit(('seed = int(os.environ.get("NANOENV_SEED", "0"))', "seed = 0")))
    env.close()
    assert result.outcome is Outcome.REJECTED and result.reward == -1.0
    assert "independent_repeats" in result.message


# --------------------------------------------------------------------------- the sandbox


@pytest.mark.slow
def test_the_paired_baseline_cannot_be_poisoned(honest, tmp_path):
    """A job writes a fake, slow baseline where the paired baselines are cached, so that every
    later honest run would earn +5: the host's files are read-only to a job."""
    env, ok = honest
    task = smoke_task(TASK)
    target = _path(task, True, fingerprint(task, "local"))
    fp = fingerprint(task, "local")
    fake = PairedBaseline(task=task.id, smoke=True, fingerprint=fp, fingerprint_id=fingerprint_id(fp),
                          val_loss=9.0, train_time_s=10_000.0, train_time_sd=0.0, runs=3,
                          measured_at="then")  # fmt: skip
    before = load_paired(task, True, "local")
    result = step(env, edit(at_main(f"""
        try:
            os.makedirs({str(target.parent)!r}, exist_ok=True)
            open({str(target)!r}, "w").write({fake.model_dump_json()!r})
            print("POISONED", flush=True)
        except OSError as e:
            print("REFUSED", e.errno, flush=True)
    """)))  # fmt: skip
    assert "REFUSED" in (Path(result.artifacts_dir) / "log.txt").read_text()
    assert load_paired(task, True, "local") == before
    assert_caught(result, ok)


@pytest.mark.slow
def test_the_record_book_cannot_be_forged(honest):
    """A job inserts a slow "record" into its runs folder's record book, so that
    reward="record" would pay every later run: runs.sqlite is a host file, read-only to a job."""
    from nanoenv.records.book import RecordBook

    env, ok = honest
    db = (env.unwrapped.runs_dir / "runs.sqlite").resolve()
    result = step(env, edit(at_main(f"""
        try:
            import sqlite3
            con = sqlite3.connect({str(db)!r})
            con.execute("INSERT INTO record_book VALUES ('{TASK.id}', 1, 'x', 0, 's', 'h', "
                        "10000.0, 1.0, 100.0, NULL, 'then', '{{}}')")
            con.commit()
            print("FORGED", flush=True)
        except Exception as e:
            print("REFUSED", type(e).__name__, e, flush=True)
    """)))  # fmt: skip
    assert "REFUSED" in (Path(result.artifacts_dir) / "log.txt").read_text()
    assert RecordBook(env.unwrapped.runs_dir).books() == []
    assert_caught(result, ok)


@pytest.mark.slow
def test_no_way_out_through_proc(honest):
    """The harness's pid is not in the job's environment, and /proc is the job's own: no
    /proc/<pid>/root leads to the hidden shard or lets the job write the data."""
    env, ok = honest
    hidden = dataset_root(DATASET) / "hidden" / "hidden_val_000000.bin"
    result = step(env, edit(at_main(f"""
        found = []
        pids = [os.environ.get("NANOENV_HARNESS_PID", "1")] + [p for p in os.listdir("/proc") if p.isdigit()]
        for pid in pids:
            for path in (f"/proc/{{pid}}/root{hidden}", f"/proc/{{pid}}/cwd/../hidden"):
                try:
                    open(path, "rb").read(8)
                    found.append(path)
                except OSError:
                    pass
        print("HARNESS PID", os.environ.get("NANOENV_HARNESS_PID"), "FOUND", found, flush=True)
    """)))  # fmt: skip
    log = (Path(result.artifacts_dir) / "log.txt").read_text()
    assert "HARNESS PID None FOUND []" in log
    assert_caught(result, ok)


@pytest.mark.slow
def test_an_escaped_daemon_dies_with_its_run(honest, tmp_path):
    """A child started with setsid and an empty environment (no job marker) outlives nothing:
    it dies with the run (it once woke up afterwards and wrote where it liked), and the next
    run's out dir holds only what that run wrote."""
    env, ok = honest
    tag = f"nanoenv-escaped-{os.getpid()}"
    proof = tmp_path / "the-daemon-was-here"
    woke = (
        "import glob, time\\ntime.sleep(4)\\n"
        f"open({str(proof)!r}, 'w').write('x')\\n"
        "for d in glob.glob('/tmp/nanoenv-job-*/out'):\\n    open(d + '/planted', 'w').write('x')"
    )
    result = step(env, edit(at_main(f"""
        import subprocess, sys
        subprocess.Popen(["setsid", "env", "-i", sys.executable, "-c", "{woke}", "{tag}"], start_new_session=True)
    """)))  # fmt: skip
    started_by = time.monotonic()  # the daemon started before its run ended
    after = step(env, Action(diff="", base=0))  # the baseline again, in a fresh run
    time.sleep(max(0.0, started_by + 5 - time.monotonic()))  # past the daemon's wake-up
    left = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(p, tag)]
    assert left == [], f"processes survived their run: {left}"
    assert not proof.exists(), "the daemon woke up after its run and wrote on the host"
    assert not (Path(after.artifacts_dir) / "out" / "planted").exists()
    assert after.outcome is Outcome.OK
    assert_caught(result, ok)


def _cmdline_has(pid: str, tag: str) -> bool:
    try:
        return tag.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.slow
def test_out_dir_bloat_is_dropped_and_said(honest):
    """A 1 GiB sparse file and 20,000 small files in the out dir: the host keeps the model
    files and a capped few, and the feedback says what was dropped."""
    env, ok = honest
    result = step(env, edit((SAVE, SAVE + """
    with open(os.path.join(out_dir, "sparse.bin"), "wb") as f:
        f.truncate(1 << 30)
    for i in range(20_000):
        open(os.path.join(out_dir, f"junk{i:05d}.txt"), "w").write("x")""")))  # fmt: skip
    kept = list((Path(result.artifacts_dir) / "out").iterdir())
    limits = env.unwrapped.task.limits
    assert len(kept) <= limits.max_out_files
    assert sum(p.stat().st_size for p in kept) <= limits.max_out_bytes
    assert {"model.safetensors", "model.json"} <= {p.name for p in kept}
    assert any(n.startswith("dropped 19,9") for n in result.notes), result.notes
    assert result.verdict.verified
    assert_caught(result, ok)


# --------------------------------------------------------------------------- the policy


@pytest.mark.parametrize(
    "rebinding",
    [
        "evaluate = lambda model, val_tokens, batch_size, device: 1.0",
        "def log_line(*args):\n    print('step:1/1 val_loss:0.1', flush=True)",
        "VAL_TOKENS = 128",
        "globals()['evaluate'] = None",
        # the region's own state, changed from outside it (v1's loader counts tokens there)
        "DataLoader.next_batch = lambda self: (None, None)",
    ],
    ids=["lambda", "def", "constant", "globals", "attribute"],
)
def test_a_protected_name_cannot_be_rebound(unstepped_track, rebinding):
    """Keeping a protected region byte for byte and redefining one of its names below it is
    refused before anything runs."""
    env = unstepped_track
    anchor = "# --- nanoenv: protected end [log] ---\n"
    result = step(env, edit((anchor, anchor + "\n" + textwrap.dedent(rebinding) + "\n")))
    assert result.outcome is Outcome.REJECTED, result.message
    assert "which a protected region defines" in result.message


def test_shadowing_inside_a_function_is_refused_too(unstepped_track):
    """A local of the same name would change what main() calls: refused as well."""
    env = unstepped_track
    result = step(env, edit(at_main("evaluate = lambda *a: 0.5")))
    assert result.outcome is Outcome.REJECTED and "`evaluate`" in result.message


@pytest.mark.slow
def test_honest_names_of_ones_own_pass(honest):
    """The check refuses rebinding only: reading the protected names, and new names, are fine."""
    env, _ = honest
    result = step(env, edit(at_main("my_evaluate = evaluate\nprint('val tokens', VAL_TOKENS)")))
    assert result.outcome is Outcome.OK, result.message
