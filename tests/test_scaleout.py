"""Scale-out: steps in flight, Ray as the engine, GPUs never shared, paired baselines, failure."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import gymnasium as gym
import pytest

import nanoenv  # noqa: F401
from nanoenv import Action, Outcome
from nanoenv.errors import SandboxError
from nanoenv.sandbox.fake import FakeSandbox
from nanoenv.sandbox.gpus import GpuPool
from nanoenv.sandbox.slots import CpuPool
from nanoenv.tasks import baseline_script, load_task
from nanoenv.types import Job, Limits

BASELINE = baseline_script(load_task("tiny"))
MAIN = "def main():\n"


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _tagged(tag: str) -> list[tuple[int, str]]:
    """(pid, the pid of the Ray worker above it, or "") of live processes whose command line
    holds ``tag``. The worker is found up the parent chain: a job's environment carries no
    harness pid where a PID namespace contains it."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        if tag.encode() in cmd and b"pgrep" not in cmd:
            found.append((int(entry.name), _ancestor(int(entry.name), b"ray::")))
    return found


def _ancestor(pid: int, needle: bytes) -> str:
    """The nearest ancestor of ``pid`` whose command line holds ``needle``, or ""."""
    while pid > 1:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            pid = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")))
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                return str(pid)
        except (OSError, StopIteration, ValueError):
            return ""
    return ""


def sleeper(tag: str, seconds: int = 120) -> Action:
    """The baseline, but it prints step 0 and then sleeps, with a tag in a child's command line."""
    code = f"""
    import subprocess, sys
    log_line(0, 1, 0.0, "val_loss", 5.5, 0)
    subprocess.run([sys.executable, "-c", "import time; time.sleep({seconds})", "{tag}"])
    """
    return Action(
        script=BASELINE.replace(MAIN, MAIN + textwrap.indent(textwrap.dedent(code), "    "), 1)
    )


# --------------------------------------------------------------------------- submit


@pytest.mark.slow
def test_submit_returns_at_once_and_results_arrive(make_env):
    """submit() returns a handle before the run ends; result() gives step()'s five values.
    (The run is the fake sandbox's, 3 s long: the handle is the subject, not training.)"""
    env = make_env(verify="none", sandbox=FakeSandbox(wall_s=3))
    env.reset(seed=0)
    t = time.monotonic()
    handle = env.unwrapped.submit("")
    assert time.monotonic() - t < 2 and not handle.done()
    obs, reward, _terminated, _truncated, info = handle.result(timeout=120)
    assert handle.done() and info["result"].outcome is Outcome.OK
    assert obs["outcome"] == "ok" and reward == info["result"].reward


@pytest.mark.slow
def test_cancel_stops_the_run_and_costs_nothing(make_env):
    """cancel() kills a running step: infra_error, reward 0, no process left behind."""
    env = make_env(verify="none")
    env.reset(seed=0)
    handle = env.unwrapped.submit(sleeper("nanoenv-cancel-probe"))
    assert _wait_for(lambda: _tagged("nanoenv-cancel-probe"), 60)
    handle.cancel()
    _obs, reward, *_, info = handle.result(timeout=30)
    assert info["result"].outcome is Outcome.INFRA_ERROR and reward == 0.0
    assert "cancelled" in info["result"].message
    assert _wait_for(lambda: not _tagged("nanoenv-cancel-probe"), 10)


@pytest.mark.slow
def test_close_stops_a_running_step_before_it_closes_the_sandbox(make_env):
    """close() cancels what runs, waits for it, then closes the sandbox: no job outlives the
    env, and the step still ends (infra_error, no cost) with its record on disk. Before, close()
    cancelled only queued steps, and a running job went on under a closed sandbox."""
    env = make_env(verify="none")
    env.reset(seed=0)
    handle = env.unwrapped.submit(sleeper("nanoenv-close-probe"))
    assert _wait_for(lambda: _tagged("nanoenv-close-probe"), 60)
    env.close()
    assert handle.done() and not _tagged("nanoenv-close-probe")  # gone when close() returns
    _obs, reward, *_, info = handle.result(timeout=0)
    assert info["result"].outcome is Outcome.INFRA_ERROR and reward == 0.0
    assert (Path(info["result"].artifacts_dir) / "result.json").exists()


# --------------------------------------------------------------------------- GPUs


