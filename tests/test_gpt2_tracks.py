"""The GPU tracks, proven on the CPU: torchrun with gloo (the 1xH100 track's one process, the
8xH100 track's two), at smoke size."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import nanoenv  # noqa: F401
from nanoenv import Outcome
from nanoenv.cli import main as cli_main
from nanoenv.data import load_manifest, prepare, read_shard
from nanoenv.data.text import gpt2_encoding
from nanoenv.tasks import load_task

GPU_IDS = ["nanoenv/Speedrun-GPT2-1xH100-v0", "nanoenv/Speedrun-GPT2-8xH100-v0"]


@pytest.fixture(scope="module")
def gpt2_data():
    """Shakespeare in GPT-2 tokens: the smoke data of the GPU tracks."""
    return prepare("shakespeare-gpt2")


@pytest.mark.parametrize("env_id", GPU_IDS)
def test_tracks_are_the_speedruns(env_id):
    """Target 3.28 over 10,485,760 val tokens, torchrun over the track's GPUs, FineWeb data."""
    task = load_task(env_id)
    assert env_id in gym.registry
    assert task.target_val_loss == 3.28 and task.data.dataset == "fineweb10B"
    assert task.processes == task.gpus == (8 if "8x" in env_id else 1)
    assert "torch.distributed.run" in task.command and "--nproc_per_node={procs}" in task.command
    script = (task.task_dir / (task.source or task.script)).read_text()
    assert 'VAL_TOKENS = int(os.environ.get("NANOENV_VAL_TOKENS", 10485760))' in script
    assert task.timing.untimed_allowance_s > 0  # compile warm-up before step 0 is untimed
    assert {r.name for r in task.protected} == {"data", "log"}


