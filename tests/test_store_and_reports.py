"""The run store, trajectories and replay, and the HTML report rendered in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nanoenv import Outcome, RunResult
from nanoenv.cli import main as cli_main
from nanoenv.records.report import write_report
from nanoenv.records.store import RunStore, pareto

PATCHES = Path(__file__).resolve().parents[1] / "examples" / "patches"


@pytest.fixture(scope="module")
def episode(tiny_data, tmp_path_factory):
    """A finished episode: the baseline, an improvement, and a failed patch."""
    import gymnasium as gym

    import nanoenv  # noqa: F401

    runs = tmp_path_factory.mktemp("runs")
    env = gym.make("nanoenv/Speedrun-Tiny-v0", smoke=True, runs_dir=runs, disable_env_checker=True)
    env.reset(seed=7)
    results = [
        env.step(a)[4]["result"] for a in ("", (PATCHES / "relu2.diff").read_text(), "not a diff")
    ]
    folder = env.unwrapped.episode_dir
    env.close()
    return runs, folder, results


@pytest.mark.slow
def test_every_step_is_indexed(episode, capsys):
    """One row per step with its verified numbers; `nanoenv runs list` shows them."""
    runs, folder, results = episode
    rows = RunStore(runs).rows()
    assert [(r["step"], r["outcome"], r["status"]) for r in rows] == [
        (1, results[0].outcome.value, "finished"), (2, results[1].outcome.value, "finished"), (3, "patch_failed", "finished")]  # fmt: skip
    assert rows[0]["val_loss"] == pytest.approx(results[0].val_loss) and rows[0]["verified"] == 1
    assert (
        rows[0]["script_sha256"] == results[0].script_sha256 and rows[0]["seed"] == results[0].seed
    )
    assert rows[1]["artifacts_dir"] == results[1].artifacts_dir
    assert cli_main(["runs", "list", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert folder.name in out and "patch_failed" in out


@pytest.mark.slow
def test_leaderboard_and_frontier(episode, capsys):
    """The leaderboard ranks verified runs that met the target by time; the frontier keeps the
    runs no other beats on both time and loss."""
    runs, _, _ = episode
    board = RunStore(runs).leaderboard()
    assert [r["train_time_s"] for r in board] == sorted(r["train_time_s"] for r in board)
    assert all(r["outcome"] == "ok" and r["verified"] for r in board)
    front = RunStore(runs).frontier()
    assert front and all(
        not (o["train_time_s"] < f["train_time_s"] and o["val_loss"] < f["val_loss"])
        for f in front for o in RunStore(runs).rows() if o["verified"]
    )  # fmt: skip
    png = runs / "front.png"
    assert cli_main(["runs", "frontier", "--runs-dir", str(runs), "--png", str(png)]) == 0
    assert png.stat().st_size > 10_000
    assert (
        cli_main(
            ["runs", "show", f"{front[0]['episode']}/{front[0]['step']}", "--runs-dir", str(runs)]
        )
        == 0
    )
    assert '"verified": 1' in capsys.readouterr().out


def test_pareto_by_hand():
    """The frontier of four points, worked out by hand."""
    pts = [{"t": 1, "l": 3.0}, {"t": 2, "l": 2.5}, {"t": 3, "l": 2.8}, {"t": 4, "l": 2.0}]
    assert [p["t"] for p in pareto(pts, "t", "l")] == [1, 2, 4]


def test_a_step_whose_pid_was_reused_shows_as_interrupted(tmp_path):
    """The owner is host:pid:start: a pid the kernel gave to another process since (here this
    test's own pid with another start time) is not the owner, so its step is interrupted, not
    running for ever. Before, the owner was host:pid and a live pid kept a dead step running."""
    import socket

    from nanoenv.liveness import owner_alive, owner_id

    store = RunStore(tmp_path)
    store.begin(episode="e", step=1, meta={"task": "t"}, action={}, artifacts_dir=None)
    assert store.rows()[0]["status"] == "running" and store.rows()[0]["owner"] == owner_id()
    reused = f"{socket.gethostname()}:{os.getpid()}:1"  # this pid, another process's start
    with sqlite3.connect(store.path) as con:
        con.execute("UPDATE steps SET owner = ?", (reused,))
    assert store.rows()[0]["status"] == "interrupted"
    assert not owner_alive(reused) and owner_alive(owner_id())
    assert owner_alive("another-host:1:1")  # another machine's: not ours to judge


def test_a_killed_step_shows_as_interrupted(tiny_data, tmp_path, capsys):
    """A harness killed mid-run leaves its row: interrupted, never missing."""
    runs = tmp_path / "runs"
    code = textwrap.dedent(
        f"""
        import gymnasium as gym, nanoenv
        env = gym.make("nanoenv/Speedrun-Tiny-v0", runs_dir={str(runs)!r}, disable_env_checker=True)
        env.reset(seed=0)
        env.step("")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not RunStore(runs).rows():
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    (row,) = RunStore(runs).rows()
    assert row["status"] == "interrupted" and row["outcome"] is None
    assert cli_main(["runs", "list", "--runs-dir", str(runs)]) == 0
    assert "interrupted" in capsys.readouterr().out


@pytest.mark.slow
def test_store_survives_concurrent_writers(tmp_path):
    """Several processes writing at once (vector envs) all land their rows."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from nanoenv.records.store import RunStore
        store = RunStore(Path({str(tmp_path)!r}))
        for i in range(20):
            store.begin(episode=f"ep{{sys.argv[1]}}", step=i, meta={{"task": "t"}}, action={{}}, artifacts_dir=None)
        """
    )
    # Eight at once, all creating the file: SQLite refuses a switch to WAL under contention at
    # once (no busy wait); the store must retry, or a writer dies with "database is locked".
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k)]) for k in range(8)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    assert len(RunStore(tmp_path).rows()) == 160
    assert (
        sqlite3.connect(tmp_path / "runs.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
        == "wal"
    )


@pytest.mark.slow
def test_trajectory_replays(episode, tmp_path, capsys):
    """`nanoenv replay` runs an episode's actions again, with its seeds, and compares."""
    _, folder, results = episode
    lines = (folder / "trajectory.jsonl").read_text().splitlines()
    assert len(lines) == 3
    code = cli_main(["replay", str(folder), "--runs-dir", str(tmp_path / "again")])
    out = capsys.readouterr().out
    assert "3/3 steps ended the same way" in out and code == 0
    again = RunStore(tmp_path / "again").rows()
    assert [r["seed"] for r in again] == [r.seed for r in results]
    assert again[0]["val_loss"] == pytest.approx(results[0].val_loss)  # same seed, same numbers


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("NANOENV_REQUIRE_BROWSER") != "1", reason="no Chromium here"
)
def test_html_report_renders_in_a_browser(episode, tmp_path):
    """The episode's report opens in headless Chromium and is not blank: it has a table and
    plots (many colours, dark text on a light page)."""
    from PIL import Image

    assert CHROMIUM is not None, "Chromium is required here (NANOENV_REQUIRE_BROWSER=1)"
    _, folder, _ = episode
    report = write_report(folder, target=3.56)
    assert "<table>" in report.read_text() and "data:image/png;base64," in report.read_text()
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1400",
                    f"--screenshot={shot}", report.as_uri()],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 20  # not a blank page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # plots, not just text
    assert (pixels.sum(-1) < 200).mean() > 0.001  # some dark text