def test_gpu_pool_never_shares_between_threads(tmp_path):
    """Jobs asking for 2 of 4 GPUs at once get disjoint ids, and get them back afterwards."""
    pool = GpuPool(ids=[0, 1, 2, 3], lock_dir=tmp_path)
    held: list[set[int]] = []
    overlap = []
    lock = threading.Lock()

    def job():
        with pool.allocate(2, timeout_s=30) as ids:
            with lock:
                overlap.extend(set(ids) & h for h in held)
                held.append(set(ids))
            time.sleep(0.2)
            with lock:
                held.remove(set(ids))

    threads = [threading.Thread(target=job) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not any(overlap)
    with pool.allocate(4, timeout_s=1) as ids:
        assert sorted(ids) == [0, 1, 2, 3]  # all released


@pytest.mark.slow
def test_gpus_held_by_a_crashed_process_are_released(tmp_path):
    """Another process holding GPUs blocks them; killing it frees them at once."""
    code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from nanoenv.sandbox.gpus import GpuPool
        ids, _ = GpuPool(ids=[0, 1, 2, 3], lock_dir=Path({str(tmp_path)!r})).acquire(3)
        print(sorted(ids), flush=True)
        time.sleep(300)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "[0, 1, 2]"
        pool = GpuPool(ids=[0, 1, 2, 3], lock_dir=tmp_path)
        with pytest.raises(SandboxError, match="no 2 free GPUs"):
            pool.acquire(2, timeout_s=1)
        holder.kill()
        holder.wait()
        with pool.allocate(4, timeout_s=5) as ids:
            assert sorted(ids) == [0, 1, 2, 3]
    finally:
        holder.kill()


@pytest.mark.slow
def test_jobs_get_their_own_gpu_ids(make_env, monkeypatch, tmp_path):
    """Through the runner, two jobs asking for 2 GPUs each see disjoint CUDA_VISIBLE_DEVICES."""
    monkeypatch.setenv("NANOENV_GPU_IDS", "0,1,2,3")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # a private lock folder for this test
    runner = make_env().unwrapped.runner
    code = "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(1)"
    job = Job(
        files={"main.py": code},
        command=["{python}", "main.py"],
        gpus=2,
        limits=Limits(timeout_s=30),
    )
    seen: list[str] = []
    threads = [
        threading.Thread(target=lambda: seen.append(runner.run_job(job, None, None).lines[0].text))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a, b = ({int(i) for i in s.split(",")} for s in seen)
    assert len(a) == len(b) == 2 and not a & b


def test_asking_for_more_gpus_than_there_are(make_env, monkeypatch):
    """A job asking for more GPUs than the machine has is an infra error that says so."""
    monkeypatch.setenv("NANOENV_GPU_IDS", "0")
    runner = make_env().unwrapped.runner
    job = Job(
        files={"main.py": "print(1)"},
        command=["{python}", "main.py"],
        gpus=2,
        limits=Limits(timeout_s=30),
    )
    assert "asks for 2 GPUs; this machine has 1" in runner.run_job(job, None, None).infra_error


# --------------------------------------------------------------------------- CPU cores


def test_cpu_pool_gives_each_job_its_cores(tmp_path):
    """A job takes ceil(limits.cpus) slots (all of them if unset); past the total it waits."""
    pool = CpuPool(slots=4, lock_dir=tmp_path)
    assert [pool.slots_for(c) for c in (None, 0.5, 2, 2.5, 64)] == [4, 1, 2, 3, 4]
    with pool.allocate(2) as a, pool.allocate(2) as b:
        assert not set(a) & set(b)
        with pytest.raises(SandboxError, match="no 1 free CPUs within 0 s"):
            pool.acquire(1, timeout_s=0.3)
    cancel = threading.Event()
    cancel.set()
    with pool.allocate(4), pytest.raises(SandboxError, match="cancelled while waiting"):
        pool.acquire(1, cancel=cancel)


def test_a_job_that_needs_every_core_is_not_starved_by_smaller_ones(tmp_path):
    """While a 2-core job waits, a 1-core job that comes later waits behind it, even for a free
    core: otherwise one-core jobs taking each core as it frees up would hold the big one off
    for ever (as two test workers' smoke runs did to a GPT-2 smoke run, which takes two)."""
    pool = CpuPool(slots=2, lock_dir=tmp_path)
    _, held = pool.acquire(1)
    got: list[list[int]] = []
    big = threading.Thread(target=lambda: got.append(pool.acquire(2, timeout_s=30)[1]))
    big.start()
    time.sleep(0.5)  # the big job is waiting, and one core is free
    with pytest.raises(SandboxError, match="no 1 free CPUs"):
        pool.acquire(1, timeout_s=0.5)
    pool.release(held)
    big.join(timeout=30)
    assert len(got) == 1 and len(got[0]) == 2
    pool.release(got[0])
    with pool.allocate(1) as ids:  # the queue is free again
        assert len(ids) == 1


@pytest.mark.slow
@pytest.mark.alone  # it compares two runs' wall times
def test_timed_runs_in_two_envs_never_share_the_cores(make_env, monkeypatch):
    """Two envs step at once: the second run waits for the first's cores, so neither's time
    measures its neighbour; the wait is in the telemetry and not in the run's time."""
    monkeypatch.setenv("NANOENV_CPU_SLOTS", "1")  # a smoke run takes 1 core: one slot for two
    envs = [make_env(verify="none") for _ in range(2)]
    for env in envs:
        env.reset(seed=0)
    handles = [
        env.unwrapped.submit(sleeper(f"nanoenv-cores-{i}", seconds=2)) for i, env in enumerate(envs)
    ]
    results = [h.result(timeout=180)[4]["result"] for h in handles]
    assert all(r.outcome in (Outcome.OK, Outcome.MISSED_TARGET) for r in results)
    first, second = sorted(results, key=lambda r: r.telemetry.get("slot_wait_s", 0.0))
    assert "slot_wait_s" not in first.telemetry
    assert second.telemetry["slot_wait_s"] >= first.wall_time_s - 1
    assert second.wall_time_s < 1.5 * first.wall_time_s  # the wait is not charged to the run


# --------------------------------------------------------------------------- paired baselines


@pytest.mark.slow
def test_paired_baseline_is_measured_cached_and_reported(tiny_data, tmp_path, monkeypatch):
    """The baseline timed here is cached by fingerprint; envs then compare against it and say so."""
    from nanoenv import baselines

    shutil.copytree(tiny_data, tmp_path / "cache" / "datasets" / tiny_data.name)
    monkeypatch.setenv("NANOENV_CACHE_DIR", str(tmp_path / "cache"))
    paired = baselines.measure(
        "nanoenv/Speedrun-Tiny-v0", smoke=True, runs=2, runs_dir=tmp_path / "runs"
    )
    assert paired.runs == 2 and paired.fingerprint["cpu"] and paired.fingerprint["torch"]
    cached = list((tmp_path / "cache" / "baselines").rglob("*.json"))
    assert [p.stem for p in cached] == [paired.fingerprint_id]
    env = gym.make(
        "nanoenv/Speedrun-Tiny-v0", smoke=True, runs_dir=tmp_path / "runs", disable_env_checker=True
    )
    obs, info = env.reset(seed=0)
    assert info["baseline_train_time_s"] == pytest.approx(paired.train_time_s)
    assert f"paired, fingerprint {paired.fingerprint_id}" in info["baseline_measured_on"]
    assert paired.fingerprint_id in obs["feedback"]
    unpaired = gym.make(
        "nanoenv/Speedrun-Tiny-v0", smoke=True, paired_baseline=False, disable_env_checker=True
    )
    assert (
        unpaired.reset(seed=0)[1]["baseline_train_time_s"]
        == load_task("tiny").smoke.baseline_train_time_s
    )


# --------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster, as CI runs it: 2 CPUs, a small object store."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
             log_to_driver=False, ignore_reinit_error=True)  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_four_smoke_jobs_on_a_local_ray_cluster(ray_cluster, tiny_data, tmp_path):
    """Four steps in flight through sandbox="ray": each verified, lines streamed back live."""
    points: list[tuple[int, int]] = []
    env = gym.make("nanoenv/Speedrun-Tiny-v0", smoke=True, sandbox="ray", max_in_flight=4, runs_dir=tmp_path,
                   disable_env_checker=True, progress=lambda step, p: points.append((step, p.step)))  # fmt: skip
    env.reset(seed=0)
    patches = sorted((Path(__file__).resolve().parents[1] / "examples" / "patches").glob("*.diff"))[
        :3
    ]
    handles = [env.unwrapped.submit(Action(diff="", base=0))]
    handles += [env.unwrapped.submit(Action(diff=p.read_text(), base=0)) for p in patches]
    results = [h.result(timeout=600)[4]["result"] for h in handles]
    env.close()
    # Nothing of the sandbox may still call Ray: a call after ray.shutdown() (the fixture's,
    # right after this test) makes Ray _exit(1) the whole process, pytest with it.
    assert not _relay_threads()
    assert [r.outcome for r in results].count(Outcome.INFRA_ERROR) == 0, [
        r.message for r in results
    ]
    assert all(r.verdict.verified for r in results), [
        (r.message, [c for c in r.verdict.checks if not c.passed]) for r in results
    ]
    assert {step for step, _ in points} == {1, 2, 3, 4}


@pytest.mark.slow
def test_a_killed_ray_worker_is_an_infra_error_and_the_rest_go_on(ray_cluster, tiny_data, tmp_path):
    """Kill the Ray worker running one step: that step is infra_error, nothing it ran is left,
    and the step running beside it finishes normally."""
    env = gym.make("nanoenv/Speedrun-Tiny-v0", smoke=True, sandbox="ray", max_in_flight=2, runs_dir=tmp_path,
                   disable_env_checker=True)  # fmt: skip
    env.reset(seed=0)
    doomed = env.unwrapped.submit(sleeper("nanoenv-ray-doomed"))
    fine = env.unwrapped.submit(Action(diff="", base=0))
    assert _wait_for(lambda: _tagged("nanoenv-ray-doomed"), 90)
    (_, worker), *_ = _tagged("nanoenv-ray-doomed")
    os.kill(int(worker), signal.SIGKILL)
    lost = doomed.result(timeout=120)[4]["result"]
    assert lost.outcome is Outcome.INFRA_ERROR and lost.reward == 0.0
    assert _wait_for(lambda: not _tagged("nanoenv-ray-doomed"), 15)
    assert fine.result(timeout=300)[4]["result"].outcome is Outcome.OK
    env.close()
    assert not _relay_threads()


def _relay_threads() -> list[threading.Thread]:
    """The Ray sandbox's line-relay threads still alive."""
    return [t for t in threading.enumerate() if t.name == "nanoenv-ray-lines" and t.is_alive()]
