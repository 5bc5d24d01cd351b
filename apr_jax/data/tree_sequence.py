"""A thread tree of the inherit family as one training sequence.

In the inherit family (``protocol.CONTEXTS``) a child sees its parent's
context up to the fork, so a whole tree trains as one sequence instead of
one row per thread. The layout is depth-first: a thread's tokens in order
and, at each of its join segments, first every child of that spawn (each
with its whole subtree), then the join's own tokens. The root starts with
BOS and ends with EOS when it stopped on EOS.

Positions are the engine's: a child starts at the position after its
parent's spawn block, siblings share that range; a stitched parent resumes
after its longest path, a linear parent right after the spawn block (it
reads the paths again as the join's text).

What a token may attend to is given by small per-token ids, never by a
``T x T`` mask: a key ``k`` is hidden from the queries at layout index
``q`` in any of its ranges ``[hidden_from[k, r], hidden_until[k, r])``, and
otherwise seen when ``k <= q`` (same packed tree). The ranges say:

- stitch: a key of thread B is hidden from every later sibling's subtree of
  B and of each of B's ancestors below the root (one range per depth), so a
  child sees its ancestors' context up to its fork (joined paths included)
  and a parent after a join sees its children;
- linear: a key of thread B is seen only inside B's own subtree.

``thread_rows`` writes the same tree as one row per thread, each with its
whole context (the tokens its last token sees, with their hidden ranges
carried over so stitched sibling paths in it stay apart, as the engine
computed them) and the loss only on the thread's own tokens: the form whose
summed loss the tree sequence equals.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from apr_jax import protocol
from apr_jax.threads import Encoder, ThreadTree

MASK_RANGES = 4  # hidden ranges per token: the deepest stitched tree a sequence holds
NEVER = 2**30  # an open range end: past every layout index


@dataclasses.dataclass(frozen=True)
class TreeSequence:
    """One tree's tokens in layout order, with what the model needs to train on them."""

    tokens_T: np.ndarray  # int32
    loss_mask_T: np.ndarray  # int32 0/1: model-written tokens
    positions_T: np.ndarray  # int32: the engine's positions
    thread_T: np.ndarray  # int32: the thread each token belongs to
    hidden_from_TxR: np.ndarray  # int32 layout indices (module docstring)
    hidden_until_TxR: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.tokens_T)

    def sees_Q_K(self) -> np.ndarray:
        """bool ``[T, T]``: query ``q`` attends to key ``k`` (small trees only:
        tests and ``thread_rows``)."""
        t = len(self)
        q_Qx1x1 = np.arange(t)[:, None, None]
        hidden_QxK = ((self.hidden_from_TxR[None] <= q_Qx1x1) & (q_Qx1x1 < self.hidden_until_TxR[None])).any(-1)
        return np.tril(np.ones((t, t), bool)) & ~hidden_QxK


