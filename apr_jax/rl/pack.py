"""The threads of a rollout batch packed into rows for the GRPO update.

The rollout holds one thread per ``max_len`` row, mostly padding. On the
host, ``pack_update_batch`` places each minibatch's threads (whole rollouts,
as the unpacked update groups them) first-fit decreasing into rows of the
same length (``apr_jax.data.packing``, the layout the SFT pipeline uses),
with segment ids and positions restarting at 0 per thread, and carries the
per-token loss mask, sampling log-probs, advantage and rollout id along.

Shapes are static: every minibatch gets ``R / minibatches`` packed rows, the
row count of the unpacked update, which holds its threads whatever they are
(no thread is longer than a row, so packing never needs more rows than there
are threads). The threads fill the first rows; the update skips the
microbatches left empty, so its forwards compute about as many rows as the
tokens need, rounded up to a microbatch (``train.grad_accum`` sets its size).
Array names end in their shape (legend: ``apr_jax.decode``'s docstring).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from apr_jax.data.packing import gather_index, pack_layout
from apr_jax.data.pipeline import TREE_FEATURES
from apr_jax.decode import engine_loop


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedUpdateBatch:
    """Packed update rows, ``R`` rows of ``L`` tokens grouped by minibatch
    (``R / minibatches`` rows each, threads first)."""

    tokens_RxL: np.ndarray  # int32, 0 on padding
    positions_RxL: np.ndarray  # int32: index of the token in its thread
    segment_ids_RxL: np.ndarray  # int32: 1, 2, ... per thread in a row; 0 on padding
    mask_RxL: np.ndarray  # float32: model-written tokens of kept threads
    old_logp_RxL: np.ndarray  # float32: sampling-time log-probs
    adv_RxL: np.ndarray  # float32: the advantage of the token's rollout
    rollout_RxL: np.ndarray  # int32: the token's rollout (0 on padding)
    valid_R: np.ndarray  # bool: the row holds a thread
    # Tree sequences (the inherit family, ``apr_jax.rl.tree_pack``): each key's hidden ranges.
    hidden_from_RxLxM: np.ndarray | None = None
    hidden_until_RxLxM: np.ndarray | None = None

    @classmethod
    def from_rows(cls, rows: dict[str, np.ndarray]) -> "PackedUpdateBatch":
        """From packed rows keyed by field name without the shape suffix
        (``tokens``, ``positions``, ``segment_ids``, ``mask``, ``old_logp``,
        ``adv``, ``rollout``; ``hidden_from``/``hidden_until`` for trees);
        a row is valid when it holds any token."""
        tree = {f"{name}_RxLxM": rows[name] for name in TREE_FEATURES if name in rows}
        return cls(
            tokens_RxL=rows["tokens"],
            positions_RxL=rows["positions"],
            segment_ids_RxL=rows["segment_ids"],
            mask_RxL=rows["mask"],
            old_logp_RxL=rows["old_logp"],
            adv_RxL=rows["adv"],
            rollout_RxL=rows["rollout"],
            valid_R=(rows["segment_ids"] > 0).any(axis=1),
            **tree,
        )


def pack_update_batch(
    batch: Any, adv_N: np.ndarray, keep_N: np.ndarray | None, *, minibatches: int
) -> PackedUpdateBatch:
    """Packs the valid threads of ``batch`` (a ``RolloutBatch`` on the host)
    whose rollout ``keep_N`` keeps (all when None), minibatch by minibatch.
    ``adv_N`` is each rollout's advantage."""
    tokens_RxL = np.asarray(batch.tokens_RxL)
    R, L = tokens_RxL.shape
    N = np.asarray(batch.threads_N).shape[0]
    adv_N = np.asarray(adv_N, np.float32).reshape(-1)
    if adv_N.shape != (N,):
        raise ValueError(f"adv_N has shape {adv_N.shape}; the batch has {N} rollouts")
    if N % minibatches or R % minibatches:
        raise ValueError(f"{N} rollouts ({R} rows) do not split into {minibatches} minibatches")
    rollout_R = np.asarray(batch.rollout_R)
    length_R = np.asarray(batch.length_R)
    keep_R = np.asarray(batch.valid_R, bool) & (length_R > 0)
    if keep_N is not None:
        keep_R &= np.asarray(keep_N, bool)[rollout_R]
    model_RxL = np.asarray(batch.role_RxL) == engine_loop.ROLE_MODEL
    logp_RxL = np.asarray(batch.logp_RxL, np.float32)
    rows_per_mb = R // minibatches
    minibatch_R = rollout_R // (N // minibatches)

    out = {
        "tokens": np.zeros((R, L), np.int32),
        "positions": np.zeros((R, L), np.int32),
        "segment_ids": np.zeros((R, L), np.int32),
        "mask": np.zeros((R, L), np.float32),
        "old_logp": np.zeros((R, L), np.float32),
        "adv": np.zeros((R, L), np.float32),
        "rollout": np.zeros((R, L), np.int32),
    }
    for m in range(minibatches):
        threads_M = np.flatnonzero(keep_R & (minibatch_R == m))
        lengths_M = length_R[threads_M]
        layout = pack_layout(lengths_M, L, first_fit_decreasing=True)
        source_BxL, column_BxL, segment_BxL = gather_index(layout, lengths_M, L)
        real = source_BxL >= 0
        row_BxL = threads_M[np.where(real, source_BxL, 0)]  # the rollout row each slot reads
        first = m * rows_per_mb
        rows = slice(first, first + layout.num_rows)
        out["segment_ids"][rows] = segment_BxL
        out["positions"][rows] = column_BxL
        gathered = {"tokens": tokens_RxL, "mask": model_RxL, "old_logp": logp_RxL}
        for name, value_RxL in gathered.items():
            out[name][rows] = np.where(real, value_RxL[row_BxL, column_BxL], 0)
        out["rollout"][rows] = np.where(real, rollout_R[row_BxL], 0)
        out["adv"][rows] = np.where(real, adv_N[rollout_R[row_BxL]], 0.0)
    return PackedUpdateBatch.from_rows(out)
