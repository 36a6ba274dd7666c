"""Sandbox backends. Each runs one :class:`~nanoenv.types.Job` and returns a ``JobResult``.

Backends are imported only when asked for, so ``import nanoenv`` never imports docker or ray.
"""

from __future__ import annotations

from typing import Any

from nanoenv.sandbox.base import Sandbox

BACKENDS = ("local", "docker", "ray")


def make_sandbox(name: str, **kwargs: Any) -> Sandbox:
    """Create a sandbox backend by name: ``local``, ``docker`` or ``ray``."""
    if name == "local":
        from nanoenv.sandbox.local import LocalSandbox

        return LocalSandbox(**kwargs)
    if name == "docker":
        from nanoenv.sandbox.docker import DockerSandbox  # type: ignore[import-not-found]

        return DockerSandbox(**kwargs)
    if name == "ray":
        from nanoenv.sandbox.ray import RaySandbox  # type: ignore[import-not-found]

        return RaySandbox(**kwargs)
    raise ValueError(f"unknown sandbox {name!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Sandbox", "make_sandbox"]
