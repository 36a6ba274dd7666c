"""nanoenv: the NanoGPT speedrun as a gym-style environment.

Importing nanoenv registers its environment ids with gymnasium::

    import gymnasium, nanoenv
    env = gymnasium.make("nanoenv/Speedrun-Tiny-v0")
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
from nanoenv.telemetry import parse_log
from nanoenv.types import Action, LossPoint, Outcome, RunResult, Verdict

__version__ = "0.1.0"

# One flat list, entry points as strings: registering imports nothing heavy. Runs are timed,
# so no two are alike: the ids are nondeterministic.
_ENV_IDS = {
    "nanoenv/Speedrun-Tiny-v0": "Speedrun-Tiny-v0",
    "nanoenv/Speedrun-GPT2-1xH100-v0": "Speedrun-GPT2-1xH100-v0",
    "nanoenv/Speedrun-GPT2-8xH100-v0": "Speedrun-GPT2-8xH100-v0",
}
for _env_id, _task in _ENV_IDS.items():
    if _env_id not in registry:
        register(
            id=_env_id,
            entry_point="nanoenv.env:SpeedrunEnv",
            kwargs={"task": _task},
            nondeterministic=True,
        )


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
