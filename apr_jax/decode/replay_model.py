"""A scripted decode model that replays given token sequences.

    model = make_replay_model([s.tokens for tree in trees for s in tree.to_sequences(tok)],
                              vocab_size=tok.vocab_size, max_len=512, fallback_id=tok.eos_id)

At a query whose lane history (slots ``0..p``, the query's own token included)
equals the first ``p + 1`` tokens of one of the sequences, the logits put all
mass on that sequence's token ``p + 1``; otherwise (no sequence matches, or the
matching one ends at ``p``) on ``fallback_id``. When several sequences share
that prefix the first of them in the given order wins. It lets the engine be
driven through real traces, so its bookkeeping can be checked and its overhead
measured apart from any model's quality.

Model seam: ``decode_fn(params, tokens_BxT, positions_BxT, cache, lanes_B,
kv_len) -> (logits_BxTxV, cache)`` and ``init_cache(num_lanes, max_len)``
(``lanes_B=None``: row b uses lane b).
The cache holds, per lane and slot, two independent 32-bit rolling hashes of
the prefix ending at that slot, ``h[p] = step(h[p - 1], token[p])`` with a
fixed seed for ``h[-1]``. A call walks its ``T`` columns in order, so a row may
carry several consecutive positions (chunked prefill); a query at ``p`` reads
only slot ``p - 1`` of its lane (``< kv_len``), so slots beyond a reused lane's
current position never matter. Positions < 0 are padding: nothing is written
and their logits are the fallback's.

Lookup: every (sequence q, position p) of the sequences is a row of a table
(``E`` rows; shape suffixes as in ``apr_jax.decode``'s docstring) sorted by
``(p, h1, h2)``; a query binary-searches it (O(log E) per query, no
table-sized intermediate) and accepts the entry only if position, both hashes
and the token itself agree.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from apr_jax.decode.model_api import DecodeModel
from apr_jax.model.attention import resolve_decode_attention

LOGIT_SCALE = 1000.0  # logit of the replayed token; every other token gets 0
_BASES = (0x01000193, 0x9E3779B1)  # odd multipliers of the two hashes
_SEEDS = (0x811C9DC5, 0x2545F491)  # h[-1] of the two hashes


def _hash_step(h, tok, base: int):
    """``mix(h * base + tok + 1)`` in wrapping uint32 (numpy or jax arrays)."""
    x = h * np.uint32(base) + (tok.astype(h.dtype) + np.uint32(1))
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


def prefix_hashes(tokens_QxL: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two hashes of every prefix of each row of ``tokens_QxL`` (uint32
    [M, L] each; entry [m, p] hashes tokens [m, 0..p])."""
    tok_QxL = np.asarray(tokens_QxL, np.uint32).reshape(len(tokens_QxL), -1)
    out = []
    for base, seed in zip(_BASES, _SEEDS):
        h_Q = np.full(tok_QxL.shape[0], seed, np.uint32)
        h_QxL = np.empty(tok_QxL.shape, np.uint32)
        with np.errstate(over="ignore"):
            for p in range(tok_QxL.shape[1]):
                h_Q = _hash_step(h_Q, tok_QxL[:, p], base)
                h_QxL[:, p] = h_Q
        out.append(h_QxL)
    return out[0], out[1]


