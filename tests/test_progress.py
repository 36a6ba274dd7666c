"""The episode's scientific delta (nanoenv.judging.progress): best loss, frontiers, hypervolume, and
the frontier reward, through the env on the fake sandbox (the bookkeeping is the subject)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from nanoenv.env import SpeedrunEnv
from nanoenv.judging.progress import LOSS_MARGIN, X_MARGIN, Reference, frontier, hypervolume
from nanoenv.sandbox.fake import FakeSandbox
from nanoenv.types import Outcome


def test_frontier_and_hypervolume_arithmetic():
    pts = [(10.0, 3.0, 1), (5.0, 3.2, 2), (12.0, 3.1, 3), (5.0, 3.3, 4)]
    assert frontier(pts) == [(5.0, 3.2, 2), (10.0, 3.0, 1)]  # 3 and 4 are dominated
    # box to (20 s, 3.5 nats), cost in units of 20 s: 0.25 x 0.3 + 0.5 x 0.5
    assert hypervolume(frontier(pts), 20.0, 3.5) == pytest.approx(0.25 * 0.3 + 0.5 * 0.5)
    assert hypervolume([(25.0, 3.0, 1), (5.0, 3.6, 2)], 20.0, 3.5) == 0.0  # outside the box
    ref = Reference.from_baseline(10.0, 1000, 3.0)
    alone = hypervolume([(10.0, 3.0, 0)], ref.time_s, ref.val_loss)
    assert alone == pytest.approx(X_MARGIN / (1 + X_MARGIN) * LOSS_MARGIN)


@pytest.fixture
def env(tiny_data, tmp_path):
    made = []

    def make(**kwargs):
        e = SpeedrunEnv("Speedrun-Tiny-v0", smoke=True, verify="none", runs_dir=tmp_path,
                        sandbox=FakeSandbox(), paired_baseline=False, **kwargs)  # fmt: skip
        e.reset(seed=0)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def fake(env, **directives) -> dict:
    lines = "".join(f"\n# fake: {k}={v}" for k, v in directives.items())
    return {"script": env.scripts[0] + lines + "\n"}


def test_info_episode_tracks_the_best_loss_and_the_frontier(env):
    e = env()
    base = e.settings.baseline_val_loss
    _, _, _, _, i1 = e.step(fake(e, val_loss=base - 0.2, steps=10, step_s=0.1))
    _, _, _, _, i2 = e.step(fake(e, val_loss=base - 0.1, steps=10, step_s=0.02))  # faster, worse
    _, _, _, _, i3 = e.step(fake(e, val_loss=base + 0.3, steps=10, step_s=0.5))  # dominated
    _, _, _, _, i4 = e.step(fake(e, exit=1))  # a crash: never on the record
    ep = i4["progress"]
    assert ep["best_val_loss"] == pytest.approx(i1["result"].val_loss) and ep["best_step"] == 1
    assert [p["step"] for p in ep["time_frontier"]] == [2, 1]  # the baseline (0) is dominated
    hv = [i["progress"]["hypervolume"] for i in (i1, i2, i3, i4)]
    assert hv[0] < hv[1] == hv[2] == hv[3]  # only a run that moves the frontier raises it
    assert ep["runs_counted"] == "logs trusted (verify='none')"
    lines = [json.loads(x) for x in (e.episode_dir / "trajectory.jsonl").read_text().splitlines()]
    assert [ln["progress"]["hypervolume"] for ln in lines] == hv
    db = sqlite3.connect(Path(e.episode_dir).parent / "runs.sqlite")
    stored = [r[0] for r in db.execute("SELECT hypervolume FROM steps ORDER BY step")]
    assert stored == pytest.approx(hv)


def test_the_frontier_reward_pays_for_progress_only(env):
    e = env(reward="frontier")
    base = e.settings.baseline_val_loss
    # a run at the baseline's own loss and time: the frontier starts there, so it adds nothing
    step_s = (e.settings.baseline_train_time_s - 1.05) / 10  # the fake's clock: 1 s + steps
    _, r_base, *_ = e.step(fake(e, val_loss=base, step_s=step_s))
    _, r_better, *_, info = e.step(fake(e, val_loss=base - 0.2))
    _, r_again, *_ = e.step(fake(e, val_loss=base - 0.2, print="a cosmetic edit"))
    _, r_worse, *_ = e.step(fake(e, val_loss=base + 0.4, step_s=0.5))
    _, r_crash, *_ = e.step(fake(e, exit=1))
    assert r_base == 0.0
    assert r_better > 0 and r_better == pytest.approx(
        info["progress"]["hypervolume"] - e.episode.progress[1]["hypervolume"], abs=0.01
    )
    assert r_again == 0.0  # a resubmission: a lucky seed does not beat the noise margin
    assert r_worse == 0.0 and r_crash == -1.0
    on_disk = json.loads((Path(info["result"].artifacts_dir) / "result.json").read_text())
    assert on_disk["reward"] == r_better and info["result"].outcome is Outcome.OK


def test_a_store_made_before_the_progress_columns_gets_them(tmp_path):
    from nanoenv.records.store import RunStore

    db = sqlite3.connect(tmp_path / "runs.sqlite")
    db.execute("CREATE TABLE steps (episode TEXT NOT NULL, step INTEGER NOT NULL, task TEXT "
               "NOT NULL, smoke INTEGER NOT NULL, sandbox TEXT, status TEXT NOT NULL, owner TEXT, "
               "started_at REAL, finished_at REAL, action TEXT, base INTEGER, script_sha256 TEXT, "
               "seed INTEGER, outcome TEXT, reward REAL, val_loss REAL, hidden_val_loss REAL, "
               "train_time_s REAL, verified INTEGER, fingerprint TEXT, artifacts_dir TEXT, "
               "PRIMARY KEY (episode, step))")  # fmt: skip
    db.commit()
    db.close()
    store = RunStore(tmp_path)
    store.begin(episode="e", step=1, meta={"task": "t"}, action={}, artifacts_dir=None)
    assert store.rows()[0]["hypervolume"] is None


def test_gymnasium_s_episode_statistics_wrapper_still_works(env):
    """The progress is info["progress"]: RecordEpisodeStatistics owns info["episode"] at an
    episode's end (and asserts the env left it alone)."""
    from gymnasium.wrappers import RecordEpisodeStatistics

    wrapped = RecordEpisodeStatistics(env(max_steps=2))
    wrapped.step("")
    *_, truncated, info = wrapped.step("")
    assert truncated and info["episode"]["l"] == 2 and "hypervolume" in info["progress"]
