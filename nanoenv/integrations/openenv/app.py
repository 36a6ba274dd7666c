"""``nanoenv serve``: the environment served the OpenEnv way, one episode per WebSocket session.

OpenEnv's clients (``EnvClient``, ``GenericEnvClient``, nanoenv's ``SpeedrunClient``) talk to
``/ws`` with OpenEnv's messages (reset, step, state, close) and read ``GET /health``,
``/schema`` and ``/metadata``. What nanoenv adds to OpenEnv's own server loop, because a step is
a training run of seconds to hours:

- the session keeps reading its socket while a step runs: a client that goes away mid-step
  gets its run cancelled (the job killed, the step's record ending as ``infra_error``,
  "cancelled by the caller"), not trained to the end for nobody;
- a session that is idle (no message and no step running) past ``idle_timeout_s`` is closed,
  its queued runs cancelled and its sandbox (containers too) released;
- at most ``max_sessions`` at once, each with its own runs folder under ``runs_dir``;
- on an address other than loopback every request needs the token (``Authorization: Bearer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse
from openenv.core.env_server.serialization import serialize_observation
from openenv.core.env_server.types import (
    HealthResponse,
    SchemaResponse,
    ServerCapacityStatus,
    WSErrorCode,
    WSErrorResponse,
    WSObservationResponse,
    WSResetMessage,
    WSStateResponse,
    WSStepMessage,
)
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from nanoenv.integrations.openenv.environment import SpeedrunEnvironment
from nanoenv.integrations.openenv.models import SpeedrunAction, SpeedrunObservation, SpeedrunState

log = logging.getLogger(__name__)

EnvFactory = Callable[[Path], SpeedrunEnvironment]
# While a step runs the session is busy, not idle; this is how often it is marked so.
BUSY_TICK_S = 2.0


@dataclass
class Session:
    """One client's episode."""

    id: str
    env: SpeedrunEnvironment
    websocket: WebSocket
    last_active: float = field(default_factory=time.monotonic)
    busy: bool = False
    closed: bool = False

    def touch(self) -> None:
        self.last_active = time.monotonic()


