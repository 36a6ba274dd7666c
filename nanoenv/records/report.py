"""An HTML report of an episode: the steps, their numbers, the loss curves and the frontier
on the harness clock (the reward's time), and this machine's record book beside them.

One self-contained file (images embedded), written beside the episode's artifacts, that opens in
any browser.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from nanoenv.errors import TaskError
from nanoenv.records.artifacts import load_result
from nanoenv.records.book import Entry, RecordBook, book_key
from nanoenv.types import RunResult, TaskSpec


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _fmt(x: float | None, spec: str) -> str:
    return "&ndash;" if x is None else format(x, spec)


def episode_results(episode_dir: Path) -> list[RunResult]:
    """The finished steps of an episode folder, in step order."""
    found = (load_result(p) for p in sorted(episode_dir.glob("step-*")))
    return [r for r in found if r is not None]


def _task(meta: dict) -> TaskSpec | None:
    """The episode's task at the size it ran (None when it is no longer known)."""
    from nanoenv.tasks import load_task, smoke_task

    try:
        task = load_task(str(meta["task"]))
        return smoke_task(task) if meta.get("smoke") else task  # as a claim keys it (resolve)
    except (KeyError, TaskError):
        return None


def episode_record_book(episode_dir: Path, meta: dict, task: TaskSpec | None) -> list[Entry]:
    """The record book of the episode's task and size on this machine, from the runs folder the
    episode is in (empty where none was opened, or the task is no longer known)."""
    if task is None:
        return []
    key = book_key(task, bool(meta.get("smoke")), str(meta.get("sandbox") or "local"))
    return RecordBook(episode_dir.parent).history(key)


def write_report(episode_dir: Path, *, target: float | None = None) -> Path:
    """Write ``report.html`` (and its two plots) into the episode folder; return its path."""
    from nanoenv.records.plots import plot_curves, plot_frontier

    meta = json.loads((episode_dir / "episode.json").read_text())
    results = episode_results(episode_dir)
    labels = [f"step {r.step}" for r in results]
    task = _task(meta)
    book = episode_record_book(episode_dir, meta, task)
    curves = plot_curves(list(zip(labels, results, strict=True)), episode_dir / "loss_curves.png",
                         target=target, title="loss against the harness clock",
                         allowance_s=task.timing.untimed_allowance_s if task else 0.0)  # fmt: skip
    points = [(lab, r.train_time_s, r.val_loss) for lab, r in zip(labels, results, strict=True)
              if r.train_time_s is not None and r.val_loss is not None and r.verdict.verified]  # fmt: skip
    frontier = plot_frontier(points, episode_dir / "frontier.png", target=target,
                             title="verified runs and the record book: time against val loss",
                             records=[(e.label, e.train_time_s, e.val_loss) for e in book])  # fmt: skip
    book_rows = "\n".join(
        f"<tr><td>{html.escape(e.label)}</td><td>{e.train_time_s:.2f}</td><td>{e.val_loss:.4f}</td>"
        f"<td>{e.time_ratio:.3f}</td><td>{html.escape(e.run or '')}</td><td>{html.escape(e.claimed_at)}</td>"
        f"<td><code>{e.script_sha256[:12]}</code></td></tr>"
        for e in book
    )  # fmt: skip
    book_table = (
        "<h2>Record book on this machine</h2><table><tr><th>entry</th><th>time (s)</th>"
        "<th>val loss</th><th>time / baseline</th><th>run</th><th>claimed</th><th>script</th></tr>"
        f"\n{book_rows}\n</table>"
        if book
        else "<p>No record book on this machine yet (<code>nanoenv records claim</code> opens one).</p>"
    )
    rows = "\n".join(
        f"<tr class='{r.outcome.value}'><td>{r.step}</td><td>{'' if r.base is None else r.base}</td>"
        f"<td>{r.outcome.value}</td><td>{_fmt(r.val_loss, '.4f')}</td><td>{_fmt(r.hidden_val_loss, '.4f')}</td>"
        f"<td>{_fmt(r.train_time_s, '.2f')}</td><td>{r.reward:+.4f}</td>"
        f"<td>{'yes' if r.verdict.verified else 'no'}</td><td>{html.escape(r.message[:160])}</td></tr>"
        for r in results
    )  # fmt: skip
    title = (
        f"nanoenv: {html.escape(str(meta.get('task')))}, episode {html.escape(episode_dir.name)}"
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; font-size: 14px; }}
th {{ background: #eef; }}
tr.ok td {{ background: #e7f6e7; }} tr.rejected td, tr.crashed td {{ background: #fbe9e9; }}
img {{ max-width: 48%; margin-right: 1%; border: 1px solid #ddd; }}
</style></head><body>
<h1>{title}</h1>
<p>{len(results)} steps; seed {meta.get("seed")}; sandbox {html.escape(str(meta.get("sandbox")))};
verify {html.escape(str(meta.get("verify")))}; reward {html.escape(str(meta.get("reward")))}.</p>
<table><tr><th>step</th><th>base</th><th>outcome</th><th>val loss</th><th>hidden val loss</th>
<th>time (s)</th><th>reward</th><th>verified</th><th>message</th></tr>
{rows}
</table>
<div>{_img(curves)}{_img(frontier)}</div>
{book_table}
</body></html>
"""
    out = episode_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
