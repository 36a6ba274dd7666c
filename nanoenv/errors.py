"""One exception hierarchy for nanoenv.

Messages name what was expected, what arrived, and (where there is one) the file to read.
"""

from __future__ import annotations


class NanoEnvError(Exception):
    """Base class of every error nanoenv raises on purpose."""


class TaskError(NanoEnvError):
    """A task id or task.toml is unknown or malformed."""


class DataError(NanoEnvError):
    """A dataset is missing, corrupt, or does not match the manifest a task expects."""


class PatchError(NanoEnvError):
    """A patch cannot be parsed or does not apply (outcome ``patch_failed``)."""


class PolicyError(NanoEnvError):
    """An action breaks a rule of the task: file, size, encoding, protected region (``rejected``)."""


class SandboxError(NanoEnvError):
    """The sandbox itself failed, not the script in it (outcome ``infra_error``)."""