@dataclasses.dataclass(frozen=True)
class ReplayDecode:
    """The pure decode function; equal settings compare equal, so loops taking
    it as a static argument compile once per (vocabulary, fallback, table size)."""

    vocab_size: int
    fallback_id: int
    search_steps: int  # ceil(log2(table rows + 1))

    def __call__(
        self,
        params: dict,
        tokens_BxT: jax.Array,
        positions_BxT: jax.Array,
        cache: dict,
        lanes_B: jax.Array | None = None,
        kv_len: int | None = None,
        page_size: int = 0,
    ) -> tuple[jax.Array, dict]:
        del kv_len, page_size  # a query at p reads only slot p - 1, however the engine reads the cache
        tokens_TxB = jnp.asarray(tokens_BxT, jnp.int32).T
        positions_TxB = jnp.asarray(positions_BxT, jnp.int32).T
        B = tokens_TxB.shape[1]
        lanes_B = jnp.arange(B, dtype=jnp.int32) if lanes_B is None else jnp.asarray(lanes_B, jnp.int32)
        max_len = cache["h1"].shape[1]

        def column(c, tok_pos):
            tok_B, pos_B = tok_pos
            prev_B = jnp.clip(pos_B - 1, 0, max_len - 1)
            slot_B = jnp.where((pos_B >= 0) & (pos_B < max_len), pos_B, max_len)  # max_len: dropped
            new, hashes = {}, []
            for name, base, seed in (("h1", _BASES[0], _SEEDS[0]), ("h2", _BASES[1], _SEEDS[1])):
                h_prev_B = jnp.where(pos_B > 0, c[name][lanes_B, prev_B], jnp.uint32(seed))
                h_B = _hash_step(h_prev_B, tok_B, base)
                new[name] = c[name].at[lanes_B, slot_B].set(h_B, mode="drop")
                hashes.append(h_B)
            return new, tuple(hashes)

        cache, (h1_TxB, h2_TxB) = jax.lax.scan(column, cache, (tokens_TxB, positions_TxB))
        next_TxB = self._lookup(params, positions_TxB, h1_TxB, h2_TxB, tokens_TxB)
        next_TxB = jnp.where(positions_TxB >= 0, next_TxB, self.fallback_id)
        logits_BxTxV = LOGIT_SCALE * jax.nn.one_hot(next_TxB.T, self.vocab_size, dtype=jnp.float32)
        return logits_BxTxV, cache

    def _lookup(self, params, pos_TxB, h1_TxB, h2_TxB, tok_TxB):
        """Next token of the table row keyed (pos, h1, h2) with token tok, else the fallback."""
        t_pos, t_h1, t_h2 = params["pos_E"], params["h1_E"], params["h2_E"]
        n = t_pos.shape[0]

        def less(i_TxB):  # table[i] < query, lexicographically on (pos, h1, h2)
            a, b, c = t_pos[i_TxB], t_h1[i_TxB], t_h2[i_TxB]
            return (a < pos_TxB) | ((a == pos_TxB) & ((b < h1_TxB) | ((b == h1_TxB) & (c < h2_TxB))))

        def halve(_, lo_hi):
            lo_TxB, hi_TxB = lo_hi
            mid_TxB = (lo_TxB + hi_TxB) // 2
            go_right_TxB = less(jnp.minimum(mid_TxB, n - 1)) & (lo_TxB < hi_TxB)
            return (
                jnp.where(go_right_TxB, mid_TxB + 1, lo_TxB),
                jnp.where(go_right_TxB | (lo_TxB >= hi_TxB), hi_TxB, mid_TxB),
            )

        lo_TxB = jnp.zeros(pos_TxB.shape, jnp.int32)
        lo_TxB, _ = jax.lax.fori_loop(0, self.search_steps, halve, (lo_TxB, jnp.full_like(lo_TxB, n)))
        i_TxB = jnp.minimum(lo_TxB, n - 1)
        found_TxB = (
            (lo_TxB < n)
            & (t_pos[i_TxB] == pos_TxB)
            & (t_h1[i_TxB] == h1_TxB)
            & (t_h2[i_TxB] == h2_TxB)
            & (params["tok_E"][i_TxB] == tok_TxB)
        )
        return jnp.where(found_TxB, params["next_E"][i_TxB], self.fallback_id)


