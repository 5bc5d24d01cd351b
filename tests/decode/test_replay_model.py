"""The replay model: next-token lookup by lane history, chunked writes, padding,
lane reuse over stale slots, fallback, and a random schedule against a
pure-Python reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apr_jax.decode.replay_model import LOGIT_SCALE, make_replay_model

V, FALLBACK, MAX_LEN = 40, 3, 32
SEQS = [
    [2, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 3],  # long
    [2, 10, 11, 12, 30, 31, 3],  # shares 4 tokens with the first
    [2, 10, 11, 12, 30, 32, 33],  # shares 5 with the second: the second wins there
    [2, 4, 25, 26, 27],
]


def reference_next(history: list[int], seqs=SEQS) -> int:
    """Spec: the first sequence whose prefix is ``history`` gives the next token."""
    p = len(history) - 1
    for seq in seqs:
        if list(seq[: p + 1]) == list(history):
            return seq[p + 1] if p + 1 < len(seq) else FALLBACK
    return FALLBACK


@functools.lru_cache(maxsize=None)
def _model():
    return make_replay_model(SEQS, vocab_size=V, max_len=MAX_LEN, fallback_id=FALLBACK)


@functools.partial(jax.jit, static_argnames=("decode_fn", "kv_len"))
def _call(params, tokens_BxT, positions_BxT, cache, lanes_B, *, decode_fn, kv_len):
    return decode_fn(params, tokens_BxT, positions_BxT, cache, lanes_B, kv_len)


def _decode(cache, tokens, positions, lanes, kv_len=MAX_LEN):
    model = _model()
    logits, cache = _call(
        model.params,
        jnp.asarray(tokens, jnp.int32),
        jnp.asarray(positions, jnp.int32),
        cache,
        jnp.asarray(lanes, jnp.int32),
        decode_fn=model.decode_fn,
        kv_len=kv_len,
    )
    logits = np.asarray(logits)
    assert logits.dtype == np.float32 and logits.shape == np.asarray(tokens).shape + (V,)
    return logits.argmax(-1), logits, cache


def test_logits_are_one_hot_times_a_constant():
    cache = _model().init_cache(2, MAX_LEN)
    _, logits, _ = _decode(cache, [[2, 10]], [[0, 1]], [0])
    expected = np.zeros((2, V), np.float32)
    expected[0, 10] = expected[1, 11] = LOGIT_SCALE
    np.testing.assert_array_equal(logits[0], expected)


@pytest.mark.parametrize("chunks", [[16], [1] * 16, [3, 1, 5, 7], [4, 4, 4, 4]])
def test_chunked_writes_replay_the_whole_sequence(chunks):
    seq = SEQS[0]
    cache = _model().init_cache(3, MAX_LEN)
    start, got = 0, []
    for c in chunks:
        nxt, _, cache = _decode(cache, [seq[start : start + c]], [list(range(start, start + c))], [1])
        got.extend(nxt[0].tolist())
        start += c
    assert got == seq[1:] + [FALLBACK]  # the sequence, then the fallback at its end


def test_padding_writes_nothing_and_gets_the_fallback():
    seq = SEQS[3]
    cache = _model().init_cache(2, MAX_LEN)
    # Row 0 writes lane 0 with padding around its chunk; row 1 is all padding on the same lane.
    nxt, _, cache = _decode(cache, [[9, 2, 4, 9], [25, 26, 27, 1]], [[-1, 0, 1, -1], [-1, -1, -1, -1]], [0, 0])
    assert nxt.tolist() == [[FALLBACK, 10, 25, FALLBACK], [FALLBACK] * 4]  # [2]: the first sequence
    nxt, _, cache = _decode(cache, [[25, 26], [7, 7]], [[2, 3], [-1, -1]], [0, 1])
    assert nxt[0].tolist() == [26, 27] == seq[3:5]


def test_reused_lane_ignores_a_longer_stale_history():
    cache = _model().init_cache(2, MAX_LEN)
    _, _, cache = _decode(cache, [SEQS[0]], [list(range(16))], [1])  # lane 1 holds 16 slots
    nxt, _, cache = _decode(cache, [SEQS[1][:5]], [list(range(5))], [1])  # new thread from slot 0
    assert nxt[0].tolist() == [10, 11, 12, 13, 31]  # [2 10 11 12]: the first sequence
    nxt, _, cache = _decode(cache, [[31], [2]], [[5], [0]], [1, 0])
    assert nxt.tolist() == [[3], [10]]
    # A third thread in the same lane: at [.. 12 30] the second sequence wins over the third.
    nxt, _, cache = _decode(cache, [SEQS[2][:6]], [list(range(6))], [1])
    assert nxt[0].tolist() == [10, 11, 12, 13, 31, 33]


def test_no_match_gets_the_fallback():
    cache = _model().init_cache(1, MAX_LEN)
    nxt, _, _ = _decode(cache, [[2, 10, 11, 99 % V, 13]], [list(range(5))], [0])
    assert nxt[0].tolist() == [10, 11, 12, FALLBACK, FALLBACK]
    nxt, _, _ = _decode(cache, [[5, 10]], [[0, 1]], [0])
    assert nxt[0].tolist() == [FALLBACK, FALLBACK]


def test_kv_len_only_bounds_what_is_read():
    cache = _model().init_cache(1, MAX_LEN)
    nxt, _, cache = _decode(cache, [SEQS[0][:4]], [list(range(4))], [0], kv_len=4)
    nxt2, _, _ = _decode(cache, [SEQS[0][4:8]], [list(range(4, 8))], [0], kv_len=8)
    assert nxt[0].tolist() + nxt2[0].tolist() == SEQS[0][1:9]


def test_random_schedule_matches_the_reference():
    """Many lanes, random chunk sizes and offsets, padding rows, threads that
    restart in used lanes (matching a sequence, diverging from one, or random)."""
    rng = np.random.default_rng(0)
    lanes, B, T = 5, 3, 4
    cache = _model().init_cache(lanes, MAX_LEN)
    history = [[] for _ in range(lanes)]
    script = [[] for _ in range(lanes)]

    def new_script():
        kind = rng.integers(3)
        seq = list(SEQS[rng.integers(len(SEQS))])
        if kind == 1:  # diverge at a random point
            cut = int(rng.integers(1, len(seq)))
            seq = seq[:cut] + list(rng.integers(0, V, size=5))
        elif kind == 2:
            seq = [2] + list(rng.integers(0, V, size=6))
        return [int(x) for x in seq] + list(rng.integers(0, V, size=4).tolist())

    checked = 0
    for _ in range(60):
        rows = rng.permutation(lanes)[:B]
        tokens = np.zeros((B, T), np.int32)
        positions = np.full((B, T), -1, np.int32)
        expected = np.full((B, T), FALLBACK)
        for b, lane in enumerate(rows):
            if not script[lane] or len(history[lane]) >= len(script[lane]) or rng.random() < 0.15:
                history[lane], script[lane] = [], new_script()
            c = int(rng.integers(0, T + 1))
            c = min(c, len(script[lane]) - len(history[lane]))
            off = int(rng.integers(0, T - c + 1))
            for i in range(c):
                tok = script[lane][len(history[lane])]
                tokens[b, off + i] = tok
                positions[b, off + i] = len(history[lane])
                history[lane].append(tok)
                expected[b, off + i] = reference_next(history[lane])
                checked += 1
        nxt, _, cache = _decode(cache, tokens, positions, rows)
        np.testing.assert_array_equal(nxt, expected)
    assert checked > 200


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="fallback_id"):
        make_replay_model(SEQS, vocab_size=V, max_len=MAX_LEN, fallback_id=V)
    with pytest.raises(ValueError, match="outside"):
        make_replay_model([[1, V]], vocab_size=V, max_len=MAX_LEN, fallback_id=0)
    with pytest.raises(ValueError, match="non-empty"):
        make_replay_model([], vocab_size=V, max_len=MAX_LEN, fallback_id=0)
    with pytest.raises(ValueError, match="sequence 1"):
        make_replay_model([[1], []], vocab_size=V, max_len=MAX_LEN, fallback_id=0)
