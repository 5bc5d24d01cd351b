"""The RL prompt stream: which problems each step samples, their conditioning
prefixes, and the sampler key, all restorable from a checkpoint.

Problems are visited in a seeded random order, epoch after epoch; the state
(epoch, position, key) is saved with every checkpoint through the same
``get_state``/``set_state`` interface the grain data iterators use, so a
resumed run samples exactly the prompts and keys the uninterrupted one would.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import jax
import numpy as np

from apr_jax.protocol import conditioning_prefix


class PromptStream:
    """``take(count)`` -> (problems, requested child counts); ``next_key()``."""

    def __init__(
        self,
        problems: Sequence[Any],
        *,
        seed: int,
        prompt: Callable[[Any, str], str],
        condition_kind: str | None = None,
        condition_values: Sequence[int] = (),
    ):
        """``prompt(problem, prefix)`` is the task's root prompt (``Task.prompt``)."""
        if not problems:
            raise ValueError("the RL prompt stream needs at least one problem")
        if condition_kind is not None and not condition_values:
            raise ValueError("conditioned prompts need at least one conditioning value")
        self.problems = list(problems)
        self.seed = int(seed)
        self.prompt = prompt
        self.condition_kind = condition_kind
        self.condition_values = [int(v) for v in condition_values]
        self.epoch = 0
        self.position = 0
        self._key_data = np.asarray(jax.random.key_data(jax.random.key(self.seed)))

    # ---- sampling ------------------------------------------------------------
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.problems))

    def take(self, count: int) -> tuple[list[Any], list[int | None]]:
        """The next ``count`` problems and, when conditioned, each one's
        requested value (a child count for APR, a token budget for SoS+)."""
        rng = np.random.default_rng([self.seed, 1, self.epoch, self.position])
        chosen = []
        while len(chosen) < count:
            if self.position >= len(self.problems):
                self.epoch, self.position = self.epoch + 1, 0
            order = self._order(self.epoch)
            take = min(count - len(chosen), len(self.problems) - self.position)
            chosen.extend(order[self.position : self.position + take].tolist())
            self.position += take
        values: list[int | None] = [None] * count
        if self.condition_kind is not None:
            values = [int(v) for v in rng.choice(self.condition_values, size=count)]
        return [self.problems[i] for i in chosen], values

    def prompt_text(self, problem: Any, value: int | None) -> str:
        prefix = "" if value is None else conditioning_prefix(self.condition_kind, value)
        return self.prompt(problem, prefix)

    def longest_prompt_texts(self) -> list[str]:
        """Every problem's prompt with the longest conditioning prefix (to size
        the rollout's static prompt width)."""
        value = max(self.condition_values, key=lambda v: len(str(v))) if self.condition_kind else None
        return [self.prompt_text(p, value) for p in self.problems]

    def next_key(self) -> jax.Array:
        """A fresh sampler key; the stream keeps (and checkpoints) the rest."""
        key, sub = jax.random.split(jax.random.wrap_key_data(self._key_data))
        self._key_data = np.asarray(jax.random.key_data(key))
        return sub

    # ---- checkpointing (grain iterator interface) ------------------------------
    def get_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_problems": len(self.problems),
            "key": self._key_data.tolist(),
        }

    def set_state(self, state: bytes | str | dict[str, Any]) -> None:
        if isinstance(state, (bytes, str)):
            state = json.loads(state)
        if state.get("num_problems") != len(self.problems):
            raise ValueError(
                f"saved prompt stream has {state.get('num_problems')} problems, this run has {len(self.problems)}"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._key_data = np.asarray(state["key"], dtype=self._key_data.dtype)

    def start_prefetch(self) -> None:
        """Part of the interface the checkpoint handler calls; nothing to prefetch."""