def replay_tables(sequences: Sequence[Sequence[int]], max_len: int, fallback_id: int) -> dict[str, np.ndarray]:
    """One row per (sequence, position < max_len), sorted by (position, h1, h2,
    sequence index): the position, both prefix hashes, the token there and the
    token that follows it (``fallback_id`` at a sequence's end)."""
    lens_Q = np.asarray([min(len(seq), max_len) for seq in sequences])
    tok_QxL = np.zeros((len(sequences), int(lens_Q.max())), np.int64)
    next_QxL = np.full(tok_QxL.shape, fallback_id, np.int64)
    for q, seq in enumerate(sequences):
        seq_L = np.asarray(seq, np.int64)
        tok_QxL[q, : lens_Q[q]] = seq_L[: lens_Q[q]]
        following = seq_L[1 : lens_Q[q] + 1]
        next_QxL[q, : len(following)] = following
    h1_QxL, h2_QxL = prefix_hashes(tok_QxL)
    valid_QxL = np.arange(tok_QxL.shape[1])[None] < lens_Q[:, None]
    seq_QxL, pos_QxL = np.indices(tok_QxL.shape)
    flat = {
        "pos_E": pos_QxL[valid_QxL],
        "h1_E": h1_QxL[valid_QxL],
        "h2_E": h2_QxL[valid_QxL],
        "tok_E": tok_QxL[valid_QxL],
        "next_E": next_QxL[valid_QxL],
        "seq_E": seq_QxL[valid_QxL],
    }
    order = np.lexsort((flat["seq_E"], flat["h2_E"], flat["h1_E"], flat["pos_E"]))
    return {
        "pos_E": flat["pos_E"][order].astype(np.int32),
        "h1_E": flat["h1_E"][order].astype(np.uint32),
        "h2_E": flat["h2_E"][order].astype(np.uint32),
        "tok_E": flat["tok_E"][order].astype(np.int32),
        "next_E": flat["next_E"][order].astype(np.int32),
    }


def _check(sequences: Any, vocab_size: int, max_len: int, fallback_id: int) -> list[np.ndarray]:
    for name, value, low in (("vocab_size", vocab_size, 1), ("max_len", max_len, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not isinstance(fallback_id, (int, np.integer)) or not 0 <= fallback_id < vocab_size:
        raise ValueError(f"fallback_id must be an id in [0, {vocab_size}), got {fallback_id!r}")
    if isinstance(sequences, (str, bytes)) or not len(sequences):
        raise ValueError("sequences must be a non-empty list of token-id lists")
    out = []
    for i, seq in enumerate(sequences):
        arr = np.asarray(seq)
        if arr.ndim != 1 or not len(arr) or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"sequence {i} is not a non-empty 1-D list of token ids")
        if arr.min() < 0 or arr.max() >= vocab_size:
            raise ValueError(f"sequence {i} has a token outside [0, {vocab_size})")
        out.append(arr)
    return out


def make_replay_model(
    sequences: Sequence[Sequence[int]], vocab_size: int, max_len: int, fallback_id: int
) -> DecodeModel:
    """A ``DecodeModel`` replaying ``sequences`` (module docstring). Positions at
    or beyond ``max_len`` are never looked up (longer sequences are cut there)."""
    seqs = _check(sequences, vocab_size, max_len, fallback_id)
    tables = replay_tables(seqs, max_len, fallback_id)
    steps = int(len(tables["pos_E"])).bit_length()  # ceil(log2(E + 1)), E table rows
    decode = ReplayDecode(vocab_size=int(vocab_size), fallback_id=int(fallback_id), search_steps=steps)
    return DecodeModel(
        params={k: jnp.asarray(v) for k, v in tables.items()},
        decode_fn=decode,
        init_cache=init_replay_cache,
        page_size_for=replay_page_size,
    )


def replay_page_size(decode_attention: str, page_size: int, max_len: int, tables: bool = False) -> int:
    """The page size an ``eval.decode_attention`` choice gives the replay
    model: it reads the cache as the CPU would (``paged`` pages, ``auto`` the
    xla gather), so the engine's KV-read counters measure that choice."""
    return resolve_decode_attention(decode_attention, "cpu", 0, page_size, max_len, tables)


def init_replay_cache(num_lanes: int, max_len: int) -> dict[str, jax.Array]:
    """Zeroed per-lane prefix hashes: ``h1``, ``h2`` uint32 [num_lanes, max_len]."""
    return {"h1": jnp.zeros((num_lanes, max_len), jnp.uint32), "h2": jnp.zeros((num_lanes, max_len), jnp.uint32)}
