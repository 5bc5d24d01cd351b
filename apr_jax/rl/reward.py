"""Rollout rewards, computed on the host from the rollouts' thread trees.

Each rollout's reward is a per-rollout part and a group part, the group being
the G rollouts of one prompt (arrays shaped [P, G])::

    reward = correct                                    (0 or ``credit``, below)
             - format_penalty     if the root did not end (EOS) with an answer line
             + acceleration_weight * min(ln(acceleration), acceleration_cap)   if correct
             + latency_bonus * (1 - sequential / total tokens)                 if correct
             - condition_penalty * min(1, |children - asked| / max(asked, 1))
                                  if the prompt asked for a child count
             - credit * token_cost * clip(total / mean_total - 1, -1, 1)       if correct
             + credit * latency_weight * clip(1 - sequential / mean_sequential, -1, 1)
                                                                               if correct

``correct`` is the task verifier's reward for the root's written text
(``credit``: 1 for a correct answer; a user checker may pay partial credit);
with ``require_eos`` (the default) only for a root that *finished*: it
stopped on EOS and wrote an answer line, so an answer followed by a run to
the token or context limit earns nothing (the reference study's verifier
accepts only a finished answer). ``total`` is every token the rollout's
threads wrote, ``sequential`` its critical path (``decode.metrics``).

Acceleration (total / critical-path tokens, 1 for a single thread) is paid
to correct rollouts only, so a wrong answer never profits from spawning
wide, on a log scale: ThreadWeaver's ``min(acceleration - 1, cap)`` with
its cap of 0.2 paid every APR rollout (accelerations of 2-3) the same
capped amount, invisible to GRPO's group-relative advantage. ``ln`` makes
the term differ within a group (0.69, 0.92, 1.10 for 2, 2.5, 3) and the
differences GRPO sees depend only on acceleration *ratios* (ln a - ln b =
ln(a / b)), so every doubling earns the same. The default cap, 2.0 (an
acceleration of e^2 = 7.4), is well above the 2-3x APR rollouts reach, so it
only bounds the term, at ``acceleration_weight * cap``. The term is >= 0.

The token cost and the latency term are relative within the group: they
compare a correct rollout with the mean over *the group's correct rollouts*
(``mean_total``, ``mean_sequential``); wrong rollouts pay and earn neither
and do not enter the means, and a group's only correct rollout gets 0 from
both. So of two correct answers to an easy problem, the one that spent
fewer tokens (one child, not four) earns more; a hard problem that only a
wide rollout solves pays it the full correctness reward. A mean of 0 (no
tokens) counts as a ratio of 1 (no term). Both terms scale with ``credit``.

Correctness dominates: each relative deviation is clipped to [-1, 1] and
``token_cost`` and ``latency_weight`` are each at most ``MAX_GROUP_WEIGHT``
(0.45), so the two group terms of a correct rollout sum to at least
``-credit * (token_cost + latency_weight) >= -0.9 * credit``, and its other
speed terms (acceleration, ``latency_bonus``) are >= 0: a correct rollout
earns at least ``0.1 * credit`` more than a wrong one with the same format
and condition penalties (the terms every rollout pays alike; with
``require_eos`` a correct rollout has no format penalty).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from apr_jax.decode.engine import EngineOutput, SampleResult, sample_results, to_thread_trees
from apr_jax.decode.metrics import acceleration
from apr_jax.rl.diagnostics import reward_term_stats, rollout_diagnostics
from apr_jax.rl.grpo import groups_with_signal
from apr_jax.tasks.base import Task

MAX_GROUP_WEIGHT = 0.45  # token_cost, latency_weight: both at most this keeps correctness first (above)


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    require_eos: bool = True  # correct only when the root finished (EOS after an answer line)
    format_penalty: float = 0.0
    acceleration_weight: float = 0.0
    acceleration_cap: float = 2.0  # on ln(acceleration)
    latency_bonus: float = 0.0
    condition_penalty: float = 0.0
    token_cost: float = 0.0  # group-relative, <= MAX_GROUP_WEIGHT
    latency_weight: float = 0.0  # group-relative, <= MAX_GROUP_WEIGHT

    def __post_init__(self):
        for name, most in (
            ("format_penalty", math.inf),
            ("acceleration_weight", math.inf),
            ("acceleration_cap", math.inf),
            ("latency_bonus", math.inf),
            ("condition_penalty", math.inf),
            ("token_cost", MAX_GROUP_WEIGHT),
            ("latency_weight", MAX_GROUP_WEIGHT),
        ):
            value = getattr(self, name)
            if not 0 <= value <= most:
                bound = (
                    "" if most == math.inf else (f" and <= {most} (so a correct rollout always outearns a wrong one)")
                )
                raise ValueError(f"{name} must be >= 0{bound}, got {value}")

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
    # The speed and cost terms that are on, [P, G] each, as added to the reward:
    # "acceleration", "token_cost" (<= 0 for a rollout below the group's mean), "latency".
    terms: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        return {
            "reward": float(self.rewards.mean()),
            "accuracy": float(self.correct.mean()),
            "well_formed": float(self.well_formed.mean()),
            "unfinished_correct": float((self.verified & ~self.well_formed).mean()),
            "groups_with_signal": float(groups_with_signal(self.rewards).mean()),
            **rollout_diagnostics(self.results, self.correct.reshape(-1)),
            **reward_term_stats(self.terms, self.correct),
        }


def acceleration_term(total_tokens: int, sequential_tokens: int, cfg: RewardConfig) -> float:
    """A correct rollout's acceleration term (module docstring): 0 for one thread."""
    if not cfg.acceleration_weight:
        return 0.0
    return cfg.acceleration_weight * min(math.log(acceleration(total_tokens, sequential_tokens)), cfg.acceleration_cap)