class Sessions:
    """The open sessions: at most ``limit``, each with its own runs folder, idle ones reaped."""

    def __init__(self, factory: EnvFactory, runs_dir: Path, limit: int, idle_timeout_s: float):
        self.factory, self.runs_dir, self.limit = factory, runs_dir, limit
        self.idle_timeout_s = idle_timeout_s
        self.open: dict[str, Session] = {}
        self._lock = asyncio.Lock()
        # reset, finish and close block for a whole run: a thread each, never the event loop's
        self.executor = ThreadPoolExecutor(max_workers=2 * limit + 2, thread_name_prefix="serve")

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call in the sessions' threads."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def start(self, websocket: WebSocket) -> Session | None:
        """A new session, or None when ``limit`` are open."""
        async with self._lock:
            if len(self.open) >= self.limit:
                return None
            sid = uuid.uuid4().hex[:12]
            runs = self.runs_dir / f"session-{time.strftime('%Y%m%d-%H%M%S')}-{sid}"
            session = Session(sid, self.factory(runs), websocket)
            self.open[sid] = session
        log.info("session %s opened (%d of %d), runs in %s", sid, len(self.open), self.limit, runs)
        return session

    async def end(self, session: Session, why: str) -> None:
        """Close a session: cancel what runs, release its sandbox, drop it (idempotent)."""
        async with self._lock:
            if session.closed:
                return
            session.closed = True
        log.info("session %s closing: %s", session.id, why)
        try:
            await self.run(session.env.close)
        finally:  # its slot is free once what it ran has stopped
            async with self._lock:
                self.open.pop(session.id, None)
        if session.websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await session.websocket.close(code=1001, reason=why)

    async def reap(self) -> None:
        """Close sessions idle past the timeout, forever (a background task)."""
        interval = max(0.2, min(5.0, self.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            idle = [
                s
                for s in list(self.open.values())
                if not (s.busy or s.closed) and now - s.last_active > self.idle_timeout_s
            ]
            for session in idle:
                await self.end(session, f"idle for more than {self.idle_timeout_s:g} s")

    async def shutdown(self) -> None:
        for session in list(self.open.values()):
            await self.end(session, "the server is shutting down")
        self.executor.shutdown(wait=False, cancel_futures=True)


def is_loopback(host: str) -> bool:
    """Whether a bind address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_app(
    runs_dir: str | Path = "nanoenv-runs",
    *,
    max_sessions: int = 4,
    idle_timeout_s: float = 600.0,
    token: str | None = None,
    env_factory: EnvFactory | None = None,
    **env_kwargs: Any,
) -> FastAPI:
    """The FastAPI app of ``nanoenv serve``.

    Args:
        runs_dir: Where each session's runs folder is made.
        max_sessions: Sessions open at once; one more is answered ``CAPACITY_REACHED``.
        idle_timeout_s: A session with no message and no running step for this long is closed.
        token: If set, every request but ``GET /health`` must carry it
            (``Authorization: Bearer TOKEN``, or ``?token=TOKEN`` on the WebSocket).
        env_factory: Makes a session's environment from its runs folder (default:
            ``SpeedrunEnvironment(runs, **env_kwargs)``).
        **env_kwargs: ``SpeedrunEnv``'s arguments for every session (task, sandbox, smoke, ...).
    """
    if max_sessions < 1:
        raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
    root = Path(runs_dir)
    factory = env_factory or (lambda runs: SpeedrunEnvironment(runs, **env_kwargs))
    sessions = Sessions(factory, root, max_sessions, idle_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        reaper = asyncio.create_task(sessions.reap())
        try:
            yield
        finally:
            reaper.cancel()
            await sessions.shutdown()

    app = FastAPI(title="nanoenv", lifespan=lifespan)
    app.state.sessions = sessions

    def authorized(headers: Any, query: Any) -> bool:
        if token is None:
            return True
        given = query.get("token") or ""
        auth = headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return secrets.compare_digest(given.encode(), token.encode())

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if request.url.path != "/health" and not authorized(request.headers, request.query_params):
            return JSONResponse({"detail": "a token is required (Authorization: Bearer ...)"}, 401)
        return await call_next(request)

    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        return HealthResponse()

    @app.get("/capacity", response_model=ServerCapacityStatus)
    async def capacity() -> ServerCapacityStatus:
        return ServerCapacityStatus.from_counts(len(sessions.open), sessions.limit)

    @app.get("/schema", response_model=SchemaResponse)
    async def schema() -> SchemaResponse:
        return SchemaResponse(
            action=SpeedrunAction.model_json_schema(),
            observation=SpeedrunObservation.model_json_schema(),
            state=SpeedrunState.model_json_schema(),
        )

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        return SpeedrunEnvironment(root).get_metadata().model_dump()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        if not authorized(websocket.headers, websocket.query_params):
            await websocket.close(code=1008, reason="a token is required")
            return
        await websocket.accept()
        session = await sessions.start(websocket)
        if session is None:
            await _send_error(websocket, WSErrorCode.CAPACITY_REACHED,
                              f"{sessions.limit} sessions are open; try again later",
                              active_sessions=len(sessions.open), max_sessions=sessions.limit)  # fmt: skip
            await websocket.close(code=1013)
            return
        try:
            await _serve(session, sessions)
        except WebSocketDisconnect:
            pass
        finally:
            await sessions.end(session, "the client left")

    return app


class Inbox:
    """A socket's messages, read ahead: while a step runs, the next receive is already waiting,
    so a client that leaves is seen at once; other messages wait their turn in ``queued``."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.queued: list[dict[str, Any]] = []
        self._receiving: asyncio.Task | None = None

    def receiving(self) -> asyncio.Task:
        """The receive in progress (started if none is)."""
        if self._receiving is None:
            self._receiving = asyncio.ensure_future(self.websocket.receive())
        return self._receiving

    def take(self) -> dict[str, Any]:
        """The message the finished receive got; the next call to :meth:`receiving` waits anew."""
        assert self._receiving is not None and self._receiving.done()
        task, self._receiving = self._receiving, None
        return task.result()

    async def next(self) -> dict[str, Any]:
        """The next message: a queued one first."""
        if self.queued:
            return self.queued.pop(0)
        await self.receiving()
        return self.take()

    def close(self) -> None:
        if self._receiving is not None:
            self._receiving.cancel()


async def _serve(session: Session, sessions: Sessions) -> None:
    """Answer one session's messages until it closes or its client leaves."""
    websocket, env = session.websocket, session.env
    inbox = Inbox(websocket)
    try:
        while not session.closed:
            message = await inbox.next()
            if message["type"] == "websocket.disconnect":
                return
            session.touch()
            try:
                payload = json.loads(message.get("text") or message.get("bytes") or "")
            except json.JSONDecodeError as e:
                await _send_error(websocket, WSErrorCode.INVALID_JSON, f"Invalid JSON: {e}")
                continue
            kind = payload.get("type") if isinstance(payload, dict) else None
            try:
                if kind == "reset":  # busy too: a first reset may time the baseline (minutes)
                    data = WSResetMessage(**payload).data
                    session.busy = True
                    try:
                        obs = await sessions.run(
                            env.reset, data.get("seed"), data.get("episode_id")
                        )
                    finally:
                        session.busy = False
                        session.touch()
                    reply: Any = WSObservationResponse(data=serialize_observation(obs))
                elif kind == "step":
                    action = SpeedrunAction.model_validate(WSStepMessage(**payload).data)
                    obs = await _step(session, sessions, action, inbox)
                    if obs is None:  # the client left while it ran
                        return
                    reply = WSObservationResponse(data=serialize_observation(obs))
                elif kind == "state":
                    reply = WSStateResponse(data=env.state.model_dump(mode="json"))
                elif kind == "close":
                    return
                else:
                    reply = WSErrorResponse(data={"message": f"Unknown message type: {kind}",
                                                  "code": WSErrorCode.UNKNOWN_TYPE})  # fmt: skip
            except ValidationError as e:
                reply = WSErrorResponse(data={"message": "Invalid message",
                                              "code": WSErrorCode.VALIDATION_ERROR,
                                              "errors": json.loads(e.json())})  # fmt: skip
            except Exception as e:  # the harness broke, not the client: say so, keep the session
                log.exception("session %s: %s failed", session.id, kind)
                reply = WSErrorResponse(
                    data={"message": str(e), "code": WSErrorCode.EXECUTION_ERROR}
                )
            await websocket.send_text(reply.model_dump_json())
    finally:
        inbox.close()


async def _step(
    session: Session, sessions: Sessions, action: SpeedrunAction, inbox: Inbox
) -> SpeedrunObservation | None:
    """Run a step while watching the socket: None if the client left (the run is cancelled)."""
    env = session.env
    session.busy = True
    try:
        handle = await sessions.run(env.submit, action)
        finished = asyncio.ensure_future(sessions.run(env.finish, handle))
        while True:
            listening = inbox.receiving()
            done, _ = await asyncio.wait(
                {finished, listening}, timeout=BUSY_TICK_S, return_when=asyncio.FIRST_COMPLETED
            )
            session.touch()
            if listening in done:
                message = inbox.take()
                if message["type"] == "websocket.disconnect":
                    log.info("session %s: the client left mid-step; cancelling it", session.id)
                    await sessions.end(session, "the client left mid-step")
                    with contextlib.suppress(Exception):
                        await finished
                    return None
                inbox.queued.append(message)
            if finished in done:
                return finished.result()
    finally:
        session.busy = False
        session.touch()


async def _send_error(websocket: WebSocket, code: WSErrorCode, message: str, **extra: Any) -> None:
    reply = WSErrorResponse(data={"message": message, "code": code, **extra})
    await websocket.send_text(reply.model_dump_json())
