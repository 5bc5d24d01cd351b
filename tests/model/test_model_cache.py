"""Tests for the KV-cache API: init_cache / decode equal the full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers.tiny import tiny_model_config

from apr_jax.model import KVCache, Transformer

VOCAB = 64
CHUNK = 4
SLOTS = 16


@nnx.jit
def _forward(model, tokens_BxL, segment_ids_BxL):
    b, l = tokens_BxL.shape
    return model(tokens_BxL, jnp.broadcast_to(jnp.arange(l), (b, l)), segment_ids_BxL)


def forward(model, sequences):
    """Full-forward logits of each sequence alone (rows right-padded to SLOTS)."""
    tokens = np.zeros((len(sequences), SLOTS), np.int32)
    segments = np.zeros((len(sequences), SLOTS), np.int32)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq)], segments[row, : len(seq)] = seq, 1
    logits = _forward(model, jnp.asarray(tokens), jnp.asarray(segments))
    return [np.asarray(logits[row, : len(seq)]) for row, seq in enumerate(sequences)]


@nnx.jit
def decode(model, tokens_BxT, positions_BxT, cache):
    return model.decode(tokens_BxT, positions_BxT, cache)


def run_threads(model, cache, sequences, prompt_lens):
    """Feeds row b its sequence: prompt in CHUNK-token chunks, then one token a step.

    Rows advance independently (different lengths and phases); finished rows
    and chunk tails are padding (position -1). Returns per-row logits and cache.
    """
    batch = len(sequences)
    done = [0] * batch
    logits = [np.zeros((len(s), VOCAB), np.float32) for s in sequences]
    while any(d < len(s) for d, s in zip(done, sequences)):
        prefill = any(d < p for d, p in zip(done, prompt_lens))
        width = CHUNK if prefill else 1
        tokens = np.full((batch, width), 7, np.int32)  # arbitrary ids under padding
        positions = np.full((batch, width), -1, np.int32)
        for b, seq in enumerate(sequences):
            if prefill:  # rows already past their prompt wait for the others
                take = max(0, min(width, prompt_lens[b] - done[b]))
            else:
                take = min(width, len(seq) - done[b])
            tokens[b, :take] = seq[done[b] : done[b] + take]
            positions[b, :take] = np.arange(done[b], done[b] + take)
        step_logits, cache = decode(model, jnp.asarray(tokens), jnp.asarray(positions), cache)
        for b in range(batch):
            valid = positions[b] >= 0
            logits[b][positions[b][valid]] = np.asarray(step_logits[b])[valid]
            done[b] += int(valid.sum())
    return logits, cache


def test_init_cache_shapes(tiny_model):
    cache = tiny_model.init_cache(3, SLOTS)
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (
        2,
        2,
        3,
        SLOTS,
        8,
    )  # [kv_heads, layers, lanes, slots, head_dim] and cache.v.shape == cache.k.shape
    assert cache.k.dtype == jnp.float32 and float(jnp.abs(cache.k).sum()) == 0.0
    assert (cache.batch_size, cache.max_len) == (3, SLOTS)
    with pytest.raises(ValueError, match="init_cache"):
        tiny_model.init_cache(0, SLOTS)


def test_chunked_prefill_and_decode_equal_full_forward_with_stale_rows(tiny_model):
    rng = np.random.default_rng(0)
    # First threads: row 2 is long, so it leaves stale entries in slots 6..13.
    first = [rng.integers(0, VOCAB, n) for n in (9, 5, 14)]
    logits, cache = run_threads(tiny_model, tiny_model.init_cache(3, SLOTS), first, prompt_lens=[6, 3, 9])
    for got, want in zip(logits, forward(tiny_model, first)):
        np.testing.assert_allclose(got, want, atol=1e-4)
    # Second threads reuse the rows without clearing the cache.
    second = [rng.integers(0, VOCAB, n) for n in (7, 11, 6)]
    logits, _ = run_threads(tiny_model, cache, second, prompt_lens=[2, 7, 5])
    for got, want in zip(logits, forward(tiny_model, second)):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_padding_tokens_change_nothing(tiny_model):
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, VOCAB, (2, CHUNK)), jnp.int32)
    positions = jnp.array([[0, 1, 2, 3], [0, 1, 2, 3]], jnp.int32)
    _, cache = decode(tiny_model, tokens, positions, tiny_model.init_cache(2, SLOTS))
    # Row 0 decodes one token; row 1 sends only padding with garbage token ids.
    step_tokens = jnp.array([[5, 9, 9, 9], [11, 12, 13, 14]], jnp.int32)
    step_positions = jnp.array([[4, -1, -1, -1], [-1, -1, -1, -1]], jnp.int32)
    logits, after = decode(tiny_model, step_tokens, step_positions, cache)
    np.testing.assert_array_equal(after.k[:, :, 1], cache.k[:, :, 1])
    np.testing.assert_array_equal(after.v[:, :, 1], cache.v[:, :, 1])
    np.testing.assert_array_equal(after.k[:, :, 0, 5:], 0.0)  # nothing written past slot 4
    assert bool(jnp.all(jnp.isfinite(logits)))
    full = forward(tiny_model, [np.concatenate([tokens[0], step_tokens[0, :1]])])[0]
    np.testing.assert_allclose(logits[0, 0], full[4], atol=1e-4)


def test_decode_under_jit_donates_cache_in_place(tiny_model):
    graphdef, state = nnx.split(tiny_model)

    def step(state, tokens, positions, cache):
        return nnx.merge(graphdef, state).decode(tokens, positions, cache)

    cache = tiny_model.init_cache(2, SLOTS)
    tokens = jnp.zeros((2, 1), jnp.int32)
    positions = jnp.array([[0], [3]], jnp.int32)
    compiled = jax.jit(step, donate_argnums=3).lower(state, tokens, positions, cache).compile()
    hlo = compiled.as_text()
    assert "input_output_alias" in hlo
    cache_type = f"f32[2,2,2,{SLOTS},8]"
    assert not [line for line in hlo.splitlines() if cache_type in line and " copy(" in line]
    logits, new_cache = compiled(state, tokens, positions, cache)
    assert cache.k.is_deleted()  # the buffer was handed to the output
    reference, _ = decode(tiny_model, tokens, positions, tiny_model.init_cache(2, SLOTS))
    np.testing.assert_allclose(logits, reference, atol=1e-6)
    assert float(jnp.abs(new_cache.k[:, :, 1, 3]).sum()) > 0 and float(jnp.abs(new_cache.k[:, :, 1, 0]).sum()) == 0


def test_decode_rejects_mismatched_cache(tiny_model):
    cache = tiny_model.init_cache(3, SLOTS)
    with pytest.raises(ValueError, match="cache batch"):
        tiny_model.decode(jnp.zeros((2, 1), jnp.int32), jnp.zeros((2, 1), jnp.int32), cache)
    with pytest.raises(ValueError, match="positions shape"):
        tiny_model.decode(jnp.zeros((3, 2), jnp.int32), jnp.zeros((3, 1), jnp.int32), cache)


def test_pretrained_switches_decode_equals_forward():
    """head_dim != d_model/num_heads, q/k/v biases and q/k norms (Qwen2/3
    layouts): the cached decode path still equals the full forward."""
    cfg = tiny_model_config(
        d_model=24, d_ff=40, head_dim=10, qkv_bias=True, qk_norm=True, norm_eps=1e-5, rope_theta=300.0
    )
    graph, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(1)))
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(3), len(leaves))  # biases and norm scales away from 0 and 1
    model = nnx.merge(
        graph,
        jax.tree.unflatten(treedef, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]),
    )
    rng = np.random.default_rng(1)
    sequences = [rng.integers(0, VOCAB, n) for n in (10, 7)]
    logits, _ = run_threads(model, model.init_cache(2, SLOTS), sequences, prompt_lens=[5, 3])
    for got, want in zip(logits, forward(model, sequences)):
        np.testing.assert_allclose(got, want, atol=1e-4)
