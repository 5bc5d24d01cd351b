"""Rollout rewards, computed on the host from the rollouts' thread trees.

    reward = correct                                   (the verifier, 0 or 1)
             - format_penalty     if the root did not end (EOS) with an answer line
             + latency_bonus * (1 - sequential / total tokens)   if correct
             - condition_penalty * min(1, |children - asked| / max(asked, 1))
                                  if the prompt asked for a child count

The latency term (ThreadWeaver-style) pays a correct rollout for the share of
its tokens that ran in parallel: 0 for a single thread, approaching the full
bonus when the critical path is short compared with all tokens written.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from apr_jax.countdown.problems import Problem
from apr_jax.countdown.verifier import extract_answer, verify
from apr_jax.decode.engine import EngineOutput, sample_results, to_thread_trees
from apr_jax.rl.grpo import groups_with_signal
from apr_jax.threads import ThreadTree


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    format_penalty: float = 0.0
    latency_bonus: float = 0.0
    condition_penalty: float = 0.0

    def __post_init__(self):
        for name in ("format_penalty", "latency_bonus", "condition_penalty"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass
class Scored:
    """Per-rollout rewards and the statistics logged with them, [P, G] each."""

    rewards: np.ndarray
    correct: np.ndarray
    well_formed: np.ndarray
    total_tokens: np.ndarray
    sequential_tokens: np.ndarray
    num_threads: np.ndarray
    children_per_spawn: list[int]  # every spawn of every rollout
    trees: list[ThreadTree]  # problem-major

    def summary(self) -> dict[str, float]:
        return {
            "reward": float(self.rewards.mean()),
            "accuracy": float(self.correct.mean()),
            "well_formed": float(self.well_formed.mean()),
            "total_tokens": float(self.total_tokens.mean()),
            "sequential_tokens": float(self.sequential_tokens.mean()),
            "threads": float(self.num_threads.mean()),
            "children_per_spawn": float(np.mean(self.children_per_spawn)) if self.children_per_spawn else 0.0,
            "spawned": float((self.num_threads > 1).mean()),
            "groups_with_signal": float(groups_with_signal(self.rewards).mean()),
        }


def rollout_reward(*, correct: bool, well_formed: bool, total_tokens: int, sequential_tokens: int,
                   children: int, asked_children: int | None, cfg: RewardConfig) -> float:
    """One rollout's reward (module docstring)."""
    reward = float(correct)
    if not well_formed:
        reward -= cfg.format_penalty
    if correct and cfg.latency_bonus and total_tokens > 0:
        reward += cfg.latency_bonus * (1.0 - sequential_tokens / total_tokens)
    if asked_children is not None and cfg.condition_penalty:
        miss = abs(children - asked_children) / max(asked_children, 1)
        reward -= cfg.condition_penalty * min(1.0, miss)
    return reward


def score_rollouts(arrays: dict[str, np.ndarray], tokenizer: Any, problems: Sequence[Problem],
                   cfg: RewardConfig, asked_children: Sequence[int | None] | None = None) -> Scored:
    """Rewards of every rollout from loop-state arrays shaped [problem, sample, ...]
    (``rollout.engine_arrays``); ``asked_children[n]`` is problem n's requested
    child count (None: not conditioned)."""
    P, G = arrays["next_free"].shape
    if len(problems) != P:
        raise ValueError(f"{len(problems)} problems for {P} decoded prompts")
    asked = list(asked_children) if asked_children is not None else [None] * P
    if len(asked) != P:
        raise ValueError(f"{len(asked)} requested child counts for {P} prompts")
    results = sample_results(arrays, P)
    trees = to_thread_trees(EngineOutput(samples=results, steps=[]), tokenizer,
                            [p.to_dict() for p in problems])
    shape = (P, G)
    out = {k: np.zeros(shape, dtype) for k, dtype in (
        ("rewards", np.float32), ("correct", bool), ("well_formed", bool), ("total_tokens", np.int32),
        ("sequential_tokens", np.int32), ("num_threads", np.int32))}
    spawns: list[int] = []
    for n, problem in enumerate(problems):
        for k, result in enumerate(results[n]):
            written = trees[n * G + k].threads[0].written_text
            correct = verify(written, problem).ok
            well_formed = result.root.stop == "eos" and extract_answer(written) is not None
            out["rewards"][n, k] = rollout_reward(
                correct=correct, well_formed=well_formed, total_tokens=result.written_tokens,
                sequential_tokens=result.sequential_tokens, children=result.num_threads - 1,
                asked_children=asked[n], cfg=cfg)
            out["correct"][n, k] = correct
            out["well_formed"][n, k] = well_formed
            out["total_tokens"][n, k] = result.written_tokens
            out["sequential_tokens"][n, k] = result.sequential_tokens
            out["num_threads"][n, k] = result.num_threads
            spawns.extend(result.children_per_spawn)
    return Scored(children_per_spawn=spawns, trees=trees, **out)
