"""``nanoenv serve``: its arguments and command. OpenEnv is imported only when it runs, so the
``nanoenv`` command works without the ``openenv`` extra."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from nanoenv.errors import NanoEnvError
from nanoenv.judging.rewards import REWARDS
from nanoenv.sandbox import BACKENDS
from nanoenv.tasks import DEFAULT_TASK, NAMESPACE, load_task

TOKEN_VARIABLE = "NANOENV_SERVE_TOKEN"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``nanoenv`` command."""
    serve = sub.add_parser(
        "serve",
        help="serve the environment the OpenEnv way (pip install nanoenv[openenv])",
        description="One episode per WebSocket session (OpenEnv's /ws protocol), GET /health. "
        "A client that leaves mid-step has its run cancelled; an idle session is closed.",
    )
    serve.add_argument("--env", default=NAMESPACE + DEFAULT_TASK, help="environment id")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--sandbox", default="local", choices=list(BACKENDS))
    serve.add_argument("--smoke", action="store_true", help="the few-seconds size of the task")
    serve.add_argument("--verify", default="full", choices=["full", "log", "none"])
    serve.add_argument("--reward", default="time_to_target", choices=list(REWARDS))
    serve.add_argument("--max-steps", type=int, help="steps per episode (default: the task's)")
    serve.add_argument("--runs-dir", default="nanoenv-runs", help="each session's runs go below")
    serve.add_argument("--max-sessions", type=int, default=4, help="sessions open at once")
    serve.add_argument(
        "--idle-timeout-s", type=float, default=600.0,
        help="close a session with no message and no running step for this long",
    )  # fmt: skip
    serve.add_argument(
        "--token",
        help=f"required of every client (default: ${TOKEN_VARIABLE}); needed off loopback",
    )
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    try:
        import uvicorn

        from nanoenv.integrations.openenv import is_loopback, make_app
    except ImportError as e:
        raise NanoEnvError(
            f"nanoenv serve needs the openenv extra ({e}): pip install 'nanoenv[openenv]'"
        ) from None
    if not is_loopback(args.host) and token is None:
        raise NanoEnvError(
            f"--host {args.host} is reachable from other machines: give --token (or set "
            f"{TOKEN_VARIABLE}), for example --token $(python -c 'import secrets; "
            "print(secrets.token_urlsafe())')"
        )
    task = load_task(args.env).id  # an unknown id fails here, not at every session's reset
    env_kwargs = {
        "task": task, "sandbox": args.sandbox, "smoke": args.smoke,
        "verify": args.verify, "reward": args.reward,
    }  # fmt: skip
    if args.max_steps is not None:
        env_kwargs["max_steps"] = args.max_steps
    app = make_app(
        Path(args.runs_dir), max_sessions=args.max_sessions,
        idle_timeout_s=args.idle_timeout_s, token=token, **env_kwargs,
    )  # fmt: skip
    print(
        f"nanoenv serve: {args.env} on ws://{args.host}:{args.port}/ws "
        f"({args.max_sessions} sessions, idle timeout {args.idle_timeout_s:g} s, "
        f"runs in {args.runs_dir}{', token required' if token else ''})",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
