"""nanoenv as a verifiers environment (``pip install nanoenv[verifiers]``): see environment.py."""

from nanoenv.integrations.verifiers.environment import SpeedrunVerifiersEnv, load_environment

__all__ = ["SpeedrunVerifiersEnv", "load_environment"]
