"""The record book, claims against it, rule review, and the record reward and start.

The claim's mechanics (interleaving, the two t-tests, the book's entries, the CLI) run on the
fake sandbox, whose virtual clock gives exact times; one claim runs for real, verified, against
a record made slower on purpose, so its outcome does not hang on this machine's noise.
"""

from __future__ import annotations

import json
import math

import pytest
from chat_standin import ChatStandIn

from nanoenv.claims import claim, welch_less
from nanoenv.cli import main as cli_main
from nanoenv.env import SpeedrunEnv
from nanoenv.records.book import BookKey, Entry, RecordBook
from nanoenv.review import ChatReviewer, Review, parse_violations
from nanoenv.sandbox.fake import FakeSandbox
from nanoenv.tasks import baseline_script, load_task, smoke_task

KEY = BookKey("Speedrun-Tiny-v0", True, "abc123")


def _fake_step(runs, script: str) -> str:
    """Run ``script`` as step 1 of a fake-sandbox episode; its EPISODE/STEP."""
    env = SpeedrunEnv("Speedrun-Tiny-v0", smoke=True, verify="none", sandbox=FakeSandbox(),
                      runs_dir=runs, paired_baseline=False)  # fmt: skip
    env.reset(seed=0)
    result = env.step({"script": script})[4]["result"]
    env.close()
    assert result.outcome.value in ("ok", "missed_target"), result.message
    return f"{env.episode_dir.name}/1"


def _baseline() -> str:
    return baseline_script(smoke_task(load_task("Speedrun-Tiny-v0")))


def test_the_book_keeps_its_history_in_order(tmp_path):
    book = RecordBook(tmp_path)
    assert book.current(KEY) is None and book.books() == []
    book.append(KEY, Entry(0, "base", 10.0, 3.5, 1.0))
    book.append(KEY, Entry(1, "faster", 8.0, 3.4, 0.8, run="ep/3", evidence={"p_time": 0.001}))
    assert [e.label for e in book.history(KEY)] == ["baseline", "record 1"]
    now = book.current(KEY)
    assert now.script == "faster" and now.evidence == {"p_time": 0.001} and now.claimed_at
    with pytest.raises(ValueError, match="next entry is number 2"):  # a claim that lost a race
        book.append(KEY, Entry(1, "also faster", 7.0, 3.4, 0.7))
    assert book.books() == [KEY]
    assert RecordBook(tmp_path).history(BookKey("Speedrun-Tiny-v0", False, "abc123")) == []


def test_welch_less_is_one_sided():
    assert welch_less([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]) < 0.01
    assert welch_less([2.0, 2.1, 1.9], [1.0, 1.1, 0.9]) > 0.99
    assert welch_less([1.0], [2.0, 2.1]) is None