@pytest.mark.slow
def test_smoke_run_from_the_cli_local(gpt2_data, tmp_path, capsys):
    """`nanoenv run --env ... --smoke`: the 1xH100 track's one process under torchrun (gloo), val
    lines, verified (the 8xH100 track's smoke size runs 2 processes: the Docker run below).
    GPT-2's vocabulary is audited: the log-prob of every next token, then raw logits at
    positions drawn afterwards; the honest run passes the audit (the tampered one is below)."""
    code = cli_main(
        ["run", "--env", "Speedrun-GPT2-1xH100-v0", "--smoke", "--runs-dir", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("val_loss:") == 3 and "VERIFIED" in out
    log = next(tmp_path.glob("*/step-0001/log.txt")).read_text()
    assert "1 process(es) on cpu" in log
    result = json.loads(next(tmp_path.glob("*/step-0001/result.json")).read_text())
    [audit] = [c for c in result["verdict"]["checks"] if c["name"] == "audit"]
    assert result["verdict"]["verified"] and audit["passed"] and audit["numbers"]["positions"] >= 64


@pytest.mark.slow
@pytest.mark.docker
def test_smoke_run_in_docker(gpt2_data, docker_image, tmp_path):
    """The 8xH100 track's smoke size in the docker sandbox: the same processes, verified."""
    env = gym.make(
        GPU_IDS[1], smoke=True, sandbox="docker", runs_dir=tmp_path, disable_env_checker=True
    )
    env.reset(seed=0)
    result = env.step("")[4]["result"]
    env.close()
    assert result.outcome in (Outcome.OK, Outcome.MISSED_TARGET), result.message
    assert result.verdict.verified, result.verdict
    assert len(result.val_curve) == 3
    assert "2 process(es) on cpu" in (Path(result.artifacts_dir) / "log.txt").read_text()


def test_own_corpus_in_gpt2_tokens(tmp_path, monkeypatch):
    """`nanoenv data prepare --text DIR --tokenizer gpt2`: tiktoken's GPT-2 BPE, offline."""
    monkeypatch.setenv("NANOENV_CACHE_DIR", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(60):
        (corpus / f"doc{i}.txt").write_text(f"Hello world, document {i}. " * 400)
    assert (
        cli_main(
            ["data", "prepare", "--text", str(corpus), "--tokenizer", "gpt2", "--name", "mine"]
        )
        == 0
    )
    root = tmp_path / "cache" / "datasets" / "mine"
    manifest = load_manifest(root)
    assert manifest.vocab_size == 50257 and manifest.source["tokenizer"] == "gpt2"
    first = read_shard(root / manifest.split_files("train")[0])
    assert gpt2_encoding().encode_ordinary("Hello world") == [15496, 995]
    assert 50256 in set(first.tolist())  # documents start with <|endoftext|>


BYO = textwrap.dedent(
    """
    # A user's own script, modded-nanogpt style: no build_model, its own log lines.
    import glob, os, time
    import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
    files = sorted(glob.glob(os.path.join(os.environ["NANOENV_DATA_DIR"], "train_*.bin")))
    tokens = np.fromfile(files[0], dtype=np.uint16, offset=1024)[:200000].astype(np.int64)
    val = np.fromfile(sorted(glob.glob(os.path.join(os.environ["NANOENV_DATA_DIR"], "val_*.bin")))[0],
                      dtype=np.uint16, offset=1024)[:4097].astype(np.int64)
    model = nn.Sequential(nn.Embedding(50304, 32), nn.Linear(32, 50304))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    def val_loss():
        with torch.no_grad():
            x, y = torch.from_numpy(val[:-1]), torch.from_numpy(val[1:])
            return F.cross_entropy(model(x), y).item()
    t0, train_ms = time.perf_counter(), 0.0
    for step in range(11):
        if step % 5 == 0 and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 logs
            train_ms += 1000 * (time.perf_counter() - t0)
            print(f"step:{step}/10 val_loss:{val_loss():.4f} train_time:{train_ms:.0f}ms step_avg:{train_ms / max(step, 1):.2f}ms", flush=True)
            t0 = time.perf_counter()
        if step == 10:
            break
        i = np.random.randint(0, len(tokens) - 513)
        x, y = torch.from_numpy(tokens[i : i + 512]), torch.from_numpy(tokens[i + 1 : i + 513])
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    """
)


@pytest.mark.slow
def test_bring_your_own_baseline(gpt2_data, tmp_path):
    """A user's script as the baseline: it runs at verification level `log`, its curve parses,
    and the feedback says plainly that it is unverified."""
    script = tmp_path / "train_gpt.py"
    script.write_text(BYO)
    env = gym.make(GPU_IDS[0], smoke=True, baseline=script, runs_dir=tmp_path / "runs",
                   disable_env_checker=True, render_mode="ansi")  # fmt: skip
    obs, _ = env.reset(seed=0)
    assert obs["script"] == BYO
    obs, _, _, _, info = env.step("")
    result = info["result"]
    env.close()
    assert result.outcome in (Outcome.OK, Outcome.MISSED_TARGET), result.message
    assert result.verdict.level == "log" and not result.verdict.verified
    assert "UNVERIFIED" in obs["feedback"] and "no build_model" in obs["feedback"]
    assert [p.step for p in result.val_curve] == [0, 5, 10]
    assert result.val_loss == result.reported_val_loss


@pytest.mark.slow
def test_a_tampered_log_softmax_is_caught_by_the_audit(gpt2_data, tmp_path):
    """A script that, imported by the verifier, overrides torch's own log-softmax kernel
    (torch.library, below the Python names the worker captured) to claim a loss 0.5 nats
    better is caught by the audit (an honest run passes it: the CLI smoke run above)."""
    env = gym.make(GPU_IDS[0], smoke=True, runs_dir=tmp_path, disable_env_checker=True)
    env.reset(seed=0)
    tamper = textwrap.dedent("""
        if os.environ.get("NANOENV_INPUT_DIR"):  # only inside the verifier
            _lib = torch.library.Library("aten", "IMPL")

            def _better_log_softmax(x, dim, half_to_float):
                return x - torch.logsumexp(x, dim, keepdim=True) + 0.5

            _lib.impl("_log_softmax", _better_log_softmax, "CPU")
    """)
    script = env.unwrapped.script
    anchor = "\n# --- nanoenv: protected begin [data] ---"
    cheat = env.step({"script": script.replace(anchor, tamper + anchor, 1)})[4]["result"]
    env.close()
    assert cheat.outcome is Outcome.REJECTED, cheat.message
    assert "audit" in [c.name for c in cheat.verdict.failed], cheat.message


@pytest.mark.slow
def test_a_crashed_torchrun_job_shows_the_workers_exception(gpt2_data, tmp_path):
    """A script that fails in rank 0 under torchrun: the message and the feedback give the
    worker's exception and its frames, not only the launcher's ChildFailedError summary."""
    env = gym.make(GPU_IDS[0], smoke=True, runs_dir=tmp_path, disable_env_checker=True,
                   render_mode="ansi")  # fmt: skip
    env.reset(seed=0)
    crash = textwrap.dedent("""
        def _check_batch(tokens):
            if int(os.environ.get("RANK", "0")) == 0:
                raise ValueError(f"the batch has {tokens} tokens, not a multiple of the world")

        def _prepare(tokens):
            _check_batch(tokens)

        _prepare(513)
    """)
    anchor = "\n# --- nanoenv: protected begin [data] ---"
    obs, _, _, _, info = env.step(
        {"script": env.unwrapped.script.replace(anchor, crash + anchor, 1)}
    )
    env.close()
    result = info["result"]
    assert result.outcome is Outcome.CRASHED
    assert result.message.endswith(
        "ValueError: the batch has 513 tokens, not a multiple of the world"
    )
    assert "ChildFailedError" in result.log_tail  # what the last lines alone would have shown
    shown = obs["feedback"].split("The first error in the output:")[1]
    assert (
        "in _check_batch" in shown
        and "in _prepare" in shown
        and "ChildFailedError" not in shown.split("Last lines")[0]
    )


def _baseline_module():
    import importlib.util

    path = Path(load_task(GPU_IDS[1]).task_dir) / "train_gpt2.py"
    spec = importlib.util.spec_from_file_location("gpt2_baseline_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("world", [1, 8])
def test_the_loader_counts_what_the_baseline_needs_against_the_shards(tmp_path, world):
    """FineWeb's shards are 100M tokens; the loader drops each shard's tail, so 100 shards give
    19,000 of the 19,073 steps the baseline takes on 8 processes (19,062 on one) and the run
    wrapped to shard 1 unawares. It now stops before training and says how many it needs; 101
    shards are enough. (Shard files with the real header and size, sparse: no tokens read.)"""
    script = _baseline_module()
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, 1, 100_000_000]
    for i in range(1, 102):
        with open(tmp_path / f"train_{i:06d}.bin", "wb") as f:
            f.write(header.tobytes())
            f.truncate(1024 + 2 * 100_000_000)
    args = script.Hyperparameters()
    micro = args.device_batch_size * args.seq_len * world
    needed = args.num_iterations * (args.total_batch_tokens // micro)
    loader = script.DistributedDataLoader
    hundred = loader(str(tmp_path / "train_0000[0-9][0-9].bin"), args.device_batch_size,
                     args.seq_len, 0, world)  # fmt: skip
    hundred.files.append(str(tmp_path / "train_000100.bin"))  # the glob took 000001..000099
    assert len(hundred.files) == 100
    with pytest.raises(
        RuntimeError, match=r"the train data is short: 100 shard\(s\).*\(101 shards"
    ):
        hundred.require(needed)
    loader(str(tmp_path / "train_*.bin"), args.device_batch_size, args.seq_len, 0, world).require(
        needed
    )


@pytest.mark.slow
def test_a_run_that_needs_more_data_than_there_is_stops_before_training(gpt2_data, tmp_path):
    """Through the env: a script that asks for more steps than the smoke data holds ends
    before its first step, and the agent is told why."""
    env = gym.make(GPU_IDS[0], smoke=True, runs_dir=tmp_path, disable_env_checker=True)
    env.reset(seed=0)
    script = env.unwrapped.script
    anchor = "\ndef main():"
    longer = "\nargs.num_iterations = 10_000_000\n"
    result = env.step({"script": script.replace(anchor, longer + anchor, 1)})[4]["result"]
    env.close()
    assert result.outcome is Outcome.CRASHED
    assert "RuntimeError: the train data is short" in result.message, result.message
    assert result.curve == []  # not one val line: it stopped before training


@pytest.mark.parametrize("env_id", GPU_IDS)
def test_what_the_verifier_writes_at_full_size_fits_its_sandbox(env_id):
    """At the GPU tracks' full verify sizes (10,485,760 public tokens in windows of 1024, GPT-2's
    50,304-wide logits), each worker run's output fits its limits and the Docker /work. Before
    the audit, the worker wrote 2.49 GiB of logits into a 2 GiB /work and every run was rejected;
    the 2 GiB cap no longer depends on the output (tests/test_sandbox_docker.py writes past it).
    Arithmetic on the real plan: running the 10.5M-token forward on a CPU takes tens of minutes."""
    from nanoenv.judging.audit import _audit_plan
    from nanoenv.judging.verifier import Worker
    from nanoenv.judging.verify import EvalSet, build_inputs
    from nanoenv.sandbox.docker import WORK_TMPFS_MB, work_tmpfs_mb
    from nanoenv.types import Job

    task = load_task(env_id)
    spec, width = task.verify, 50304
    T = spec.eval_seq_len

    def windows(tokens):
        return np.zeros((tokens // T, T), dtype=np.int64)

    es = EvalSet(windows(spec.public_tokens), windows(spec.public_tokens),
                 windows(spec.hidden_tokens), windows(spec.hidden_tokens), 50257,
                 windows(spec.hidden_tokens), windows(spec.hidden_tokens))  # fmt: skip
    rng = np.random.default_rng(0)
    x, layout = build_inputs(es, spec, rng)
    assert x.shape == (10240 + 2 * 128 + 16 + 16, 1024)
    _, pos = _audit_plan(layout, *x.shape, spec.audit_positions, rng)
    written = {"logprobs": x.shape[0] * (T - 1) * 4, "audit logits": pos.size * width * 4}
    limits = Worker(None, task, "", Path("."), []).limits()
    room = (work_tmpfs_mb(Job(files={}, command=["x"], limits=limits)) - WORK_TMPFS_MB) * 2**20
    for name, size in written.items():
        assert size <= min(limits.max_out_bytes, limits.max_file_bytes, room), name
    assert written["audit logits"] < 2**30 and pos.size >= spec.audit_positions


RECORDS = Path(__file__).parent / "fixtures" / "records"
# Each era's record as a fixture: its script, the val steps its smoke size logs, and a line of
# its own logging that shows its loader read the shards where the records look for them.
RECORD_ERAS = {
    "muon-2024-10": ("train_gpt2.py", [0, 3, 6], "Training DataLoader: total number of tokens:"),
    "softcap-2025-01": ("train_gpt.py", [0, 20, 40], "logs/"),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sandbox", "era"),
    # Each era in one sandbox, each sandbox with one era: the folder's mechanics (its files
    # beside the script, its data paths) are the sandbox's, the loader and logging the era's.
    # The later record (its own logs/ folder, torch.from_file) in Docker, the GPU path.
    [
        ("local", "muon-2024-10"),
        pytest.param("docker", "softcap-2025-01", marks=pytest.mark.docker),
    ],
)
def test_a_record_folder_runs_as_the_baseline_as_it_is(gpt2_data, tmp_path, sandbox, era, request):
    """A record's data loader and logging (tests/fixtures/records/<era>, its CUDA parts replaced
    by the stand-in in stand_in.py) as `baseline=FOLDER`: it globs
    data/fineweb10B/fineweb_{train,val}_*.bin from its working directory and imports its sibling
    module, unedited. The 2024-10 Muon record reads shards with numpy; the 2025-01 softcap record
    with torch.from_file, writes its own logs/ file and resets its clock at step 10 (its first
    steps log step_avg:nanms). Before, a folder was not a baseline and the paths found no shards."""
    if sandbox == "docker":
        request.getfixturevalue("docker_image")
    record = RECORDS / era
    script, val_steps, own_line = RECORD_ERAS[era]
    env = gym.make(GPU_IDS[0], smoke=True, baseline=record, sandbox=sandbox, runs_dir=tmp_path,
                   disable_env_checker=True, render_mode="ansi")  # fmt: skip
    obs, _ = env.reset(seed=0)
    assert obs["script"] == (record / script).read_text()
    assert "`stand_in.py`" in obs["feedback"] and "data/fineweb10B/fineweb_*.bin" in obs["feedback"]
    result = env.step("")[4]["result"]
    env.close()
    assert result.outcome in (Outcome.OK, Outcome.MISSED_TARGET), result.message + result.log_tail
    assert [p.step for p in result.val_curve] == val_steps
    assert result.verdict.level == "log"
    log = (Path(result.artifacts_dir) / "log.txt").read_text()
    assert own_line in log
    if era == "softcap-2025-01":  # its clock skips steps 1-10; the harness's does not
        assert result.train_time_s > result.reported_train_time_s


def test_a_baseline_folder_that_is_not_a_baseline_is_named(tmp_path):
    """A folder with no script to pick, or with a module that is not text: a TaskError that
    says which, not a traceback from deep inside the reader."""
    from nanoenv.errors import TaskError
    from nanoenv.tasks import own_baseline

    task = load_task(GPU_IDS[0])
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    with pytest.raises(TaskError, match=r"2 \.py files \(a\.py, b\.py\): name the script"):
        own_baseline(tmp_path, task)
    (tmp_path / "train_gpt.py").write_text("print('hi')\n")
    (tmp_path / "b.py").write_bytes(b"\xff\xfe")
    with pytest.raises(TaskError, match="is not UTF-8 text"):
        own_baseline(tmp_path, task)