def test_plots_draw_curves_and_the_frontier(tmp_path):
    """The PNGs the report embeds: loss curves of two runs, and every run with its frontier."""
    from nanoenv.records.plots import plot_curves, plot_frontier
    from nanoenv.types import LossPoint

    def run(final: float) -> RunResult:
        curve = [LossPoint(step=s, val_loss=5.5 - (5.5 - final) * s / 20, train_time_ms=100.0 * s)
                 for s in (0, 10, 20)]  # fmt: skip
        return RunResult(step=1, outcome=Outcome.OK, curve=curve)

    curves = plot_curves([("a", run(3.2)), ("b", run(3.0)), ("empty", RunResult(step=3, outcome=Outcome.CRASHED))],
                         tmp_path / "curves.png", target=3.3, title="two runs")  # fmt: skip
    front = plot_frontier([("a", 2.0, 3.2), ("b", 3.0, 3.0), ("dominated", 3.5, 3.3)],
                          tmp_path / "front.png", target=3.3,
                          records=[("baseline", 3.1, 3.25), ("record 1", 2.5, 3.2)])  # fmt: skip
    for png in (curves, front):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plotted_curves_are_on_the_harness_clock_not_the_scripts():
    """A script that reports a tenth of its real training time is drawn at the times the
    harness received its lines: the plot cannot be made to look faster than the reward is."""
    from nanoenv.records.plots import curve_points
    from nanoenv.types import LossPoint

    curve = [LossPoint(step=s, val_loss=4.0 - s / 10, train_time_ms=10.0 * s, received_s=2.0 + s)
             for s in (0, 10, 20)] + [LossPoint(step=5, train_loss=3.9, received_s=7.0)]  # fmt: skip
    result = RunResult(step=1, outcome=Outcome.OK, curve=curve)
    val, train = curve_points(result)
    assert val == [(2.0, 4.0), (12.0, 3.0), (22.0, 2.0)] and train == [(7.0, 3.9)]
    assert curve_points(result, allowance_s=1.5)[0][0] == (0.5, 4.0)


