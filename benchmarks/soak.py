"""Soak `nanoenv serve`: many smoke steps from several sessions at once, good and bad actions
mixed, and what the server holds before and after.

It starts `nanoenv serve --smoke` as a user would (a subprocess), then:

1. overhead: the same smoke step (the baseline, seed 0) run directly (`env.step` in this
   process) and through the server, alternately, `--pairs` times each;
2. the soak: `--steps` steps from `--sessions` clients at once. Each client cycles through a
   rerun of the baseline, a patch that does not apply, a script that crashes, a script that
   trains a different learning rate, and a message that is not JSON; every `--reconnect`
   steps it leaves and opens a new session (a new runs folder), so sessions come and go;
3. the server's open files, memory (RSS), threads and processes below it, the sandbox's
   leftovers (job folders in the temp dir, nanoenv containers with --sandbox docker), sampled
   before the soak, after it, and after its sessions have closed; and whether every step sent
   has its record (a finished row in its session's runs.sqlite and a result.json).

Usage: python benchmarks/soak.py [--steps 200] [--sessions 4] [--sandbox local|docker]
                                 [--verify full|none] [--pairs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import gymnasium as gym

import nanoenv  # noqa: F401
from nanoenv.integrations.openenv import SpeedrunAction, SpeedrunClient
from nanoenv.liveness import descendants
from nanoenv.records.store import RunStore
from nanoenv.tasks import DEFAULT_TASK, NAMESPACE

BAD_PATCH = "--- a/train.py\n+++ b/train.py\n@@ -1,1 +1,1 @@\n-this line is not there\n+x = 1\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample(pid: int, sandbox: str) -> dict:
    """What the server process holds now, and what the sandbox left on the machine."""
    status = Path(f"/proc/{pid}/status").read_text()
    field = {ln.split(":")[0]: ln.split(":")[1].strip() for ln in status.splitlines() if ":" in ln}
    tmp = Path(tempfile.gettempdir())
    out = {
        "open_files": len(os.listdir(f"/proc/{pid}/fd")),
        "rss_mb": round(int(field["VmRSS"].split()[0]) / 1024, 1),
        "threads": int(field["Threads"]),
        "processes_below": len(descendants(pid)),
        "job_folders": len(list(tmp.glob("nanoenv-job-*")))
        + len(list(tmp.glob("nanoenv-verify-*"))),
    }
    if sandbox == "docker":
        import docker

        from nanoenv.sandbox.docker import LABEL

        client = docker.from_env()
        out["containers"] = len(client.containers.list(all=True, filters={"label": LABEL}))
        client.close()
    return out


def actions(baseline: str) -> list[tuple[str, object]]:
    """The cycle every client goes through: (kind, what it sends)."""
    crash = baseline.replace(
        'if __name__ == "__main__":',
        'if __name__ == "__main__":\n    raise SystemExit("soak: a crash")',
        1,
    )
    other_lr = baseline.replace("learning_rate: float = 6e-3", "learning_rate: float = 4e-3", 1)
    assert crash != baseline and other_lr != baseline, "the baseline's anchors moved"
    return [
        ("rerun", SpeedrunAction(diff="")),
        ("bad_patch", SpeedrunAction(diff=BAD_PATCH)),
        ("crash", SpeedrunAction(script=crash)),
        ("other_lr", SpeedrunAction(script=other_lr)),
        ("not_json", "{not json"),
    ]


async def client_loop(
    url: str, index: int, quota: int, reconnect: int, log: list[dict], on_message=None
) -> None:
    """One client: ``quota`` messages, a new session every ``reconnect`` of them."""
    sent = 0
    while sent < quota:
        env = SpeedrunClient(url)
        first = await env.reset(seed=index)
        cycle = actions(first.observation.script)
        runs_dir = (await env.state()).runs_dir
        for _ in range(min(reconnect, quota - sent)):
            kind, action = cycle[(sent + index) % len(cycle)]
            t = time.monotonic()
            if kind == "not_json":
                await env._ws.send(action)
                reply = json.loads(await env._ws.recv())
                log.append({"client": index, "kind": kind, "answer": reply["data"]["code"],
                            "runs_dir": runs_dir, "s": time.monotonic() - t, "step": None})  # fmt: skip
            else:
                result = await env.step(action)
                log.append({"client": index, "kind": kind, "answer": result.observation.outcome,
                            "runs_dir": runs_dir, "s": time.monotonic() - t,
                            "step": result.observation.step})  # fmt: skip
            sent += 1
            if on_message is not None:
                on_message()
        await env.disconnect()


def overhead(url: str, runs: Path, pairs: int, verify: str) -> dict:
    """The same smoke step directly and through the server, alternately."""
    direct_env = gym.make(NAMESPACE + DEFAULT_TASK, smoke=True, verify=verify, runs_dir=runs / "direct",
                          disable_env_checker=True)  # fmt: skip
    direct, served = [], []
    with SpeedrunClient(url).sync() as remote:
        for _ in range(pairs):
            direct_env.reset(seed=0)
            t = time.monotonic()
            direct_env.step("")
            direct.append(time.monotonic() - t)
            remote.reset(seed=0)
            t = time.monotonic()
            remote.step(SpeedrunAction(diff=""))
            served.append(time.monotonic() - t)
    direct_env.close()
    diffs = [s - d for s, d in zip(served, direct, strict=True)]
    return {
        "direct_s": direct, "served_s": served,
        "mean_overhead_s": statistics.mean(diffs),
        "se_overhead_s": statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None,
    }  # fmt: skip


def records_complete(log: list[dict]) -> dict:
    """Whether every step sent has a finished row and a result.json in its session's folder."""
    by_dir: dict[str, set[int]] = {}
    for entry in log:
        if entry["step"] is not None:
            by_dir.setdefault(entry["runs_dir"], set()).add(entry["step"])
    missing, unfinished = [], []
    for runs_dir, steps in by_dir.items():
        rows = {r["step"]: r for r in RunStore(Path(runs_dir)).rows()}
        for step in steps:
            row = rows.get(step)
            if row is None or not (Path(row["artifacts_dir"]) / "result.json").is_file():
                missing.append(f"{runs_dir}#{step}")
            elif row["status"] != "finished":
                unfinished.append(f"{runs_dir}#{step}")
    return {"sessions": len(by_dir), "steps": sum(map(len, by_dir.values())),
            "missing": missing, "unfinished": unfinished}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--reconnect", type=int, default=10, help="messages per session")
    p.add_argument("--sandbox", default="local", choices=["local", "docker"])
    p.add_argument("--verify", default="full", choices=["full", "none"])
    p.add_argument("--pairs", type=int, default=3, help="overhead pairs (0: skip)")
    p.add_argument("--json", help="write everything here")
    args = p.parse_args()

    runs = Path(tempfile.mkdtemp(prefix="nanoenv-soak-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = open(runs / "serve.log", "w")  # noqa: SIM115 - open while the server runs
    server = subprocess.Popen(
        [sys.executable, "-m", "nanoenv.cli", "-v", "serve", "--smoke", "--port", str(port),
         "--sandbox", args.sandbox, "--verify", args.verify, "--runs-dir", str(runs / "served"),
         "--max-sessions", str(args.sessions + 1), "--max-steps", "1000"],
        stdout=server_log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    print(f"server log: {runs / 'serve.log'}")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    print((runs / "serve.log").read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.2)
        report: dict = {"args": vars(args)}
        if args.pairs:
            report["overhead"] = overhead(url, runs, args.pairs, args.verify)
            o = report["overhead"]
            print(f"overhead over {args.pairs} pairs: direct {statistics.mean(o['direct_s']):.2f} s, "
                  f"served {statistics.mean(o['served_s']):.2f} s, "
                  f"served - direct {o['mean_overhead_s']:+.3f} s (se {o['se_overhead_s'] or 0:.3f})")  # fmt: skip
        report["before"] = sample(server.pid, args.sandbox)
        log: list[dict] = []
        quota = [
            args.steps // args.sessions + (i < args.steps % args.sessions)
            for i in range(args.sessions)
        ]
        t = time.monotonic()

        # the server sampled at every tenth of the soak: growth shows as a trend, not a jump
        series: list[dict] = []
        marks = {round(args.steps * k / 10) for k in range(1, 11)}

        def on_message() -> None:
            if len(log) in marks:
                series.append({"messages": len(log), **sample(server.pid, args.sandbox)})

        async def soak():
            await asyncio.gather(
                *(
                    client_loop(url, i, q, args.reconnect, log, on_message)
                    for i, q in enumerate(quota)
                )
            )

        asyncio.run(soak())
        report["soak_s"] = time.monotonic() - t
        report["series"] = series
        report["after"] = sample(server.pid, args.sandbox)
        time.sleep(2)  # the last sessions close
        report["settled"] = sample(server.pid, args.sandbox)
        report["records"] = records_complete(log)
        kinds: dict[str, dict[str, int]] = {}
        for entry in log:
            kinds.setdefault(entry["kind"], {}).setdefault(entry["answer"], 0)
            kinds[entry["kind"]][entry["answer"]] += 1
        report["answers"] = kinds
        print(f"soak: {len(log)} messages from {args.sessions} clients in {report['soak_s']:.0f} s; "
              f"{report['records']['sessions']} sessions")  # fmt: skip
        for kind, answers in kinds.items():
            print(f"  {kind:<10} {answers}")
        print(f"{'':<18}{'before':>10}{'after':>10}{'settled':>10}")
        for key in report["before"]:
            row = [report[w][key] for w in ("before", "after", "settled")]
            print(f"  {key:<16}" + "".join(f"{v:>10}" for v in row))
        print("during the soak (messages: open files, RSS MB, threads):",
              ", ".join(f"{x['messages']}: {x['open_files']}/{x['rss_mb']:.0f}/{x['threads']}"
                        for x in series))  # fmt: skip
        r = report["records"]
        print(
            f"records: {r['steps']} steps, {len(r['missing'])} missing, {len(r['unfinished'])} unfinished"
        )
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            server.kill()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if not (report["records"]["missing"] or report["records"]["unfinished"]) else 1


if __name__ == "__main__":
    sys.exit(main())
