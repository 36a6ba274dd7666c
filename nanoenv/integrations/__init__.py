"""nanoenv where agents and RL trainers already live: each integration is a small folder of its
own, behind an extra (``pip install nanoenv[openenv]``), and nothing in the library imports it.

- ``nanoenv.integrations.openenv``: the environment served the OpenEnv way (``nanoenv serve``).
- ``nanoenv.integrations.verifiers``: a verifiers multi-turn environment (``load_environment``).
"""
