"""Where packed sequences go: the layout shared by the SFT pipeline and the
packed RL update.

A layout gives every sequence a row, an offset in that row and a segment id
(1, 2, ... in placement order inside the row). In the packed rows a
sequence's positions restart at 0 and padding has segment id 0 (see
``apr_jax.data.pipeline``). Two placement rules:

- next-fit in order (the SFT pipeline): a sequence that does not fit in the
  current row starts the next one; with ``packing=False`` every sequence gets
  a row of its own;
- first-fit decreasing (the RL update, where order does not matter): longest
  first, each into the first row with room; fewer rows for the same tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
    """Sequence ``s`` fills ``row_S[s], offset_S[s] : offset_S[s] + length``."""

    row_S: np.ndarray  # int32
    offset_S: np.ndarray  # int32
    segment_S: np.ndarray  # int32, 1-based inside its row
    num_rows: int


def pack_layout(
    lengths_S: Sequence[int] | np.ndarray, seq_len: int, *, packing: bool = True, first_fit_decreasing: bool = False
) -> Layout:
    """The layout of sequences of ``lengths_S`` tokens in rows of ``seq_len``
    (next-fit in order, or first-fit decreasing; module docstring)."""
    lengths_S = np.asarray(lengths_S, np.int64).reshape(-1)
    if lengths_S.size and (lengths_S.min() < 0 or lengths_S.max() > seq_len):
        raise ValueError(
            f"sequence lengths must be in [0, seq_len={seq_len}], got {lengths_S.min()}..{lengths_S.max()}"
        )
    n = lengths_S.size
    row_S, offset_S, segment_S = (np.zeros(n, np.int32) for _ in range(3))
    used_K = np.zeros(max(n, 1), np.int64)  # tokens placed in each row (at most one row per sequence)
    count_K = np.zeros(max(n, 1), np.int32)  # sequences placed in each row
    rows = 0
    order = np.argsort(-lengths_S, kind="stable") if first_fit_decreasing else range(n)
    for s in order:
        length = lengths_S[s]
        if first_fit_decreasing:
            fits = used_K[:rows] + length <= seq_len
            row = int(np.argmax(fits)) if rows and fits.any() else rows
        else:
            row = rows - 1 if packing and rows and used_K[rows - 1] + length <= seq_len else rows
        rows = max(rows, row + 1)
        row_S[s], offset_S[s] = row, used_K[row]
        count_K[row] += 1
        segment_S[s] = count_K[row]
        used_K[row] += length
    return Layout(row_S, offset_S, segment_S, rows)


def gather_index(layout: Layout, lengths_S: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every slot of the ``layout.num_rows`` packed rows: the sequence it
    holds (-1 on padding), the token index inside that sequence (its
    position; 0 on padding) and its segment id (0 on padding); int32
    ``[num_rows, seq_len]`` each."""
    lengths_S = np.asarray(lengths_S, np.int64)
    shape = (layout.num_rows, seq_len)
    source, column, segment = np.full(shape, -1, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    tokens = int(lengths_S.sum())
    seq_T = np.repeat(np.arange(lengths_S.size), lengths_S)
    column_T = np.arange(tokens) - np.repeat(np.cumsum(lengths_S) - lengths_S, lengths_S)
    row_T, slot_T = layout.row_S[seq_T], layout.offset_S[seq_T] + column_T
    source[row_T, slot_T] = seq_T
    column[row_T, slot_T] = column_T
    segment[row_T, slot_T] = layout.segment_S[seq_T]
    return source, column, segment
