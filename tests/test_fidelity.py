"""The fidelity suite: its data, its patches, and the statistics the benchmark reports."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from nanoenv.actions.patching import apply_diff
from nanoenv.actions.protected import check_protected
from nanoenv.fidelity import (
    Idea,
    Paired,
    agrees,
    load_ideas,
    noise_floor,
    paired,
    spearman,
    summarize,
)
from nanoenv.tasks import baseline_script, load_task, task_ids

REPO = Path(__file__).resolve().parents[1]

SUITE = REPO / "benchmarks" / "fidelity_suite"
REQUIRED = {
    "rope", "muon", "relu2", "qk-norm", "untied-head", "logit-softcap", "trapezoid",
    "unet-skips", "value-embeddings", "zero-init-proj", "embed-lr", "batch-size-schedule",
}  # fmt: skip


def test_suite_holds_the_required_ideas_and_controls_each_tagged_with_its_record():
    ideas = load_ideas(SUITE / "ideas.toml")
    names = {i.name for i in ideas}
    assert names >= REQUIRED
    assert len([i for i in ideas if not i.control]) >= 14
    assert len([i for i in ideas if i.control]) >= 2
    for i in ideas:
        if not i.control:
            assert i.record and i.date and i.before_min > i.after_min, i.name
            assert i.record_gain > 0


# Every registered CPU track has the suite's patches.
CPU_TRACKS = [t for t in task_ids() if load_task(t).device == "cpu"]


@pytest.mark.parametrize("env_id", CPU_TRACKS)
def test_every_idea_applies_to_its_track_and_leaves_the_protected_regions(env_id):
    task = load_task(env_id)
    base = baseline_script(task)
    for idea in load_ideas(SUITE / "ideas.toml"):
        diff = (SUITE / task.task_dir.name / f"{idea.name}.diff").read_text()
        patched = apply_diff(base, diff, task.script).script
        assert patched != base, idea.name
        compile(patched, idea.name, "exec")
        check_protected(base, patched, [r.name for r in task.protected])


def test_spearman_ranks_with_ties_averaged():
    assert spearman([0.1, 0.2, 0.3, 0.4], [1.0, 5.0, 7.0, 9.0]) == pytest.approx(1.0)
    assert spearman([0.1, 0.2, 0.3], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    # ties share their average rank: xs ranks 1.5, 1.5, 3, 4 against 1, 2, 3, 4
    tied = statistics.correlation([1.5, 1.5, 3, 4], [1, 2, 3, 4])
    assert spearman([0.1, 0.1, 0.3, 0.5], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(tied)
    assert spearman([1, 2], [2, 1]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # no ranks to correlate


def test_noise_floor_is_the_one_sided_t_quantile_of_the_pooled_paired_sd():
    groups = [Paired([0.01, 0.02, 0.015]), Paired([-0.01, 0.0, 0.004])]
    pooled = math.sqrt(
        (statistics.variance(groups[0].diffs) + statistics.variance(groups[1].diffs)) / 2
    )
    expected = stats.t.ppf(0.99, 4) * pooled / math.sqrt(3)
    assert noise_floor(groups, 3) == pytest.approx(expected)
    # An effect at the floor is just significant by a one-sided t-test with the pooled sd.
    t = expected / (pooled / math.sqrt(3))
    assert stats.t.sf(t, 4) == pytest.approx(0.01)


def test_pairing_is_by_seed_and_skips_seeds_without_a_value():
    p = paired({0: 2.5, 1: 2.6, 2: 2.55}, {0: 2.4, 1: None, 2: 2.5, 3: 1.0})
    assert p.diffs == pytest.approx([-0.1, -0.05])
    assert p.se == pytest.approx(statistics.stdev([-0.1, -0.05]) / math.sqrt(2))


def test_agreement_counts_direction_and_controls_must_lose():
    kept = Idea(name="a", title="a", record=1, before_min=2.0, after_min=1.0)
    control = Idea(name="c", title="c", control=True)
    assert agrees(kept, 0.01) and not agrees(kept, -0.01) and not agrees(kept, 0.0)
    assert agrees(control, -0.01) and not agrees(control, 0.01) and not agrees(control, None)
    out = summarize([kept, control], {"a": Paired([-0.02, -0.01]), "c": Paired([0.03, 0.01])})
    assert out["agreement"] == 1.0
    assert [r["agrees"] for r in out["ideas"]] == [True, True]
    assert out["ideas"][0]["record_gain"] == pytest.approx(math.log(2))
    assert out["noise_floor"] > 0


def test_a_record_of_several_changes_shares_its_gain():
    one = Idea(name="a", title="a", record=5, before_min=22.3, after_min=15.2, ideas_in_record=4)
    assert one.record_gain == pytest.approx(math.log(22.3 / 15.2) / 4)


@pytest.mark.slow(steps=4)  # six smoke runs
def test_the_benchmark_runs_ideas_paired_by_seed_and_writes_the_summary(tmp_path, tiny_data):
    """benchmarks/fidelity.py end to end at smoke size: two ideas, two seeds, through the env."""
    import json
    import subprocess
    import sys

    out = tmp_path / "fidelity.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "fidelity.py"), "--smoke", "--seeds", "2",
           "--only", "value-embeddings,dropout", "--json", str(out), "--runs-dir", str(tmp_path / "runs")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert {"ideas", "agreement", "spearman", "noise_floor"} <= set(summary)
    assert summary["set"] == {} and summary["jobs"] == 1  # the shape it ran at: the track's own
    rows = {r["name"]: r for r in summary["ideas"]}
    assert set(rows) == {"value-embeddings", "dropout"}
    for r in rows.values():
        assert {"name", "record", "record_gain", "effect", "se", "agrees"} <= set(r)
        assert r["n"] == 2 and r["se"] is not None
    # paired by seed: every idea ran on the seeds the baseline ran on, and the effect is the
    # mean of the per-seed differences
    runs = summary["runs"]
    assert [r["seed"] for r in runs["baseline"].values()] == [
        r["seed"] for r in runs["dropout"].values()
    ]
    diffs = [
        runs["dropout"][s]["val_loss"] - runs["baseline"][s]["val_loss"] for s in runs["baseline"]
    ]
    assert rows["dropout"]["effect"] == pytest.approx(statistics.fmean(diffs))
    assert summary["noise_floor"] > 0
    assert "agreement" in done.stdout


def _load(path: Path):
    """A benchmark script as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CUMULATIVE = [p for p in CPU_TRACKS if (SUITE / load_task(p).task_dir.name / "cumulative").is_dir()]


