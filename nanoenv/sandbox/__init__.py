"""Sandbox backends. Each runs one :class:`~nanoenv.types.Job` and returns a ``JobResult``.

Backends are imported only when asked for, so ``import nanoenv`` never imports docker or ray.
Each declares what it can do in its ``capabilities`` (see :class:`Capabilities`); this table
only says where each named one lives.
"""

from __future__ import annotations

import importlib
from typing import Any

from nanoenv.sandbox.base import Capabilities, Sandbox, capabilities

# name -> "module:class", in the order the CLI lists them. FakeSandbox is not here: it is
# for tests, passed as an instance, never chosen by name.
BACKENDS: dict[str, str] = {
    "local": "nanoenv.sandbox.local:LocalSandbox",
    "docker": "nanoenv.sandbox.docker:DockerSandbox",
    "ray": "nanoenv.sandbox.ray:RaySandbox",
}


def backend_class(name: str) -> type:
    """The class of a registered backend (importing its module, and what that needs)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown sandbox {name!r}; choose one of {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_sandbox(name: str, *, gpus: bool = False, **kwargs: Any) -> Sandbox:
    """Create a registered backend by name (``local``, ``docker``, ``ray``); ``gpus``: the jobs
    need GPUs, asked for here where the backend needs them asked for when it is made."""
    cls = backend_class(name)
    if gpus and capabilities(cls).gpu_request:
        kwargs.setdefault("gpu", True)
    return cls(**kwargs)


__all__ = ["BACKENDS", "Capabilities", "Sandbox", "backend_class", "capabilities", "make_sandbox"]
