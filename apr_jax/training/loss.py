"""Masked next-token cross-entropy over packed sequences."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def next_token_targets(
    tokens_BxL: jax.Array, loss_mask_BxL: jax.Array, segment_ids_BxL: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Targets and weights for predicting token i+1 from position i.

    A target counts when it is model-written (``loss_mask``) and lies in the
    same packed segment as the position predicting it.
    """
    targets_BxL = jnp.concatenate([tokens_BxL[:, 1:], jnp.zeros_like(tokens_BxL[:, :1])], axis=1)
    same_segment = segment_ids_BxL[:, 1:] == segment_ids_BxL[:, :-1]
    weights = (loss_mask_BxL[:, 1:] > 0) & same_segment & (segment_ids_BxL[:, 1:] > 0)
    weights_BxL = jnp.concatenate([weights, jnp.zeros_like(weights[:, :1])], axis=1)
    return targets_BxL, weights_BxL.astype(jnp.float32)


def token_cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
    """Per-position cross-entropy in float32."""
    logits = logits_BxLxV.astype(jnp.float32)
    log_z_BxL = jax.nn.logsumexp(logits, axis=-1)
    target_logit_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
    return log_z_BxL - target_logit_BxL


def masked_lm_loss(logits_BxLxV: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sum of token losses, number of counted tokens and number of correct
    argmax predictions, for a batch with ``tokens``/``loss_mask``/``segment_ids``."""
    targets_BxL, weights_BxL = next_token_targets(batch["tokens"], batch["loss_mask"], batch["segment_ids"])
    losses_BxL = token_cross_entropy(logits_BxLxV, targets_BxL)
    correct_BxL = (jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL).astype(jnp.float32)
    return ((losses_BxL * weights_BxL).sum(), weights_BxL.sum(), (correct_BxL * weights_BxL).sum())
