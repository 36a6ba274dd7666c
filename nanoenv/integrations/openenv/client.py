"""SpeedrunClient: OpenEnv's ``EnvClient`` for a served nanoenv, with typed messages.

``GenericEnvClient`` works too (plain dicts). This one adds the token a server on a public
address asks for, and a message timeout long enough for a training run.
"""

from __future__ import annotations

import inspect
from typing import Any

from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient
from websockets.asyncio.client import connect as ws_connect

from nanoenv.integrations.openenv.models import SpeedrunAction, SpeedrunObservation, SpeedrunState

# A step answers when its run has trained and been verified: minutes on the GPU tracks.
DEFAULT_STEP_TIMEOUT_S = 3600.0
# openenv-core 0.3's EnvClient takes no headers; its successor, openenv (0.4 on), does.
_TAKES_HEADERS = "headers" in inspect.signature(EnvClient.__init__).parameters


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class SpeedrunClient(EnvClient[SpeedrunAction, SpeedrunObservation, SpeedrunState]):
    """A session with ``nanoenv serve``::

        async with SpeedrunClient("http://127.0.0.1:8000") as env:
            first = await env.reset(seed=0)
            result = await env.step(SpeedrunAction(diff=patch))
            print(result.reward, result.observation.outcome)

    ``.sync()`` gives the same calls without ``await``.

    Args:
        base_url: The server (``http://`` or ``ws://``).
        token: The server's token, if it asks for one.
        message_timeout_s: How long to wait for an answer (a step is a whole run).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        message_timeout_s: float = DEFAULT_STEP_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        self.token = token
        if token is not None and _TAKES_HEADERS:  # openenv >= 0.4 sends headers itself
            kwargs["headers"] = {**kwargs.get("headers", {}), **_auth(token)}
        super().__init__(base_url, message_timeout_s=message_timeout_s, **kwargs)

    async def connect(self) -> SpeedrunClient:
        """Open the session's socket, with the token where this OpenEnv cannot send it."""
        if self.token is None or _TAKES_HEADERS:
            await super().connect()
            return self
        if self._ws is None:  # openenv-core 0.3: its connect takes no headers
            self._ws = await ws_connect(
                self._ws_url,
                open_timeout=self._connect_timeout,
                max_size=self._max_message_size,
                additional_headers=_auth(self.token),
            )
        return self

    def _step_payload(self, action: SpeedrunAction | dict[str, Any] | str) -> dict[str, Any]:
        if isinstance(action, str):  # a bare edit, as SpeedrunEnv.step takes it
            action = SpeedrunAction(diff=action)
        if isinstance(action, dict):
            action = SpeedrunAction.model_validate(action)
        return action.model_dump(exclude={"metadata"}, exclude_none=True)

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[SpeedrunObservation]:
        fields = {"reward": payload.get("reward"), "done": payload.get("done", False)}
        obs = SpeedrunObservation.model_validate({**payload.get("observation", {}), **fields})
        return StepResult(observation=obs, reward=payload.get("reward"), done=obs.done)

    def _parse_state(self, payload: dict[str, Any]) -> SpeedrunState:
        return SpeedrunState.model_validate(payload)