def test_a_faster_script_is_admitted_and_a_resubmitted_record_is_not(tiny_data, tmp_path, capsys):
    """On the fake sandbox's exact clock: a script at half the step time beats the baseline and
    becomes record 1 (the baseline entered as 0); the same script claimed again, against
    itself, is refused; list, show and diff read the book."""
    runs = tmp_path / "runs"
    fast = _baseline() + "\n# fake: step_s=0.05\n# fake: val_loss=3.0\n"
    run = _fake_step(runs, fast)
    won = claim(run, runs_dir=runs, repeats=3, sandbox=FakeSandbox(), verify="none", seed=1)
    assert won.admitted, won.summary()
    assert won.p_time is not None and won.p_time < 0.01 and won.p_loss < 0.01
    assert len(won.candidate_times) == len(won.record_times) == 3
    history = RecordBook(runs).history(won.key)
    assert [e.number for e in history] == [0, 1]
    assert history[0].script == _baseline() and history[1].script == fast
    assert history[1].time_ratio == pytest.approx(sum(won.candidate_times) / sum(won.record_times))
    assert history[1].run == run and history[1].evidence["verify"] == "none"

    again = claim(_fake_step(runs, fast), runs_dir=runs, repeats=3, sandbox=FakeSandbox(),
                  verify="none", seed=2)  # fmt: skip
    assert not again.admitted and again.against == "record 1"
    assert any("not lower" in r for r in again.reasons)
    assert len(RecordBook(runs).history(won.key)) == 2

    assert cli_main(["records", "list", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "record 1" in out and run in out
    assert cli_main(["records", "diff", "0", "1", "--runs-dir", str(runs)]) == 0
    assert "+# fake: step_s=0.05" in capsys.readouterr().out
    assert cli_main(["records", "show", "1", "--runs-dir", str(runs)]) == 0
    assert '"p_time"' in capsys.readouterr().out


def test_a_claim_that_misses_the_target_is_refused(tiny_data, tmp_path):
    runs = tmp_path / "runs"
    run = _fake_step(runs, _baseline() + "\n# fake: step_s=0.05\n# fake: val_loss=3.9\n")
    lost = claim(run, runs_dir=runs, repeats=3, sandbox=FakeSandbox(), verify="none")
    assert not lost.admitted and any("not below the target" in r for r in lost.reasons)
    assert RecordBook(runs).books() == []


def reviewer_answer(body: dict) -> str:
    """Like a rule reviewer: flag a diff that touches VAL_TOKENS, pass any other."""
    change = body["messages"][-1]["content"].split("The change")[1]
    return json.dumps({"violations": ["it changes VAL_TOKENS, which the rules fix"]}
                      if "VAL_TOKENS" in change else {"violations": []})  # fmt: skip


def test_the_chat_reviewer_asks_the_endpoint_and_reads_its_answer():
    stand_in = ChatStandIn(reviewer_answer)
    try:
        reviewer = ChatReviewer(stand_in.url, "judge-1")
        review = Review(
            "Speedrun-Tiny-v0",
            "Only train.py may change.",
            "-VAL_TOKENS = 16384\n+VAL_TOKENS = 8\n",
            "",
            None,
        )
        assert reviewer(review) == ["it changes VAL_TOKENS, which the rules fix"]
        assert reviewer(Review("Speedrun-Tiny-v0", "rules", "-lr = 1\n+lr = 2\n", "", None)) == []
        sent = stand_in.requests[0]
        assert sent["path"] == "/v1/chat/completions" and sent["body"]["model"] == "judge-1"
        assert "Only train.py may change." in sent["body"]["messages"][0]["content"]
    finally:
        stand_in.close()


def test_an_unreadable_review_is_a_violation():
    assert parse_violations('sure! {"violations": []}') == []
    assert parse_violations("looks fine to me")[0].startswith("the reviewer's answer was not")
    assert parse_violations('{"violations": "none"}')[0].startswith("the reviewer's violations")


def test_a_claim_the_reviewer_refuses_runs_nothing(tiny_data, tmp_path):
    runs = tmp_path / "runs"
    run = _fake_step(runs, _baseline() + "\n# reads VAL_TOKENS\n# fake: step_s=0.05\n")
    stand_in = ChatStandIn(reviewer_answer)
    sandbox = FakeSandbox()
    try:
        refused = claim(run, runs_dir=runs, repeats=2, sandbox=sandbox, verify="none",
                        reviewer=ChatReviewer(stand_in.url, "judge-1"))  # fmt: skip
    finally:
        stand_in.close()
    assert not refused.admitted and refused.violations and sandbox.jobs == []


def test_the_record_reward_and_start(tiny_data, tmp_path):
    """With a record in the book, start="record" begins the episode from its script, and
    reward="record" pays only a run faster than the record's time here (the baseline's time
    times the record's ratio) by more than the 5 % noise margin."""
    from nanoenv.records.book import book_key

    runs = tmp_path / "runs"
    base = _baseline() + "\n# fake: val_loss=3.0\n"
    record = base + "# fake: step_s=0.2\n"  # 1 + 10 x 0.2 + 0.05 = 3.05 s on the fake's clock
    task = smoke_task(load_task("Speedrun-Tiny-v0"))
    key = book_key(task, True, "fake")
    book = RecordBook(runs)
    base_s = task.baseline.train_time_s
    book.append(key, Entry(0, _baseline(), base_s, 3.47, 1.0))
    book.append(key, Entry(1, record, 3.05, 3.0, 3.05 / base_s))  # its time, as a ratio
    env = SpeedrunEnv("Speedrun-Tiny-v0", smoke=True, verify="none", sandbox=FakeSandbox(),
                      runs_dir=runs, paired_baseline=False, start="record", reward="record")  # fmt: skip
    obs, _ = env.reset(seed=0)
    assert obs["script"] == record and "record 1" in obs["feedback"]
    record_s = env.settings.record_train_time_s
    assert record_s == pytest.approx(env.settings.baseline_train_time_s * 3.05 / base_s)
    same = env.step("")[4]["result"]  # the record itself: within 5 % of its time
    faster = env.step({"script": base + "# fake: step_s=0.1\n"})[4]["result"]  # 2.05 s
    slower = env.step({"script": base + "# fake: step_s=0.4\n"})[4]["result"]  # 5.05 s
    missed = env.step({"script": _baseline() + "# fake: val_loss=3.9\n"})[4]["result"]
    env.close()
    assert [r.outcome.value for r in (same, faster, slower)] == ["ok"] * 3
    assert same.reward == 0.0 and slower.reward == 0.0
    assert faster.reward == pytest.approx(math.log(record_s / faster.train_time_s))
    assert missed.reward < 0
    plain = SpeedrunEnv("Speedrun-Tiny-v0", smoke=True, verify="none", sandbox=FakeSandbox(),
                        runs_dir=runs, paired_baseline=False)  # fmt: skip
    assert plain.reset(seed=0)[0]["script"] == _baseline()  # the default start is the baseline
    plain.close()


@pytest.mark.slow(steps=10)  # nine smoke runs, four of them 4 s longer
def test_a_real_claim_against_a_slower_record_is_admitted(tiny_data, tmp_path):
    """Verified, in the local sandbox: the baseline claimed against a record that sleeps 4 s more
    (entered in the book by hand) wins on time at p < 0.01 and meets the target at p < 0.01.
    Not `alone`: each run holds its own core (the CPU slots), so a neighbour in the parallel
    suite moves both sides' times by well under the 4 s (a smoke run takes about 3 s)."""
    runs = tmp_path / "runs"
    base = _baseline()
    env = SpeedrunEnv("Speedrun-Tiny-v0", smoke=True, runs_dir=runs, paired_baseline=False)
    env.reset(seed=0)
    assert env.step("")[4]["result"].verdict.verified
    env.close()
    from nanoenv.records.book import book_key

    key = book_key(env.task, True, "local")
    slow = base.replace("import time\n", "import time\ntime.sleep(4)\n", 1)
    assert slow != base
    book = RecordBook(runs)
    book.append(key, Entry(0, base, 6.0, 3.47, 1.0))
    book.append(key, Entry(1, slow, 6.0, 3.47, 1.0))  # a stand-in record, slower on purpose
    won = claim(f"{env.episode_dir.name}/1", runs_dir=runs, repeats=4, seed=0)
    assert won.admitted, won.summary()
    assert won.entry.number == 2 and won.entry.time_ratio < 1.0
    assert min(won.record_times) > max(won.candidate_times)
