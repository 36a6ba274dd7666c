"""SpeedrunEnvironment: a ``SpeedrunEnv`` behind OpenEnv's ``Environment`` interface.

One instance is one session's episode, with its own runs folder. It works with OpenEnv's own
``create_app`` too; ``nanoenv serve`` (nanoenv.integrations.openenv.app) adds what a long
training step needs on top: a step a client walks away from is cancelled, not finished.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import EnvironmentMetadata

import nanoenv
from nanoenv.episode import StepHandle
from nanoenv.integrations.openenv.models import (
    SpeedrunAction,
    SpeedrunObservation,
    SpeedrunState,
    finite,
)


class SpeedrunEnvironment(Environment[SpeedrunAction, SpeedrunObservation, SpeedrunState]):
    """The NanoGPT speedrun as an OpenEnv environment: ``reset``, ``step``, ``state``, ``close``.

    Args:
        runs_dir: This session's runs folder (its own ``runs.sqlite`` and step folders).
        **env_kwargs: What ``SpeedrunEnv`` takes (``task``, ``sandbox``, ``smoke``, ``verify``,
            ``reward``, ...). The env is made at the first ``reset`` or ``step``, so asking
            for metadata runs nothing.
    """

    SUPPORTS_CONCURRENT_SESSIONS = True  # every session has its own env and runs folder

    def __init__(self, runs_dir: str | Path, **env_kwargs: Any) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.env_kwargs = env_kwargs
        self._env: Any = None
        self._lock = threading.Lock()  # reset, step and close may come from different threads
        self._closed = False
        self._episode_id: str | None = None
        self._running: StepHandle | None = None

    @property
    def env(self) -> Any:
        """The session's ``SpeedrunEnv``, made on first use."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this session is closed")
            if self._env is None:
                self._env = nanoenv.SpeedrunEnv(runs_dir=self.runs_dir, **self.env_kwargs)
            return self._env

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> SpeedrunObservation:
        """A new episode: the baseline script and the task's brief."""
        obs, _ = self.env.reset(seed=seed)
        self._episode_id = episode_id or self.env.episode.record.path.name
        return self._observation(obs, step=0)

    def step(
        self, action: SpeedrunAction, timeout_s: float | None = None, **kwargs: Any
    ) -> SpeedrunObservation:
        """Run one candidate script and report it (blocks for the whole run)."""
        return self.finish(self.submit(action))

    def submit(self, action: SpeedrunAction) -> StepHandle:
        """Start a step; :meth:`finish` waits for it. ``close`` cancels it."""
        handle = self.env.submit(action.to_nanoenv())
        self._running = handle
        return handle

    def finish(self, handle: StepHandle) -> SpeedrunObservation:
        """The observation of a submitted step, once it has ended."""
        try:
            obs, reward, terminated, truncated, info = handle.result()
        finally:
            if self._running is handle:
                self._running = None
        result = info["result"]
        return self._observation(
            obs,
            step=handle.index,
            reward=float(reward),
            done=bool(terminated or truncated),
            terminated=bool(terminated),
            truncated=bool(truncated),
            result=result.model_dump(mode="json"),
            progress=info["progress"],
        )

    @property
    def state(self) -> SpeedrunState:
        """Where the session's episode stands."""
        env = self._env
        if env is None:
            return SpeedrunState(
                runs_dir=str(self.runs_dir), task=str(self.env_kwargs.get("task", ""))
            )
        results = env.results
        progress = env.episode.summary()
        return SpeedrunState(
            episode_id=self._episode_id,
            step_count=len(results),
            task=env.task.id,
            runs_dir=str(self.runs_dir),
            episode_dir=str(env.episode_dir) if env.episode_dir.exists() else None,
            current=env.current,
            outcomes=[r.outcome.value for r in results],
            rewards=[float(r.reward) for r in results],
            best_val_loss=finite(progress.get("best_val_loss")),
            running=self._running is not None and not self._running.done(),
        )

    def get_metadata(self) -> EnvironmentMetadata:
        """The environment's name and what it does (makes no env)."""
        return EnvironmentMetadata(
            name="nanoenv",
            description=(
                "The NanoGPT speedrun as an environment: an action is an edit of a training "
                "script; a step runs it in a sandbox and returns the verified loss curve, the "
                "harness-timed training time and a reward."
            ),
            version=nanoenv.__version__,
        )

    def close(self) -> None:
        """End the session: a running step is cancelled (its record says so), the sandbox
        closed. Safe to call twice, and from another thread than the step's."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            env, self._env = self._env, None
        if env is not None:
            env.close()

    @staticmethod
    def _observation(obs: dict[str, Any], step: int, **fields: Any) -> SpeedrunObservation:
        rows = obs["curve"][: int(obs["curve_points"])].tolist()
        return SpeedrunObservation(
            step=step,
            script=obs["script"],
            feedback=obs["feedback"],
            outcome=obs["outcome"],
            val_loss=finite(obs["val_loss"]),
            train_time_s=finite(obs["train_time_s"]),
            curve=finite(rows),
            **{k: finite(v) if k in ("progress", "reward") else v for k, v in fields.items()},
        )