def test_report_shows_this_machines_record_book(tmp_path):
    """The report draws the record book beside the episode's frontier and tabulates it: the
    book claim() keeps for the episode's task at its size (a GPU track's smoke size runs on the
    CPU, so its book is not the full task's)."""
    from nanoenv.records.book import Entry, RecordBook, book_key
    from nanoenv.settings import resolve
    from nanoenv.types import LossPoint, Verdict

    runs = tmp_path / "runs"
    folder = runs / "ep1"
    (folder / "step-0001").mkdir(parents=True)
    (folder / "episode.json").write_text(json.dumps({"task": "Speedrun-GPT2-1xH100-v0", "smoke": True,
                                                    "sandbox": "local", "seed": 1}))  # fmt: skip
    curve = [LossPoint(step=s, val_loss=4.0 - s / 10, received_s=1.0 + s) for s in (0, 10)]
    result = RunResult(step=1, outcome=Outcome.OK, curve=curve, val_loss=3.0, train_time_s=11.0,
                       verdict=Verdict(verified=True))  # fmt: skip
    (folder / "step-0001" / "result.json").write_text(result.model_dump_json())
    assert "No record book" in write_report(folder).read_text()
    # keyed as claim() keys it: the task as resolved at its smoke size
    task = resolve(
        "Speedrun-GPT2-1xH100-v0", sandbox="local", smoke=True, paired_baseline=False
    ).task
    key = book_key(task, True, "local")
    book = RecordBook(runs)
    book.append(key, Entry(0, "baseline script", 12.5, 3.1, 1.0))
    book.append(key, Entry(1, "faster script", 9.25, 3.05, 0.74, run="ep0/3"))
    page = write_report(folder).read_text()
    assert "Record book on this machine" in page
    assert "record 1" in page and "9.25" in page and "ep0/3" in page


def test_descendants_finds_a_grandchild_and_forgets_it_once_gone():
    """liveness.descendants walks the whole tree below a process (what a run left running)."""
    from nanoenv.liveness import descendants

    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(30)'])"
    child = subprocess.Popen([sys.executable, "-c", code])
    grandchild = None
    try:
        deadline = time.monotonic() + 20
        while len(descendants(child.pid)) < 1:
            assert time.monotonic() < deadline, "the grandchild never showed"
            time.sleep(0.05)
        [grandchild] = descendants(child.pid)
        assert child.pid in descendants(os.getpid()) and grandchild in descendants(os.getpid())
    finally:
        for pid in descendants(child.pid):
            os.kill(pid, 9)
        child.wait(timeout=20)
    assert child.pid not in descendants(os.getpid()) and grandchild not in descendants(os.getpid())
