"""What an RL step's rollouts did, and warnings read off the logged rows.

``rollout_diagnostics`` turns one step's engine results into the per-step
means logged with the reward: how often and how wide the rollouts spawn, how
deep they nest, total and critical-path tokens, the acceleration (total /
critical path), accuracy split by whether the rollout spawned, and every
engine limit hit (``limits/NAME``, mean count per rollout).
``reward_term_stats`` adds the reward's speed and cost terms that are on
(``apr_jax.rl.reward``): ``reward/NAME``, the term's mean over all rollouts,
and ``reward/NAME_spread``, how much it differs between the correct rollouts
of a group, the only difference GRPO's group-relative advantage can see: the
standard deviation (over G, not G - 1) of the term over each group's correct
rollouts, averaged over the groups with at least two of them (left out when
no group has two). A term that pays every correct rollout the same has
spread 0.

``TrendWatch`` reads the logged rows in order and returns warning lines for
the two failures RL on parallel reasoners is known for:

- *spawn collapse*: the share of rollouts that spawn falls below half its
  first logged value (said once each time it happens);
- *reward hacking*: at a held-out evaluation, the mean training reward since
  the previous evaluation is above the mean over the interval before it
  while the held-out accuracy fell below the previous evaluation's by more
  than one standard error of the difference of two evaluations of that many
  problems, ``sqrt(2 p (1 - p) / n)`` (about 7 points at 100 problems and
  55%), so evaluation noise alone rarely warns.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from apr_jax.decode.engine import SampleResult
from apr_jax.decode.metrics import acceleration


def rollout_diagnostics(results: Sequence[SampleResult], correct: Sequence[bool]) -> dict[str, float]:
    """Per-step statistics of ``results`` (one per rollout) with their
    rewarded correctness; the split accuracies appear only when rollouts of
    that kind exist."""
    if len(results) != len(correct) or not results:
        raise ValueError(f"{len(results)} rollouts for {len(correct)} correctness flags")
    correct_N = np.asarray(correct, bool)
    spawned_N = np.array([r.num_threads > 1 for r in results])
    spawns = [c for r in results for c in r.children_per_spawn]
    out = {
        "spawned": float(spawned_N.mean()),
        "children_per_spawn": float(np.mean(spawns)) if spawns else 0.0,
        "spawn_rounds": float(np.mean([len(r.children_per_spawn) for r in results])),
        "threads": float(np.mean([r.num_threads for r in results])),
        "depth": float(np.mean([max(t.depth for t in r.threads) for r in results])),
        "max_depth": float(max(t.depth for r in results for t in r.threads)),
        "total_tokens": float(np.mean([r.written_tokens for r in results])),
        "sequential_tokens": float(np.mean([r.sequential_tokens for r in results])),
        "acceleration": float(np.mean([acceleration(r.written_tokens, r.sequential_tokens) for r in results])),
    }
    if spawned_N.any():
        out["accuracy_spawned"] = float(correct_N[spawned_N].mean())
    if (~spawned_N).any():
        out["accuracy_not_spawned"] = float(correct_N[~spawned_N].mean())
    for name in results[0].limits_hit:
        out[f"limits/{name}"] = float(np.mean([r.limits_hit[name] for r in results]))
    return out


def term_spread(term_PxG: np.ndarray, correct_PxG: np.ndarray) -> float | None:
    """The mean over groups with at least two correct rollouts of the
    standard deviation of ``term`` over the group's correct rollouts (module
    docstring); None when no group has two."""
    term_PxG, correct_PxG = np.asarray(term_PxG, np.float64), np.asarray(correct_PxG, bool)
    if term_PxG.shape != correct_PxG.shape or term_PxG.ndim != 2:
        raise ValueError(f"term {term_PxG.shape} and correctness {correct_PxG.shape} must be the same [P, G]")
    stds = [float(np.std(term[counted])) for term, counted in zip(term_PxG, correct_PxG) if counted.sum() >= 2]
    return float(np.mean(stds)) if stds else None


def reward_term_stats(terms: dict[str, np.ndarray], correct_PxG: np.ndarray) -> dict[str, float]:
    """``reward/NAME`` and ``reward/NAME_spread`` of each reward term
    (``Scored.terms``, [P, G] each; module docstring)."""
    out = {}
    for name, term_PxG in terms.items():
        out[f"reward/{name}"] = float(np.mean(term_PxG))
        spread = term_spread(term_PxG, correct_PxG)
        if spread is not None:
            out[f"reward/{name}_spread"] = spread
    return out


class TrendWatch:
    """Warning lines from the logged rows (module docstring), fed in step order."""

    def __init__(self, eval_problems: int = 0) -> None:
        """``eval_problems``: problems per held-out evaluation (0: unknown,
        so any fall in accuracy counts)."""
        self.eval_problems = eval_problems
        self.first_spawned: tuple[int, float] | None = None
        self.collapsed = False
        self.rewards: list[tuple[int, float]] = []  # logged since the last evaluation
        self.last_eval: tuple[int, float | None, float] | None = None  # step, mean reward, accuracy

    def observe(self, step: int, row: dict[str, Any]) -> list[str]:
        warnings = []
        if "spawned" in row:
            spawned = float(row["spawned"])
            if self.first_spawned is None:
                self.first_spawned = (step, spawned)
            else:
                first_step, first = self.first_spawned
                collapsed = spawned < first / 2
                if collapsed and not self.collapsed:
                    warnings.append(
                        f"spawn collapse at step {step}: {spawned:.1%} of rollouts spawn, less than "
                        f"half the {first:.1%} of step {first_step}"
                    )
                self.collapsed = collapsed
        if "reward" in row:
            self.rewards.append((step, float(row["reward"])))
        if "eval_accuracy" in row:
            accuracy = float(row["eval_accuracy"])
            reward = float(np.mean([r for _, r in self.rewards])) if self.rewards else None
            if self.last_eval is not None and reward is not None and self.last_eval[1] is not None:
                last_step, last_reward, last_accuracy = self.last_eval
                if reward > last_reward and last_accuracy - accuracy > self.noise(accuracy, last_accuracy):
                    warnings.append(
                        f"reward hacking? at step {step} the training reward rose to {reward:.3f} "
                        f"(mean since step {last_step}) from {last_reward:.3f} while held-out "
                        f"accuracy fell from {last_accuracy:.1%} to {accuracy:.1%}"
                    )
            self.last_eval = (step, reward, accuracy)
            self.rewards = []
        return warnings

    def noise(self, accuracy: float, other: float) -> float:
        """One standard error of the difference between two held-out
        accuracies measured on ``eval_problems`` problems each (0 when unknown)."""
        if self.eval_problems <= 0:
            return 0.0
        p = (accuracy + other) / 2
        return float(np.sqrt(2 * p * (1 - p) / self.eval_problems))