@pytest.mark.parametrize("env_id", CUMULATIVE)
def test_the_cumulative_stacks_are_what_write_patches_makes_and_each_holds_the_one_before(env_id):
    """The replay's stacks on disk are write_patches.py's (a drifted baseline or a hand edit
    fails here), each stack is the previous one plus one idea, and none touches a protected
    region."""
    writer = _load(SUITE / "write_patches.py")
    task = load_task(env_id)
    base = baseline_script(task)
    ideas = load_ideas(SUITE / "ideas.toml")
    chain = writer.stacks(base, [i.name for i in ideas if not i.control])
    folder = SUITE / task.task_dir.name / "cumulative"
    previous = base
    for n, (idea, script) in enumerate(chain, 1):
        on_disk = apply_diff(base, (folder / f"{n:02d}-{idea}.diff").read_text(), task.script)
        assert on_disk.script == script, f"{idea}: rerun write_patches.py --cumulative"
        assert script != previous, idea
        check_protected(base, script, [r.name for r in task.protected])
        previous = script
    for control in (i.name for i in ideas if i.control):
        patched = apply_diff(base, (folder / f"control-{control}.diff").read_text(), task.script)
        compile(patched.script, control, "exec")
        assert patched.script != chain[-1][1]


def test_tune_sets_an_ideas_own_hyperparameter_and_nothing_else():
    """write_patches --tune muon_lr=0.01 changes Muon's default in its dataclass line only."""
    writer = _load(SUITE / "write_patches.py")
    muon = writer.IDEAS["muon"]
    new = writer.tuned(muon, {"muon_lr": "0.01"})
    changed = [(a[1], b[1]) for a, b in zip(muon, new, strict=True) if a[1] != b[1]]
    assert len(changed) == 1
    before, after = changed[0]
    assert "muon_lr: float = 0.02" in before and "muon_lr: float = 0.01" in after
    assert after.replace("0.01", "0.02") == before  # nothing else moved
    assert writer.tuned(muon, {}) == [tuple(e) for e in muon]


def test_the_cumulative_replay_measures_each_idea_against_the_stack_before_it(tmp_path):
    fidelity = _load(REPO / "benchmarks" / "fidelity.py")
    ideas = load_ideas(SUITE / "ideas.toml")
    kept = [i.name for i in ideas if not i.control]
    patches, reference = fidelity.suite_patches(tmp_path, ideas, cumulative=True)
    assert reference[kept[0]] == "baseline"
    assert [reference[n] for n in kept[1:]] == kept[:-1]
    assert all(reference[i.name] == kept[-1] for i in ideas if i.control)
    assert patches[kept[1]] == tmp_path / "cumulative" / f"02-{kept[1]}.diff"
    alone, alone_ref = fidelity.suite_patches(tmp_path, ideas, cumulative=False)
    assert set(alone_ref.values()) == {"baseline"}
    assert alone[kept[1]] == tmp_path / f"{kept[1]}.diff"
