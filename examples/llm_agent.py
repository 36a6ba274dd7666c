"""An LLM research agent: a chat model proposes patches, nanoenv runs and judges them.

    pip install -e ".[openai]"
    OPENAI_BASE_URL=https://api.openai.com/v1 OPENAI_API_KEY=... NANOENV_LLM_MODEL=gpt-4o-mini \\
        python examples/llm_agent.py [--steps 5] [--smoke]

Talks through the openai SDK to any OpenAI-compatible chat-completions endpoint (vLLM,
llama.cpp's server, a hosted API): the SDK reads OPENAI_BASE_URL and OPENAI_API_KEY itself. Each turn the model sees the brief, the current script and the last feedback, and
answers with one unified diff in a ```diff block; that diff is the action.
"""

import argparse
import os
import re

import gymnasium as gym
from openai import OpenAI

import nanoenv  # noqa: F401
from nanoenv.agent_prompt import AGENT_INSTRUCTIONS, first_turn, next_turn


def chat(client, model, messages):
    """One chat-completions call; the reply's text."""
    reply = client.chat.completions.create(model=model, messages=messages, temperature=0.7)
    return reply.choices[0].message.content or ""


def extract_diff(reply):
    """The diff in the reply's ```diff block (or the whole reply if there is none)."""
    m = re.search(r"```(?:diff|patch)?\n(.*?)```", reply, re.S)
    return m.group(1) if m else reply


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--runs-dir", default="nanoenv-runs")
    args = ap.parse_args()
    model = os.environ.get("NANOENV_LLM_MODEL", "gpt-4o-mini")
    # a local server needs no key; the SDK refuses to start without one
    client = OpenAI(api_key=os.environ.get("OPENAI_API_KEY") or "none", timeout=300, max_retries=2)

    env = gym.make(
        "nanoenv/Speedrun-Tiny-v0", smoke=args.smoke, runs_dir=args.runs_dir, max_steps=args.steps
    )
    obs, _ = env.reset(seed=0)
    brief, prompt = obs["feedback"], first_turn(obs)
    for _ in range(args.steps):
        reply = chat(client, model, [{"role": "system", "content": AGENT_INSTRUCTIONS},
                                     {"role": "user", "content": prompt}])  # fmt: skip
        obs, reward, terminated, truncated, info = env.step(extract_diff(reply))
        prompt = next_turn(obs, brief)  # each call is the model's first: the brief again
        print(f"step {info['result'].step}: {info['result'].outcome.value}, reward {reward:+.4f} "
              f"({reply.splitlines()[0][:100] if reply else ''})", flush=True)  # fmt: skip
        if terminated or truncated:
            break
    env.close()


if __name__ == "__main__":
    main()
