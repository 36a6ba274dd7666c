"""Throughput of 4 smoke jobs on a local Ray cluster against the same 4 one after another.

Usage: python benchmarks/ray_throughput.py [--jobs 4] [--cpus 2] [--verify full]
Both sides run the tiny track's smoke-size baseline with verification; the sequential side
uses the local sandbox. Each job asks Ray for the task's 2 CPUs... which on a 2-core machine
would admit one job at a time, so the Ray side asks for 1 CPU per job (--job-cpus) and the
cores are shared, as they are by a 2-process vector env.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym

import nanoenv  # noqa: F401
from nanoenv import Action


def run(sandbox, jobs: int, in_flight: int, verify: str, job_cpus: float | None) -> float:
    kwargs = {"limits": {"cpus": job_cpus}} if job_cpus else {}
    env = gym.make("nanoenv/Speedrun-Tiny-v0", smoke=True, sandbox=sandbox, verify=verify, max_in_flight=in_flight,
                   max_steps=jobs, disable_env_checker=True, paired_baseline=False, **kwargs)  # fmt: skip
    env.reset(seed=0)
    t = time.monotonic()
    handles = [env.unwrapped.submit(Action(diff="", base=0)) for _ in range(jobs)]
    results = [h.result()[4]["result"] for h in handles]
    wall = time.monotonic() - t
    env.close()
    bad = [r.message for r in results if r.outcome.value not in ("ok", "missed_target")]
    assert not bad, bad
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--job-cpus", type=float, default=1.0, help="CPUs each Ray job asks for")
    ap.add_argument("--verify", default="full")
    args = ap.parse_args()
    import ray

    ray.init(
        num_cpus=args.cpus,
        object_store_memory=200 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
    run("ray", 1, 1, args.verify, args.job_cpus)  # warm the cluster's workers once
    sequential = run("local", args.jobs, 1, args.verify, None)
    parallel = run("ray", args.jobs, args.jobs, args.verify, args.job_cpus)
    print(f"{args.jobs} smoke jobs one after another (local sandbox): {sequential:.1f} s")
    print(
        f"{args.jobs} smoke jobs on a local Ray cluster ({args.cpus} CPUs, {args.job_cpus} per job): {parallel:.1f} s"
    )
    print(f"speed-up {sequential / parallel:.2f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()
