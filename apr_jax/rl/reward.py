"""Rollout rewards, computed on the host from the rollouts' thread trees.

    reward = correct                                   (0 or 1, below)
             - format_penalty     if the root did not end (EOS) with an answer line
             + acceleration_weight * min(acceleration - 1, acceleration_cap)   if correct
             + latency_bonus * (1 - sequential / total tokens)                 if correct
             - condition_penalty * min(1, |children - asked| / max(asked, 1))
                                  if the prompt asked for a child count

``correct`` is the task verifier's reward for the root's written text (1 for a
correct answer; a user checker may pay partial credit); with
``require_eos`` (the default) only for a root that *finished*: it stopped on
EOS and wrote an answer line, so an answer followed by a run to the token or
context limit earns nothing (the reference study's verifier accepts only a
finished answer).

The acceleration term is ThreadWeaver's: acceleration = total tokens /
critical-path tokens (1 for a single thread), its gain over 1 capped, paid
only to correct rollouts (as ThreadWeaver does), so a wrong answer never
profits from spawning wide; with its weight 0.5 and cap 0.2 a correct
answer earns at most 0.1 more for speed, so speed never outweighs
correctness. The latency term
pays a correct rollout for the share of its tokens that ran in parallel:
0 for a single thread, approaching the full bonus when the critical path is
short compared with all tokens written.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from apr_jax.decode.engine import EngineOutput, SampleResult, sample_results, to_thread_trees
from apr_jax.decode.metrics import acceleration
from apr_jax.rl.diagnostics import rollout_diagnostics
from apr_jax.rl.grpo import groups_with_signal
from apr_jax.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    require_eos: bool = True  # correct only when the root finished (EOS after an answer line)
    format_penalty: float = 0.0
    acceleration_weight: float = 0.0
    acceleration_cap: float = 0.2
    latency_bonus: float = 0.0
    condition_penalty: float = 0.0

    def __post_init__(self):
        for name in ("format_penalty", "acceleration_weight", "acceleration_cap", "latency_bonus",
                     "condition_penalty"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def counts_as_correct(self, verified: bool, well_formed: bool) -> bool:
        """The reward's correctness: the verifier's verdict, of a finished root
        only under ``require_eos``."""
        return verified and (well_formed or not self.require_eos)


@dataclasses.dataclass
class Scored:
    """Per-rollout rewards and verdicts, [P, G] each, and the engine's results."""

    rewards: np.ndarray
    correct: np.ndarray  # counted as correct by the reward (finished, with require_eos)
    verified: np.ndarray  # the verifier accepts the root's text, finished or not
    well_formed: np.ndarray  # the root stopped on EOS with an answer line
    results: list[SampleResult]  # problem-major

    def summary(self) -> dict[str, float]:
        return {
            "reward": float(self.rewards.mean()),
            "accuracy": float(self.correct.mean()),
            "well_formed": float(self.well_formed.mean()),
            "unfinished_correct": float((self.verified & ~self.well_formed).mean()),
            "groups_with_signal": float(groups_with_signal(self.rewards).mean()),
            **rollout_diagnostics(self.results, self.correct.reshape(-1)),
        }


def rollout_reward(*, verified: bool, well_formed: bool, total_tokens: int, sequential_tokens: int,
                   children: int, asked_children: int | None, cfg: RewardConfig,
                   credit: float = 1.0) -> float:
    """One rollout's reward (module docstring) from the verifier's verdict on
    the root's text (accepted, with ``credit`` the verifier's reward) and
    whether the root finished."""
    correct = cfg.counts_as_correct(verified, well_formed)
    reward = credit if correct else 0.0
    if not well_formed:
        reward -= cfg.format_penalty
    if correct and cfg.acceleration_weight:
        gain = acceleration(total_tokens, sequential_tokens) - 1.0
        reward += cfg.acceleration_weight * min(gain, cfg.acceleration_cap)
    if correct and cfg.latency_bonus and total_tokens > 0:
        reward += cfg.latency_bonus * (1.0 - sequential_tokens / total_tokens)
    if asked_children is not None and cfg.condition_penalty:
        miss = abs(children - asked_children) / max(asked_children, 1)
        reward -= cfg.condition_penalty * min(1.0, miss)
    return reward


def score_rollouts(arrays: dict[str, np.ndarray], tokenizer: Any, problems: Sequence[Any],
                   cfg: RewardConfig, asked_children: Sequence[int | None] | None = None, *,
                   task: Task) -> Scored:
    """Rewards of every rollout from loop-state arrays shaped [problem, sample, ...]
    (``rollout.engine_arrays``), scored by ``task``'s verifier;
    ``asked_children[n]`` is problem n's requested child count (None: not
    conditioned)."""
    P, G = arrays["next_free"].shape
    if len(problems) != P:
        raise ValueError(f"{len(problems)} problems for {P} decoded prompts")
    asked = list(asked_children) if asked_children is not None else [None] * P
    if len(asked) != P:
        raise ValueError(f"{len(asked)} requested child counts for {P} prompts")
    results = sample_results(arrays, P)
    trees = to_thread_trees(EngineOutput(samples=results, steps=[]), tokenizer,
                            [p.to_dict() for p in problems])
    out = {k: np.zeros((P, G), dtype) for k, dtype in (
        ("rewards", np.float32), ("correct", bool), ("verified", bool), ("well_formed", bool))}
    for n, problem in enumerate(problems):
        for k, result in enumerate(results[n]):
            score = task.score(trees[n * G + k].threads[0].written_text, problem)
            verified = score.reward > 0
            well_formed = result.root.stop == "eos" and score.answer is not None
            out["rewards"][n, k] = rollout_reward(
                verified=verified, well_formed=well_formed, total_tokens=result.written_tokens,
                sequential_tokens=result.sequential_tokens, children=result.num_threads - 1,
                asked_children=asked[n], cfg=cfg, credit=score.reward)
            out["correct"][n, k] = cfg.counts_as_correct(verified, well_formed)
            out["verified"][n, k] = verified
            out["well_formed"][n, k] = well_formed
    return Scored(results=[r for per_problem in results for r in per_problem], **out)
