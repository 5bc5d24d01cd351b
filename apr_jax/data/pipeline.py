"""grain input pipeline: thread trees -> packed, batched training rows.

    split's trees (read back from ArrayRecord, or generated from the
    problems: ``data.traces``) -> global shuffle (per-epoch seed) -> this
    process's shard -> repeat -> tokenize (one sequence per thread, or one per tree)
    [-> ``data.pipeline_workers`` processes] -> truncate to L -> pack (or pad)
    rows -> batches of B rows

Every batch is a dict of int32 [B, L] arrays:

- ``tokens``: token ids, ``pad_id`` (0) on padding.
- ``loss_mask``: 1 where the token is model-written (the trainer predicts
  ``tokens[i]`` from ``tokens[:i]`` and shifts itself); 0 on prompts, join
  blocks, BOS and padding.
- ``segment_ids``: 1, 2, 3, ... for the sequences packed into a row; 0 on
  padding.
- ``positions``: restart at 0 in every segment; 0 on padding.

With ``data.context="inherit"`` each tree trains as one tree sequence
(``apr_jax.data.tree_sequence``): positions are the engine's, and two more
int32 [B, L, MASK_RANGES] arrays, ``hidden_from``/``hidden_until``, give
each key's hidden ranges as indices into its row.

Packing is next-fit in stream order (``apr_jax.data.packing``): a sequence
that does not fit in the current row starts the next one. The iterator's state is the upstream state
before the tree being packed plus how many of its sequences are already
placed, so a restored iterator yields exactly the batches the original
would have yielded next. Worker processes take every W-th tree and their
output is interleaved back in order, so the batches do not depend on
``data.pipeline_workers``.
"""

from __future__ import annotations

from typing import Any, Sequence

import grain
import numpy as np

from apr_jax.config.sections import RunConfig
from apr_jax.data.build import DatasetInfo, open_split
from apr_jax.data.packing import pack_layout
from apr_jax.data.tokenizer import Tokenizer, load_tokenizer
from apr_jax.data.tree_sequence import MASK_RANGES, NEVER, tree_sequence
from apr_jax.threads import ThreadTree

FEATURES = ("tokens", "loss_mask", "segment_ids", "positions")
TREE_FEATURES = ("hidden_from", "hidden_until")  # inherit family: [B, L, MASK_RANGES] each
SPLITS = ("train", "validation", "test")

# One sequence to place: ``tokens``, ``loss_mask`` and ``positions`` (int32
# [n]), plus ``hidden_from``/``hidden_until`` (int32 [n, MASK_RANGES],
# layout indices inside the sequence) for a tree sequence.
Piece = dict[str, np.ndarray]


class TokenizeTree:
    """Tree -> the pieces it trains as: one per thread in the message
    family, one tree sequence in the inherit family (``data.context``).

    Picklable: the tokenizer loads sentencepiece lazily in each worker.
    """

    def __init__(self, tokenizer: Tokenizer, context: str = "message", join: str = "stitch"):
        self.tokenizer, self.context, self.join = tokenizer, context, join

    def __call__(self, tree: ThreadTree) -> list[Piece]:
        if self.context == "message":
            return [
                {"tokens": s.tokens, "loss_mask": s.loss_mask, "positions": np.arange(len(s.tokens), dtype=np.int32)}
                for s in tree.to_sequences(self.tokenizer)
            ]
        seq = tree_sequence(tree.with_context(self.context, self.join), self.tokenizer, self.join)
        return [
            {
                "tokens": seq.tokens_T,
                "loss_mask": seq.loss_mask_T,
                "positions": seq.positions_T,
                "hidden_from": seq.hidden_from_TxR,
                "hidden_until": seq.hidden_until_TxR,
            }
        ]


def empty_rows(num_rows: int, seq_len: int, pad_id: int = 0, tree: bool = False) -> dict[str, np.ndarray]:
    """Padding rows of every feature (``TREE_FEATURES`` too when ``tree``)."""
    rows = {name: np.zeros((num_rows, seq_len), np.int32) for name in FEATURES}
    rows["tokens"][:] = pad_id
    if tree:
        rows.update({name: np.zeros((num_rows, seq_len, MASK_RANGES), np.int32) for name in TREE_FEATURES})
    return rows


def cut(piece: Piece, seq_len: int) -> Piece:
    """``piece`` truncated to ``seq_len`` tokens."""
    return {name: x[:seq_len] for name, x in piece.items()}


