"""The inherit family's rollouts as tree sequences for the GRPO update.

In the inherit family a rollout trains as one tree sequence, as its trees do
in SFT (``apr_jax.data.tree_sequence``): the threads laid out depth-first at
the engine's positions, with the hidden ranges that let each token see what
it saw while decoding (its ancestors' context up to its fork and, in stitch
mode, the joined paths). A stitched parent's context is not a row of tokens
(its children's paths share one position range), so the thread-per-row
update of the message family cannot express it; the tree sequence can, and
a child's inherited prefix is in it once, not once per child.

``pack_tree_update`` builds each kept rollout's tree sequence from the
rollout's own token ids (no detokenize/retokenize round trip), takes each
trained token's sampling log-probability from the engine's row of its thread
at its position, and packs the sequences first-fit decreasing into
``rows_per_minibatch`` rows of ``row_len`` per minibatch (the SFT pipeline's
``place``, which moves each sequence's hidden ranges with it). A sequence
longer than a row is cut to it, as SFT cuts one; the count is returned.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from apr_jax.data.packing import pack_layout
from apr_jax.data.pipeline import cut, empty_rows, place
from apr_jax.data.tree_sequence import TreeSequence, tree_sequence
from apr_jax.decode.engine import EngineOutput, sample_results, to_thread_trees
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.rl.pack import PackedUpdateBatch


class TokenIdText:
    """An encoder whose "text" is a rollout's token ids, one word each: the
    protocol's reserved strings for their ids (so ``ThreadTree`` finds the
    spawn blocks) and decimal numbers for the rest. A decoded rollout thus
    becomes a tree sequence of exactly the ids the engine sampled."""

    def __init__(self, ids: ProtocolIds):
        self.bos_id, self.eos_id = ids.bos, ids.eos
        self.id_of = ids.reserved()
        self.word_of = {i: word for word, i in self.id_of.items()}

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.word_of.get(int(i), str(int(i))) for i in ids)

    def encode(self, text: str) -> list[int]:
        return [self.id_of[word] if word in self.id_of else int(word) for word in text.split()]


def rollout_tree_sequences(
    arrays: dict[str, np.ndarray], join: str, ids: ProtocolIds
) -> list[tuple[TreeSequence, np.ndarray]]:
    """Per rollout (problem-major, as ``engine_arrays`` orders them): its tree
    sequence and the sampling log-prob of each layout token (0 where untrained)."""
    num_prompts, samples = arrays["next_free"].shape
    codec = TokenIdText(ids)
    results = sample_results(arrays, num_prompts)
    trees = to_thread_trees(EngineOutput(samples=results, steps=[]), codec, [{}] * num_prompts)
    out = []
    for n, tree in enumerate(trees):
        seq = tree_sequence(tree, codec, join)
        p, g = divmod(n, samples)
        logp_SxL = arrays["logp"][p, g]
        old_T = np.where(seq.loss_mask_T > 0, logp_SxL[seq.thread_T, seq.positions_T], 0.0).astype(np.float32)
        out.append((seq, old_T))
    return out


def pack_tree_update(
    arrays: dict[str, np.ndarray],
    adv_N: np.ndarray,
    keep_N: np.ndarray | None,
    *,
    join: str,
    ids: ProtocolIds,
    minibatches: int,
    row_len: int,
) -> tuple[PackedUpdateBatch, int]:
    """(the update's rows, rollouts cut to ``row_len``). ``arrays`` are the
    rollout's loop-state arrays on the host (``rollout.engine_arrays``),
    ``ids`` the tokenizer's protocol ids,
    ``adv_N`` each rollout's advantage, ``keep_N`` the rollouts the update
    keeps (all when None). There are as many rows as rollouts, ``N /
    minibatches`` per minibatch (no rollout needs more than one row)."""
    sequences = rollout_tree_sequences(arrays, join, ids)
    N = len(sequences)
    adv_N = np.asarray(adv_N, np.float32).reshape(-1)
    if adv_N.shape != (N,):
        raise ValueError(f"adv_N has shape {adv_N.shape}; the batch has {N} rollouts")
    if N % minibatches:
        raise ValueError(f"{N} rollouts do not split into {minibatches} minibatches")
    keep_N = np.ones(N, bool) if keep_N is None else np.asarray(keep_N, bool)
    per_mb = N // minibatches
    rows = empty_rows(N, row_len, ids.pad, tree=True)
    rows.update(
        mask=np.zeros((N, row_len), np.float32),
        old_logp=np.zeros((N, row_len), np.float32),
        adv=np.zeros((N, row_len), np.float32),
        rollout=np.zeros((N, row_len), np.int32),
    )
    truncated = 0
    for m in range(minibatches):
        kept = [n for n in range(m * per_mb, (m + 1) * per_mb) if keep_N[n]]
        pieces = []
        for n in kept:
            seq, old_T = sequences[n]
            truncated += len(seq) > row_len
            piece = {
                "tokens": seq.tokens_T,
                "positions": seq.positions_T,
                "hidden_from": seq.hidden_from_TxR,
                "hidden_until": seq.hidden_until_TxR,
                "mask": seq.loss_mask_T.astype(np.float32),
                "old_logp": old_T,
                "adv": np.full(len(seq), adv_N[n], np.float32),
                "rollout": np.full(len(seq), n, np.int32),
            }
            pieces.append(cut(piece, row_len))
        layout = pack_layout([len(p["tokens"]) for p in pieces], row_len, first_fit_decreasing=True)
        for s, piece in enumerate(pieces):
            place(rows, m * per_mb + int(layout.row_S[s]), int(layout.offset_S[s]), int(layout.segment_S[s]), piece)
    return PackedUpdateBatch.from_rows(rows), truncated
