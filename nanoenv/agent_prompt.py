"""What a chat model is told: the instructions and each turn's text, from nanoenv's observation.

One place for the words the LLM example (examples/llm_agent.py) and the verifiers environment
(nanoenv.integrations.verifiers) send, so an agent reads the same thing through either.
"""

from __future__ import annotations

from typing import Any

AGENT_INSTRUCTIONS = """You are a machine-learning researcher speeding up a language-model training run.
Each turn you get the task's brief, the current training script and the report of the last
experiment. Propose ONE change as a unified diff against the current script (paths a/train.py
and b/train.py), in a single ```diff block, after one sentence saying why. Never change the
protected regions."""


def _script(obs: dict[str, Any]) -> str:
    return f"## Current script\n```python\n{obs['script']}```"


def first_turn(obs: dict[str, Any]) -> str:
    """The first user turn: the brief (the reset observation's feedback) and the script."""
    return f"{obs['feedback']}\n\n{_script(obs)}\n\n## Last report\nNo experiment yet."


def next_turn(obs: dict[str, Any], brief: str | None = None) -> str:
    """A later user turn: the last step's report and the script as it now stands, after the
    brief where the model sees no earlier turns (a loop that sends one message at a time)."""
    if brief is not None:
        return f"{brief}\n\n{_script(obs)}\n\n## Last report\n{obs['feedback']}"
    return f"## Last report\n{obs['feedback']}\n\n{_script(obs)}"
