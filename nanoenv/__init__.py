"""nanoenv: the NanoGPT speedrun as a gym-style environment.

Importing nanoenv registers its environment ids with gymnasium::

    import gymnasium, nanoenv
    env = gymnasium.make("nanoenv/Speedrun-Tiny-v1")
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from nanoenv.errors import (
    DataError,
    NanoEnvError,
    PatchError,
    PolicyError,
    SandboxError,
    TaskError,
)
from nanoenv.judging.telemetry import parse_log
from nanoenv.tasks import discovered_ids
from nanoenv.types import Action, LossPoint, Outcome, RunResult, Verdict

__version__ = "0.1.0"


def _register_tracks() -> None:
    """Register every envs/<task>/task.toml as nanoenv/<its id>: a new track needs no code
    change. Entry points are strings, so registering imports nothing heavy. Runs are timed, so
    no two are alike: the ids are nondeterministic."""
    for task in discovered_ids():
        if f"nanoenv/{task}" not in registry:
            register(
                id=f"nanoenv/{task}",
                entry_point="nanoenv.env:SpeedrunEnv",
                kwargs={"task": task},
                nondeterministic=True,
            )


_register_tracks()


def __getattr__(name: str):
    # SpeedrunEnv pulls in numpy and the sandbox room; load it only when asked for.
    if name == "SpeedrunEnv":
        from nanoenv.env import SpeedrunEnv

        return SpeedrunEnv
    raise AttributeError(f"module 'nanoenv' has no attribute {name!r}")


__all__ = [
    "Action",
    "DataError",
    "LossPoint",
    "NanoEnvError",
    "Outcome",
    "PatchError",
    "PolicyError",
    "RunResult",
    "SandboxError",
    "SpeedrunEnv",
    "TaskError",
    "Verdict",
    "__version__",
    "parse_log",
]