def place(rows: dict[str, np.ndarray], row: int, offset: int, segment_id: int, piece: Piece) -> None:
    """Write one piece into ``rows[.., row, offset:offset+n]`` (a tree
    sequence's hidden ranges move with it)."""
    end = offset + len(piece["tokens"])
    for name, x in piece.items():
        if name in TREE_FEATURES:
            x = np.where(x >= NEVER, NEVER, x + offset)
        rows[name][row, offset:end] = x
    rows["segment_ids"][row, offset:end] = segment_id


def pack_sequences(
    pieces: Sequence[Piece], seq_len: int, *, packing: bool, pad_id: int = 0
) -> tuple[dict[str, np.ndarray], int]:
    """Packs ``pieces`` (in order, next-fit) into as many rows as needed.

    Returns (rows dict of int32 [R, seq_len, ...], number of truncated pieces).
    A reference implementation of what the iterator does batch by batch.
    """
    truncated = sum(len(p["tokens"]) > seq_len for p in pieces)
    pieces = [cut(p, seq_len) for p in pieces]
    layout = pack_layout([len(p["tokens"]) for p in pieces], seq_len, packing=packing)
    rows = empty_rows(layout.num_rows, seq_len, pad_id, tree=bool(pieces) and TREE_FEATURES[0] in pieces[0])
    for s, piece in enumerate(pieces):
        place(rows, layout.row_S[s], layout.offset_S[s], layout.segment_S[s], piece)
    return rows, truncated


