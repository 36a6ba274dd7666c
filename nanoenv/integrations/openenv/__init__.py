"""nanoenv served the OpenEnv way (``pip install nanoenv[openenv]``; ``nanoenv serve``).

- :class:`SpeedrunEnvironment`: a ``SpeedrunEnv`` behind OpenEnv's ``Environment`` interface
  (usable with OpenEnv's own ``create_app`` as well);
- :func:`make_app`: the server of ``nanoenv serve`` (sessions, limits, idle timeout, token);
- :class:`SpeedrunClient`: OpenEnv's ``EnvClient`` for it, typed;
- :class:`SpeedrunAction`, :class:`SpeedrunObservation`, :class:`SpeedrunState`: the messages.
"""

from __future__ import annotations

from nanoenv.integrations.openenv.app import is_loopback, make_app
from nanoenv.integrations.openenv.client import SpeedrunClient
from nanoenv.integrations.openenv.environment import SpeedrunEnvironment
from nanoenv.integrations.openenv.models import SpeedrunAction, SpeedrunObservation, SpeedrunState

__all__ = [
    "SpeedrunAction",
    "SpeedrunClient",
    "SpeedrunEnvironment",
    "SpeedrunObservation",
    "SpeedrunState",
    "is_loopback",
    "make_app",
]
