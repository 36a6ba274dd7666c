"""An LLM research agent: a chat model proposes patches, nanoenv runs and judges them.

    OPENAI_BASE_URL=https://api.openai.com/v1 OPENAI_API_KEY=... NANOENV_LLM_MODEL=gpt-4o-mini \\
        python examples/llm_agent.py [--steps 5] [--smoke]

Works with any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp's server, a hosted
API). Each turn the model sees the brief, the current script and the last feedback, and
answers with one unified diff in a ```diff block; that diff is the action.
"""

import argparse
import json
import os
import re
import urllib.request

import gymnasium as gym

import nanoenv  # noqa: F401

SYSTEM = """You are a machine-learning researcher speeding up a language-model training run.
Each turn you get the task's brief, the current training script and the report of the last
experiment. Propose ONE change as a unified diff against the current script (paths a/train.py
and b/train.py), in a single ```diff block, after one sentence saying why. Never change the
protected regions."""


def chat(messages, *, base_url, model, api_key, timeout=300):
    """One chat-completions call; the reply's text."""
    body = json.dumps({"model": model, "messages": messages, "temperature": 0.7}).encode()
    req = urllib.request.Request(f"{base_url.rstrip('/')}/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())["choices"][0]["message"]["content"]


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
    base_url = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
    model = os.environ.get("NANOENV_LLM_MODEL", "gpt-4o-mini")
    api_key = os.environ.get("OPENAI_API_KEY", "none")

    env = gym.make(
        "nanoenv/Speedrun-Tiny-v0", smoke=args.smoke, runs_dir=args.runs_dir, max_steps=args.steps
    )
    obs, _ = env.reset(seed=0)
    brief, last = obs["feedback"], "No experiment yet."
    for _ in range(args.steps):
        prompt = (
            f"{brief}\n\n## Current script\n```python\n{obs['script']}```\n\n## Last report\n{last}"
        )
        reply = chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                     base_url=base_url, model=model, api_key=api_key)  # fmt: skip
        obs, reward, terminated, truncated, info = env.step(extract_diff(reply))
        last = obs["feedback"]
        print(f"step {info['result'].step}: {info['result'].outcome.value}, reward {reward:+.4f} "
              f"({reply.splitlines()[0][:100] if reply else ''})", flush=True)  # fmt: skip
        if terminated or truncated:
            break
    env.close()


if __name__ == "__main__":
    main()
