"""AdamW with linear warm-up, cosine decay and global-norm clipping.

The decay ends at the run's planned last step. That is ``train.steps``
unless a time-limited run planned fewer (``apr_jax.training.step_budget``): the jitted
steps then pass the plan as the traced ``schedule_steps`` argument, so a new
plan needs no recompile and the optimizer state keeps its structure.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
import optax

from apr_jax.config.sections import TrainConfig


class Schedule(Protocol):
    def __call__(self, count: jax.Array, schedule_steps: jax.Array | int | None = None) -> jax.Array:
        """The learning rate of update ``count`` (0-based) in a run planned to
        end at ``schedule_steps`` (None: ``train.steps``)."""


def learning_rate_schedule(train: TrainConfig) -> Schedule:
    """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then cosine decay
    to ``lr * min_lr_ratio`` at the planned last step."""
    peak, end = train.lr, train.lr * train.min_lr_ratio

    def learning_rate(count: jax.Array, schedule_steps: jax.Array | int | None = None) -> jax.Array:
        total = jnp.asarray(train.steps if schedule_steps is None else schedule_steps, jnp.float32)
        count = jnp.asarray(count, jnp.float32)
        warmup = jnp.minimum(float(train.warmup_steps), jnp.maximum(total - 1.0, 0.0))
        warming = peak * count / jnp.maximum(warmup, 1.0)
        progress = jnp.clip((count - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
        decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(count < warmup, warming, decayed)

    return learning_rate


def scale_by_planned_schedule(learning_rate: Schedule) -> optax.GradientTransformationExtraArgs:
    """``optax.scale_by_learning_rate`` for a ``Schedule``: the update's extra
    argument ``schedule_steps`` (optional) is the planned last step. Its state
    is optax's ``ScaleByScheduleState``, so checkpoints keep their layout."""

    def init(params: optax.Params) -> optax.ScaleByScheduleState:
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(
        updates: optax.Updates,
        state: optax.ScaleByScheduleState,
        params=None,
        *,
        schedule_steps: jax.Array | None = None,
        **extra_args,
    ):
        del params, extra_args
        step_size = -learning_rate(state.count, schedule_steps)
        updates = jax.tree.map(lambda g: jnp.asarray(step_size, dtype=g.dtype) * g, updates)
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(train: TrainConfig) -> optax.GradientTransformationExtraArgs:
    """Clipping then AdamW; weight decay skips vectors (norm scales). Its
    ``update`` takes ``schedule_steps`` (see the module docstring)."""
    return optax.chain(
        optax.clip_by_global_norm(train.grad_clip) if train.grad_clip > 0 else optax.identity(),
        optax.chain(  # optax.adamw's three parts, with the planned schedule last
            optax.scale_by_adam(b1=train.b1, b2=train.b2),
            optax.add_decayed_weights(train.weight_decay, _decay_mask),
            scale_by_planned_schedule(learning_rate_schedule(train)),
        ),
    )


def _decay_mask(params):
    """Decay matrices only, not norm scales or other vectors."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) > 1, params)
