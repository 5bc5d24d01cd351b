"""What the tokens of packed rows attend to, as dense masks: packed segments
(``segment_mask_BxTxS``), and the tree sequences of the inherit family
(``apr_jax.data.tree_sequence``): their ids (``TreeMask``) and the mask they
stand for."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def segment_mask_BxTxS(segment_ids_BxT: jax.Array) -> jax.Array:
    """Token i sees token j iff j <= i, same segment, and segment_ids[i] != 0."""
    t = segment_ids_BxT.shape[1]
    causal_TxS = jnp.tril(jnp.ones((t, t), dtype=bool))
    same = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
    real = (segment_ids_BxT != 0)[:, :, None]
    return causal_TxS[None] & same & real


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TreeMask:
    """What the tokens of packed tree sequences attend to: same segment, not
    later, and the query's layout index outside each of the key's hidden
    ranges ``[hidden_from, hidden_until)`` (``apr_jax.data.tree_sequence``)."""

    segment_ids_BxT: jax.Array
    hidden_from_BxTxR: jax.Array
    hidden_until_BxTxR: jax.Array


def tree_mask_BxTxS(mask: TreeMask) -> jax.Array:
    """The boolean mask of a ``TreeMask`` (query ``t``, key ``s``)."""
    t = mask.segment_ids_BxT.shape[1]
    query_1xTx1x1 = jnp.arange(t, dtype=mask.hidden_from_BxTxR.dtype)[None, :, None, None]
    hidden_BxTxS = (
        (mask.hidden_from_BxTxR[:, None] <= query_1xTx1x1) & (query_1xTx1x1 < mask.hidden_until_BxTxR[:, None])
    ).any(-1)
    return segment_mask_BxTxS(mask.segment_ids_BxT) & ~hidden_BxTxS