def tree_sequence(tree: ThreadTree, tokenizer: Encoder, join: str) -> TreeSequence:
    """``tree`` (its joins as ``tree.with_context("inherit", join)`` writes
    them) laid out as one sequence (module docstring)."""
    if join not in protocol.JOINS:
        raise ValueError(f"join {join!r} is not one of {protocol.JOINS}")
    tokens: list[int] = []
    loss: list[int] = []
    positions: list[int] = []
    owner: list[int] = []
    end = np.zeros(len(tree.threads), np.int64)  # one past each thread's subtree in the layout

    def emit(ids: list[int], trained: bool, thread: int, position: int) -> int:
        tokens.extend(ids)
        loss.extend([int(trained)] * len(ids))
        positions.extend(range(position, position + len(ids)))
        owner.extend([thread] * len(ids))
        return position + len(ids)

    def visit(index: int, position: int) -> int:
        """Lays out thread ``index``'s subtree from ``position``; returns the
        position after the thread's last token."""
        thread = tree.threads[index]
        if index == 0:
            position = emit([tokenizer.bos_id], False, 0, position)
        groups = iter(tree.spawn_groups(index))
        for segment in thread.segments:
            if segment.role == "join":
                ends = [visit(child, position) for child in next(groups, [])]
                if join == "stitch" and ends:
                    position = max(ends)
            ids = tokenizer.encode(segment.text)
            if segment.role != "model" and not ids:
                raise ValueError(f"thread {index} has an empty {segment.role} segment: a thread switch needs one")
            position = emit(ids, segment.role == "model", index, position)
        for group in groups:  # spawned, never joined (cut off by a limit)
            for child in group:
                visit(child, position)
        if thread.stop == "eos":
            position = emit([tokenizer.eos_id], True, index, position)
        end[index] = len(tokens)
        return position

    visit(0, 0)
    thread_T = np.asarray(owner, np.int32)
    ranges = _hidden_ranges(tree, end, join)
    return TreeSequence(
        tokens_T=np.asarray(tokens, np.int32),
        loss_mask_T=np.asarray(loss, np.int32),
        positions_T=np.asarray(positions, np.int32),
        thread_T=thread_T,
        hidden_from_TxR=ranges[thread_T, :, 0],
        hidden_until_TxR=ranges[thread_T, :, 1],
    )


def _hidden_ranges(tree: ThreadTree, end: np.ndarray, join: str) -> np.ndarray:
    """int32 ``[threads, MASK_RANGES, 2]``: each thread's hidden ranges (empty: ``[0, 0)``)."""
    ranges = np.zeros((len(tree.threads), MASK_RANGES, 2), np.int64)
    group_end = np.zeros(len(tree.threads), np.int64)  # one past the subtree of a thread's last sibling in its spawn
    for index in range(len(tree.threads)):
        for group in tree.spawn_groups(index):
            group_end[group] = end[group[-1]]
    for index in range(1, len(tree.threads)):
        if join == "linear":
            ranges[index, 0] = end[index], NEVER
            continue
        chain, node = [], index
        while tree.threads[node].parent >= 0:
            chain.append((end[node], group_end[node]))
            node = tree.threads[node].parent
        if len(chain) > MASK_RANGES:
            raise ValueError(
                f"thread {index} is nested {len(chain)} deep; a stitched tree sequence holds {MASK_RANGES}"
            )
        ranges[index, : len(chain)] = chain
    return ranges.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ThreadRow:
    """One thread with its whole context, as the engine feeds it: layout
    indices of the tokens it sees, and the loss only on its own tokens."""

    thread: int
    index_S: np.ndarray  # int32 layout indices into the TreeSequence, in order
    tokens_S: np.ndarray
    positions_S: np.ndarray
    loss_mask_S: np.ndarray
    hidden_from_SxR: np.ndarray  # the sequence's hidden ranges, as indices into this row
    hidden_until_SxR: np.ndarray


def thread_rows(seq: TreeSequence) -> list[ThreadRow]:
    """One ``ThreadRow`` per thread (module docstring)."""
    sees_QxK = seq.sees_Q_K()
    rows = []
    for thread in range(int(seq.thread_T.max()) + 1):
        own_T = seq.thread_T == thread
        last = int(np.flatnonzero(own_T)[-1])
        index_S = np.flatnonzero(sees_QxK[last]).astype(np.int32)
        from_SxR, until_SxR = (
            np.where(x[index_S] >= NEVER, NEVER, np.searchsorted(index_S, x[index_S])).astype(np.int32)
            for x in (seq.hidden_from_TxR, seq.hidden_until_TxR)
        )
        rows.append(
            ThreadRow(
                thread=thread,
                index_S=index_S,
                tokens_S=seq.tokens_T[index_S],
                positions_S=seq.positions_T[index_S],
                loss_mask_S=seq.loss_mask_T[index_S] * own_T[index_S],
                hidden_from_SxR=from_SxR,
                hidden_until_SxR=until_SxR,
            )
        )
    return rows
