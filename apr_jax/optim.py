"""AdamW with linear warm-up, cosine decay and global-norm clipping."""

from __future__ import annotations

import jax
import optax

from apr_jax.run_config import TrainConfig


def learning_rate_schedule(train: TrainConfig) -> optax.Schedule:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to
    ``lr * min_lr_ratio`` at ``steps``."""
    warmup = min(train.warmup_steps, max(train.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=train.lr, warmup_steps=warmup,
        decay_steps=max(train.steps, warmup + 1), end_value=train.lr * train.min_lr_ratio)


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    """Clipping then AdamW; weight decay skips vectors (norm scales)."""
    return optax.chain(
        optax.clip_by_global_norm(train.grad_clip) if train.grad_clip > 0 else optax.identity(),
        optax.adamw(learning_rate_schedule(train), b1=train.b1, b2=train.b2,
                    weight_decay=train.weight_decay,
                    mask=_decay_mask),
    )


def _decay_mask(params):
    """Decay matrices only, not norm scales or other vectors."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) > 1, params)