class PackedBatchIterator(grain.DatasetIterator):
    """Packs per-thread sequences from a tree iterator into fixed batches.

    ``parent`` yields, per tree, a list of pieces (``TokenizeTree``); with
    ``tree`` the batches carry ``TREE_FEATURES``. ``stats`` counts pieces
    ("sequences"), truncated ones, real tokens and rows so far.
    """

    def __init__(
        self,
        parent: grain.DatasetIterator,
        *,
        batch_size: int,
        seq_len: int,
        packing: bool,
        pad_id: int = 0,
        tree: bool = False,
    ):
        super().__init__(parent)
        if batch_size <= 0 or seq_len <= 0:
            raise ValueError(f"batch_size ({batch_size}) and seq_len ({seq_len}) must be positive")
        self._batch_size = batch_size
        self._seq_len = seq_len
        self._packing = packing
        self._pad_id = pad_id
        self._tree_rows = tree
        self._tree: list[Piece] | None = None  # sequences of the tree being packed
        self._tree_parent_state: dict[str, Any] | None = None  # upstream state before it
        self._tree_index = 0  # its sequences already placed
        self._resume_index = 0
        self._exhausted = False
        self.stats = {"sequences": 0, "truncated": 0, "tokens": 0, "rows": 0}

    # ---- upstream ----------------------------------------------------------
    def _peek(self) -> Piece | None:
        """The next sequence to place, or None when upstream is exhausted."""
        while self._tree is None or self._tree_index >= len(self._tree):
            if self._exhausted:
                return None
            parent_state = self._parent.get_state()
            try:
                tree = next(self._parent)
            except StopIteration:
                self._exhausted = True
                self._tree = None
                return None
            self._tree, self._tree_parent_state = tree, parent_state
            self._tree_index, self._resume_index = self._resume_index, 0
        return cut(self._tree[self._tree_index], self._seq_len)

    def _advance(self) -> None:
        tokens = self._tree[self._tree_index]["tokens"]
        self.stats["sequences"] += 1
        self.stats["truncated"] += int(len(tokens) > self._seq_len)
        self.stats["tokens"] += min(len(tokens), self._seq_len)
        self._tree_index += 1

    # ---- batches -----------------------------------------------------------
    def _fill_row(self, rows: dict[str, np.ndarray], row: int) -> bool:
        """Fills one row; False when upstream ran dry before anything was placed."""
        offset, segment_id = 0, 0
        while True:
            piece = self._peek()
            if piece is None or offset + len(piece["tokens"]) > self._seq_len:
                break
            segment_id += 1
            place(rows, row, offset, segment_id, piece)
            offset += len(piece["tokens"])
            self._advance()
            if not self._packing:
                break
        if segment_id:
            self.stats["rows"] += 1
        return segment_id > 0

    def __next__(self) -> dict[str, np.ndarray]:
        rows = empty_rows(self._batch_size, self._seq_len, self._pad_id, tree=self._tree_rows)
        for row in range(self._batch_size):
            if not self._fill_row(rows, row):
                raise StopIteration  # drop the remainder
        return rows

    # ---- checkpointing -----------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        if self._tree is not None and self._tree_index < len(self._tree):
            parent_state, index = self._tree_parent_state, self._tree_index
        else:
            parent_state, index = self._parent.get_state(), 0
        return {"parent": parent_state, "tree_index": index, "exhausted": self._exhausted, "stats": dict(self.stats)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._tree, self._tree_parent_state = None, None
        self._tree_index = 0
        self._resume_index = int(state["tree_index"])
        self._exhausted = bool(state["exhausted"])
        self.stats = {k: int(v) for k, v in state["stats"].items()}


def describe_lengths(config: RunConfig, info: DatasetInfo, sample: int = 64) -> str:
    """One line on how the first ``sample`` training trees fit the rows:
    pieces per tree, tokens per piece and how many are cut at ``data.seq_len``."""
    tokenize = TokenizeTree(load_tokenizer(info.tokenizer_path), config.data.context, config.data.join)
    source = open_split(info, "train")
    lengths = [len(p["tokens"]) for i in range(min(sample, len(source))) for p in tokenize(source[i])]
    if not lengths:
        return "training split is empty"
    kind = "tree sequences" if config.data.context == "inherit" else "thread sequences"
    over = sum(n > config.data.seq_len for n in lengths)
    return (
        f"{kind} of {min(sample, len(source))} training trees: mean {np.mean(lengths):.0f}, max {max(lengths)} "
        f"tokens; {over}/{len(lengths)} longer than data.seq_len={config.data.seq_len} (cut)"
    )


def tree_dataset(
    info: DatasetInfo,
    split: str,
    *,
    process_index: int = 0,
    process_count: int = 1,
    seed: int = 0,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """This process's shard of a split, shuffled globally per epoch, repeated."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if num_epochs is not None and num_epochs <= 0:
        raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
    source = open_split(info, split)
    if not len(source):
        raise ValueError(f"split {split!r} is empty (config.task.num_{split}=0)")
    if len(source) < process_count:
        raise ValueError(f"split {split!r} has {len(source)} examples, fewer than {process_count} processes")
    ds = grain.MapDataset.source(source).shuffle(seed=seed)
    ds = ds.slice(slice(process_index, None, process_count))
    return ds.repeat(num_epochs)


def make_iterator(
    config: RunConfig,
    info: DatasetInfo,
    split: str,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    seed: int | None = None,
    num_epochs: int | None = None,
    num_threads: int = 2,
    num_workers: int | None = None,
) -> PackedBatchIterator:
    """Checkpointable iterator of this process's batches (see module doc).

    ``num_epochs=None`` repeats forever for ``train`` and reads once otherwise.
    ``seed=None`` uses ``config.data.shuffle_seed``; ``num_workers=None``
    ``config.data.pipeline_workers`` (0: ``num_threads`` reader threads here,
    else worker processes with ``num_threads`` threads each).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_epochs is None and split != "train":
        num_epochs = 1
    seed = config.data.shuffle_seed if seed is None else seed
    tokenizer = load_tokenizer(info.tokenizer_path)
    ds = tree_dataset(
        info, split, process_index=process_index, process_count=process_count, seed=seed, num_epochs=num_epochs
    )
    ds = ds.map(TokenizeTree(tokenizer, config.data.context, config.data.join))
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(8, 4 * num_threads))
    trees = ds.to_iter_dataset(read)
    workers = config.data.pipeline_workers if num_workers is None else num_workers
    if workers:
        from absl import flags  # grain reads its absl flags when it starts workers

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()  # their defaults: our command lines are not absl's
        # A tree is a few small arrays: pickled through the queue, they cost less
        # than a shared-memory block each.
        trees = grain.experimental.WithOptionsIterDataset(
            trees, grain.experimental.DatasetOptions(min_shm_size=1 << 20)
        )
        trees = trees.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=max(8, 4 * num_threads))
        )
    trees = trees.__iter__()
    return PackedBatchIterator(
        trees,
        batch_size=batch_size,
        seq_len=config.data.seq_len,
        packing=bool(config.data.packing),
        pad_id=tokenizer.pad_id,
        tree=config.data.context == "inherit",
    )