def rollout_reward(
    *,
    verified: bool,
    well_formed: bool,
    total_tokens: int,
    sequential_tokens: int,
    children: int,
    asked_children: int | None,
    cfg: RewardConfig,
    credit: float = 1.0,
) -> float:
    """One rollout's per-rollout reward (module docstring; the group terms
    are ``group_terms``') from the verifier's verdict on the root's text
    (accepted, with ``credit`` the verifier's reward) and whether the root
    finished."""
    correct = cfg.counts_as_correct(verified, well_formed)
    reward = credit if correct else 0.0
    if not well_formed:
        reward -= cfg.format_penalty
    if correct and cfg.acceleration_weight:
        reward += acceleration_term(total_tokens, sequential_tokens, cfg)
    if correct and cfg.latency_bonus and total_tokens > 0:
        reward += cfg.latency_bonus * (1.0 - sequential_tokens / total_tokens)
    if asked_children is not None and cfg.condition_penalty:
        miss = abs(children - asked_children) / max(asked_children, 1)
        reward -= cfg.condition_penalty * min(1.0, miss)
    return reward


def _to_group_mean(x_PxG: np.ndarray, correct_PxG: np.ndarray) -> np.ndarray:
    """``x`` over the mean of ``x`` on its group's correct rollouts, [P, G];
    1 where that mean is 0 or the group has no correct rollout."""
    count_Px1 = correct_PxG.sum(axis=1, keepdims=True)
    mean_Px1 = np.where(correct_PxG, x_PxG, 0.0).sum(axis=1, keepdims=True) / np.maximum(count_Px1, 1)
    return np.where(mean_Px1 > 0, x_PxG / np.where(mean_Px1 > 0, mean_Px1, 1.0), 1.0)


def group_terms(
    correct_PxG: np.ndarray,
    credit_PxG: np.ndarray,
    total_PxG: np.ndarray,
    sequential_PxG: np.ndarray,
    cfg: RewardConfig,
) -> dict[str, np.ndarray]:
    """The group-relative terms that are on, [P, G] float64 each, as added to
    the reward: ``token_cost`` (minus the cost) and ``latency`` (module
    docstring); 0 for rollouts not counted as correct."""
    correct_PxG = np.asarray(correct_PxG, bool)
    paid_PxG = np.where(correct_PxG, np.asarray(credit_PxG, np.float64), 0.0)
    out = {}
    if cfg.token_cost:
        ratio = _to_group_mean(np.asarray(total_PxG, np.float64), correct_PxG)
        out["token_cost"] = -paid_PxG * cfg.token_cost * np.clip(ratio - 1.0, -1.0, 1.0)
    if cfg.latency_weight:
        ratio = _to_group_mean(np.asarray(sequential_PxG, np.float64), correct_PxG)
        out["latency"] = paid_PxG * cfg.latency_weight * np.clip(1.0 - ratio, -1.0, 1.0)
    return out


