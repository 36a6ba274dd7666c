"""SpeedrunVerifiersEnv: nanoenv as a multi-turn environment of Prime Intellect's verifiers.

One rollout is one nanoenv episode. The model reads the brief and the baseline script as nanoenv
writes them, and answers with an edit (a unified diff, a bare-``@@`` hunk, an apply_patch or a
SEARCH/REPLACE block, prose and fences around it allowed). Every answer is an env step, run as
it arrives, so the last answer of a rollout is run too; the next user turn is the step's feedback
and the script as it now stands. The rollout's reward is nanoenv's, verified and harness-timed,
and each step's result is kept in ``state["nanoenv"]``.

This is verifiers' classic environment API (``vf.MultiTurnEnv``, ``load_environment``): verifiers
0.3.x, where ``import verifiers as vf`` still answers with it (0.4 dropped it for ``verifiers.v1``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import verifiers as vf
from datasets import Dataset

import nanoenv
from nanoenv.agent_prompt import AGENT_INSTRUCTIONS, first_turn, next_turn

RolloutReward = Literal["best", "last", "sum"]


class SpeedrunVerifiersEnv(vf.MultiTurnEnv):
    """The NanoGPT speedrun as a ``vf.MultiTurnEnv``: one rollout, one episode.

    Args:
        task: A nanoenv task id (``nanoenv/Speedrun-Tiny-v1``, ``tiny``, ...).
        seeds: One rollout input per seed; a rollout resets its env with its seed.
        max_turns: Answers (env steps) per rollout; the episode ends sooner if the env ends it.
        rollout_reward: What one rollout scores: ``best`` (the best step's reward: the best
            result the episode attained, the benchmark's objective), ``last`` or ``sum``.
        **env_kwargs: What ``SpeedrunEnv`` takes (``smoke``, ``sandbox``, ``verify``,
            ``reward``, ``runs_dir``, ...). Each rollout makes its own env and closes it.
    """

    def __init__(
        self,
        task: str = "nanoenv/Speedrun-Tiny-v1",
        seeds: tuple[int, ...] = (0,),
        max_turns: int = 3,
        rollout_reward: RolloutReward = "best",
        **env_kwargs: Any,
    ) -> None:
        if rollout_reward not in ("best", "last", "sum"):
            raise ValueError(f"rollout_reward must be best, last or sum, not {rollout_reward!r}")
        nanoenv.tasks.load_task(task)  # a wrong id fails here, with its "did you mean"
        self.task = task
        self.rollout_reward = rollout_reward
        self.env_kwargs = {"max_steps": max_turns, **env_kwargs}
        # The user turn is written at setup, from the env's own reset observation.
        rows = [{"question": "", "answer": "", "info": {"seed": s}} for s in seeds]
        super().__init__(
            dataset=Dataset.from_list(rows),
            eval_dataset=Dataset.from_list(rows),
            system_prompt=AGENT_INSTRUCTIONS,
            rubric=vf.Rubric(funcs=[self.nanoenv_reward], weights=[1.0]),
            max_turns=max_turns,
        )

    async def setup_state(self, state: vf.State) -> vf.State:
        env = nanoenv.SpeedrunEnv(task=self.task, **self.env_kwargs)
        state["nanoenv_env"] = env
        state["nanoenv"] = []
        obs, _ = await asyncio.to_thread(env.reset, seed=int(state["info"]["seed"]))
        state["prompt"][-1].content = first_turn(obs)
        return state

    async def add_trajectory_step(self, state: vf.State, trajectory_step: Any) -> None:
        """Run the answer as an env step the moment it arrives (the loop checks max_turns
        before it asks for the env's response, which would leave the last answer unrun)."""
        await super().add_trajectory_step(state, trajectory_step)
        env = state["nanoenv_env"]
        reply = _text(trajectory_step["completion"])
        obs, reward, terminated, truncated, info = await asyncio.to_thread(env.step, reply)
        result = info["result"]
        trajectory_step["reward"] = reward
        state["nanoenv"].append({
            "step": result.step, "outcome": result.outcome.value, "reward": reward,
            "val_loss": result.val_loss, "train_time_s": result.train_time_s,
            "verified": result.verdict.verified if result.verdict else False,
            "message": result.message, "artifacts_dir": result.artifacts_dir,
        })  # fmt: skip
        state["nanoenv_next"] = next_turn(obs)
        if terminated or truncated:
            state["final_env_response"] = [vf.UserMessage(content=obs["feedback"])]

    async def env_response(
        self, messages: vf.Messages, state: vf.State, **kwargs: Any
    ) -> vf.Messages:
        return [vf.UserMessage(content=state["nanoenv_next"])]

    @vf.cleanup
    async def close_nanoenv(self, state: vf.State) -> None:
        if (env := state.pop("nanoenv_env", None)) is not None:
            await asyncio.to_thread(env.close)

    async def nanoenv_reward(self, state: vf.State, **kwargs: Any) -> float:
        """The rollout's reward: nanoenv's step rewards, combined as ``rollout_reward`` says."""
        rewards = [s["reward"] for s in state.get("nanoenv", [])]
        if not rewards:
            return -1.0  # no step ran (the model never answered): a failed step's reward
        return {"best": max(rewards), "last": rewards[-1], "sum": sum(rewards)}[self.rollout_reward]


def _text(messages: Any) -> str:
    """The text of the model's answer (the last assistant message of a completion)."""
    for message in reversed(list(messages)):
        content = (
            getattr(message, "content", None)
            if not isinstance(message, dict)
            else message.get("content")
        )
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # content parts
            return "".join(
                p.get("text", "") if isinstance(p, dict) else getattr(p, "text", "")
                for p in content
            )
    return ""


def load_environment(task: str = "nanoenv/Speedrun-Tiny-v1", **kwargs: Any) -> SpeedrunVerifiersEnv:
    """verifiers' entry point: ``vf.load_environment``-style construction of the env."""
    return SpeedrunVerifiersEnv(task=task, **kwargs)
