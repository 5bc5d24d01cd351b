"""Scripted decode models for engine tests: the KV cache is each lane's token
history, so a script can look at what a thread has been fed so far."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def record_history(
    hist_CxL: jax.Array, tokens_BxT: jax.Array, positions_BxT: jax.Array, lanes_B: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Write the fed tokens into their lanes' histories at their positions
    (padding, position < 0, is dropped); returns (the new histories, each
    fed row's whole history [B, L])."""
    B, T = tokens_BxT.shape
    lanes_BxT = jnp.broadcast_to(lanes_B[:, None], (B, T))
    hist_CxL = hist_CxL.at[lanes_BxT, jnp.where(positions_BxT < 0, hist_CxL.shape[1], positions_BxT)].set(
        tokens_BxT, mode="drop"
    )
    return hist_CxL, hist_CxL[lanes_B]