def score_results(
    results: Sequence[Sequence[SampleResult]],
    verified: np.ndarray,
    well_formed: np.ndarray,
    credit: np.ndarray,
    cfg: RewardConfig,
    asked_children: Sequence[int | None] | None = None,
) -> Scored:
    """Rewards of the engine's ``results`` ([problem][sample]) from the
    verifier's verdicts, [P, G] each: ``verified`` (the root's text is
    accepted), ``well_formed`` (the root stopped on EOS with an answer line)
    and ``credit`` (the verifier's reward); ``asked_children[n]`` is problem
    n's requested child count (None: not conditioned). The per-rollout part
    comes from ``rollout_reward``, the group part from ``group_terms``, once
    per batch."""
    verified, well_formed = np.asarray(verified, bool), np.asarray(well_formed, bool)
    credit = np.asarray(credit, np.float64)
    P, G = verified.shape
    if len(results) != P or any(len(r) != G for r in results) or well_formed.shape != (P, G) or credit.shape != (P, G):
        raise ValueError(f"results and verdicts must be [P, G] = [{P}, {G}] each")
    asked = list(asked_children) if asked_children is not None else [None] * P
    if len(asked) != P:
        raise ValueError(f"{len(asked)} requested child counts for {P} prompts")
    correct = np.vectorize(cfg.counts_as_correct, otypes=[bool])(verified, well_formed)
    total = np.array([[r.written_tokens for r in row] for row in results], np.int64).reshape(P, G)
    sequential = np.array([[r.sequential_tokens for r in row] for row in results], np.int64).reshape(P, G)
    rewards = np.zeros((P, G), np.float64)
    for n in range(P):
        for k, result in enumerate(results[n]):
            rewards[n, k] = rollout_reward(
                verified=bool(verified[n, k]),
                well_formed=bool(well_formed[n, k]),
                total_tokens=int(total[n, k]),
                sequential_tokens=int(sequential[n, k]),
                children=result.num_threads - 1,
                asked_children=asked[n],
                cfg=cfg,
                credit=float(credit[n, k]),
            )
    terms = {}
    if cfg.acceleration_weight:
        terms["acceleration"] = np.array(
            [
                [
                    acceleration_term(int(total[n, k]), int(sequential[n, k]), cfg) if correct[n, k] else 0.0
                    for k in range(G)
                ]
                for n in range(P)
            ]
        )
    grouped = group_terms(correct, credit, total, sequential, cfg)
    for term in grouped.values():
        rewards = rewards + term
    terms.update(grouped)
    return Scored(
        rewards=rewards.astype(np.float32),
        correct=correct,
        verified=verified,
        well_formed=well_formed,
        results=[r for per_problem in results for r in per_problem],
        terms=terms,
    )


def score_rollouts(
    arrays: dict[str, np.ndarray],
    tokenizer: Any,
    problems: Sequence[Any],
    cfg: RewardConfig,
    asked_children: Sequence[int | None] | None = None,
    *,
    task: Task,
) -> Scored:
    """Rewards of every rollout from loop-state arrays shaped [problem, sample, ...]
    (``rollout.engine_arrays``), scored by ``task``'s verifier;
    ``asked_children[n]`` is problem n's requested child count (None: not
    conditioned)."""
    P, G = arrays["next_free"].shape
    if len(problems) != P:
        raise ValueError(f"{len(problems)} problems for {P} decoded prompts")
    results = sample_results(arrays, P)
    trees = to_thread_trees(EngineOutput(samples=results, steps=[]), tokenizer, [p.to_dict() for p in problems])
    verified, well_formed = np.zeros((P, G), bool), np.zeros((P, G), bool)
    credit = np.zeros((P, G), np.float64)
    for n, problem in enumerate(problems):
        for k, result in enumerate(results[n]):
            score = task.score(trees[n * G + k].threads[0].written_text, problem)
            verified[n, k] = score.reward > 0
            well_formed[n, k] = result.root.stop == "eos" and score.answer is not None
            credit[n, k] = score.reward
    return score_results(results, verified, well_formed, credit, cfg, asked_children)
