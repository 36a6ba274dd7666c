"""Rule review of a record claim: a pluggable reviewer reads the diff and says what it breaks.

A reviewer is any callable ``(Review) -> list[str]``: the violations it finds, none to pass.
Timing and verification catch what can be measured; a reviewer is for what cannot (a script
that special-cases the val data in a way the checks miss, a change the track's rules forbid
in words), as NanoGPT-Bench and RSI Bench review claims. ``ChatReviewer`` asks an
OpenAI-compatible chat endpoint (``nanoenv[review]``: the openai SDK).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from nanoenv.types import RunResult


@dataclass(frozen=True)
class Review:
    """What a rule reviewer sees: the claimed script, its diff against the record, its result."""

    task: str
    rules: str  # the track's rules, as the brief states them
    diff: str
    script: str
    result: RunResult | None


PROMPT = """You review a claimed record of a language-model training speedrun. The claim is a
change to the training script; timing and loss were measured by the harness. Decide only
whether the change breaks the track's rules below (not whether it is a good idea).

Rules of {task}:
{rules}

The change (a unified diff against the current record):
{diff}

Answer with JSON only: {{"violations": ["one sentence per rule broken"]}}, an empty list if none."""

MAX_DIFF_CHARS = 60_000


class ChatReviewer:
    """Asks an OpenAI-compatible chat endpoint for the rule violations in a claim's diff.

    Args:
        base_url: The endpoint's base, e.g. ``http://localhost:8000/v1``.
        model: The model name the endpoint serves.
        api_key: Its key (default: ``$OPENAI_API_KEY``, or a placeholder for local servers).
        timeout_s: Per request.
    """

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 120.0
    ) -> None:
        from openai import OpenAI

        key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
        self.client = OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=1)
        self.model = model

    def __call__(self, review: Review) -> list[str]:
        diff = review.diff
        if len(diff) > MAX_DIFF_CHARS:
            diff = diff[:MAX_DIFF_CHARS] + "\n[... diff truncated]"
        reply = self.client.chat.completions.create(
            model=self.model,
            temperature=0,
            messages=[{"role": "user",
                       "content": PROMPT.format(task=review.task, rules=review.rules, diff=diff)}],
        )  # fmt: skip
        return parse_violations(reply.choices[0].message.content or "")


def parse_violations(text: str) -> list[str]:
    """The violations in a reviewer's answer. An answer that is not the JSON asked for is itself
    a violation: a claim is admitted on a clear "none", never on a reply nobody can read."""
    match = re.search(r"\{.*\}", text, re.S)
    try:
        found = json.loads(match.group(0) if match else text)["violations"]
    except (ValueError, KeyError, TypeError):
        return [f"the reviewer's answer was not the JSON asked for: {text[:200]!r}"]
    if not isinstance(found, list):
        return [f"the reviewer's violations were not a list: {found!r}"[:300]]
    return [str(v) for v in found if str(v).strip()]
