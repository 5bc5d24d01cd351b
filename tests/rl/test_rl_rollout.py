"""The pure fixed-shape rollout: layout of thread rows, masks, sampling-time
log-probabilities and determinism, on a scripted and a random toy model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.scripted import record_history

from apr_jax.decode.engine import EngineConfig, sample_results
from apr_jax.decode.model_api import DecodeModel
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.sampler import SamplingConfig
from apr_jax.decode.toy_model import ToyConfig, full_forward_logits, make_toy_model
from apr_jax.rl.grpo import target_logprobs
from apr_jax.rl.rollout import encode_prompts, engine_arrays, make_rollout

BOS, EOS, CHILD, SO, SC, SEP, JO, JC, RO, RC = 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
V = 32
CFG = EngineConfig(
    max_children=3,
    max_rounds=1,
    max_depth=1,
    tokens_per_thread=10,
    max_context=24,
    row_buckets=1,
    kv_buckets=1,
    sampling=SamplingConfig(temperature=1.0),
    samples_per_problem=2,
    max_threads=4,
)


def scripted_model():
    """The root (prompt starting 20) spawns two children with messages 30 and
    31, then writes 16 and EOS; each child returns its message + 10."""
    table = np.full((V, 24), EOS, np.int32)
    table[20, 2:8] = [SO, 30, SEP, 31, SC, 0]  # position 7 is the join, never sampled
    table[30, 2:5] = [RO, 40 - 20, RC]
    table[31, 2:5] = [RO, 41 - 20, RC]

    def decode_fn(tab, tokens_BxT, positions_BxT, hist, lanes_B, kv_len):
        hist, mine = record_history(hist, tokens_BxT, positions_BxT, lanes_B)
        is_child = mine[:, 1:2] == CHILD
        key_BxT = jnp.where(is_child, mine[:, 2:3], mine[:, 1:2])
        pos = jnp.clip(positions_BxT, 0, 23)
        # After the join block the root writes 16 then EOS.
        after_join = (~is_child) & (tokens_BxT == JC)
        nxt = jnp.where(after_join, 16, jnp.where((~is_child) & (tokens_BxT == 16), EOS, tab[key_BxT, pos]))
        return jax.nn.one_hot(nxt, V) * 40.0, hist

    return DecodeModel(jnp.asarray(table), decode_fn, lambda b, n: jnp.zeros((b, n), jnp.int32))


def test_rows_masks_and_layout_on_a_scripted_spawn():
    model = scripted_model()
    rollout = make_rollout(model.decode_fn, model.init_cache, CFG, ProtocolIds(), prompt_width=4)
    prompts = encode_prompts([[20, 21], [22]], width=4)
    b = jax.device_get(rollout(model.params, jax.random.key(0), prompts))
    P, G, S, L = 2, 2, 4, 24
    assert b.tokens_RxL.shape == (P * G * S, L) and b.logp_RxL.shape == (P * G * S, L)
    np.testing.assert_array_equal(b.rollout_R, np.repeat(np.arange(P * G), S))
    np.testing.assert_array_equal(b.thread_R, np.tile(np.arange(S), P * G))
    # Problem 0's samples spawn two children (3 slots used, 1 padding); problem 1's root ends at once.
    np.testing.assert_array_equal(b.threads_N, [3, 3, 1, 1])
    np.testing.assert_array_equal(b.valid_R, np.array([1, 1, 1, 0] * 2 + [1, 0, 0, 0] * 2, bool))
    root = b.tokens_RxL[0, : b.length_R[0]].tolist()
    assert root == [BOS, 20, 21, SO, 30, SEP, 31, SC, JO, 20, SEP, 21, JC, 16, EOS]
    mask = np.asarray(b.model_mask_RxL)
    np.testing.assert_array_equal(mask[0, :16], [0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0])
    child = b.tokens_RxL[1, : b.length_R[1]].tolist()
    assert child == [BOS, CHILD, 30, RO, 20, RC] and mask[1, :7].tolist() == [0, 0, 0, 1, 1, 1, 0]
    assert mask[3].sum() == 0 and mask[9:].sum() == mask[8].sum() == 1  # problem 1: root writes EOS only
    seg = np.asarray(b.segment_ids_RxL)
    assert seg[0].sum() == b.length_R[0] and seg[3].sum() == 0
    # Scripted logits are nearly one-hot: every written token had log-prob ~0.
    assert np.all(np.abs(b.logp_RxL[mask > 0]) < 1e-6) and np.all(b.logp_RxL[mask == 0] == 0)

    # The host view matches what the engine reports.
    results = sample_results(engine_arrays(b, P), P)
    assert [s.num_threads for s in results[0]] == [3, 3] and results[0][0].children_per_spawn == [2]
    assert results[0][0].written_tokens == 7 + 3 + 3


@pytest.mark.slow
def test_sampling_logprobs_match_teacher_forcing_and_key_determinism():
    model = make_toy_model(ToyConfig(vocab_size=V, d_model=16, num_heads=2, num_layers=1, d_ff=32), jax.random.key(3))
    cfg = EngineConfig(
        max_children=2,
        max_rounds=1,
        max_depth=1,
        tokens_per_thread=12,
        max_context=20,
        row_buckets=2,
        kv_buckets=2,
        sampling=SamplingConfig(temperature=0.7),
        samples_per_problem=3,
        max_threads=3,
    )
    rollout = make_rollout(model.decode_fn, model.init_cache, cfg, ProtocolIds(), prompt_width=3)
    prompts = encode_prompts([[20, 21, 22], [23, 24]], width=3)
    a = jax.device_get(rollout(model.params, jax.random.key(7), prompts))
    b = jax.device_get(rollout(model.params, jax.random.key(7), prompts))
    c = jax.device_get(rollout(model.params, jax.random.key(8), prompts))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a.tokens_RxL, c.tokens_RxL)

    # Teacher-forced log-probs of each row at temperature 0.7 equal the recorded ones.
    logits = full_forward_logits(model, jnp.asarray(a.tokens_RxL))
    forced = np.asarray(target_logprobs(logits, jnp.asarray(a.tokens_RxL), temperature=0.7))
    mask = np.asarray(a.model_mask_RxL) > 0
    assert mask.sum() > 20
    np.testing.assert_allclose(a.logp_RxL[mask], forced[mask], atol=1e-4)

    # Rollouts split into chunks with a ladder of prefill widths, or fed one
    # forced token per step through the smallest lane pool, sample the same
    # rows: each token's key depends only on its thread and position. (Two
    # changes per compile keep the test short; either one breaking fails it.)
    for changes, chunks in (
        ({"prefill_chunk": 2, "long_prefill_chunks": (6,)}, 2),
        ({"prefill_chunk": 1, "lanes": 3, "row_buckets": 1, "kv_buckets": 1}, 1),
    ):
        other = make_rollout(
            model.decode_fn,
            model.init_cache,
            dataclasses.replace(cfg, **changes),
            ProtocolIds(),
            prompt_width=3,
            chunks=chunks,
        )
        d = jax.device_get(other(model.params, jax.random.key(7), prompts))
        for name in ("tokens_RxL", "role_RxL", "length_R", "valid_R", "stop_R", "parent_R"):
            np.testing.assert_array_equal(getattr(d, name), getattr(a, name), err_msg=f"{changes} {name}")
        np.testing.assert_allclose(d.logp_RxL, a.logp_RxL, atol=1e-5)


def test_bad_prompts_are_one_line_errors():
    model = scripted_model()
    with pytest.raises(ValueError, match="prompt 1 has 5 tokens; the rollout's prompt width is 4"):
        encode_prompts([[20], [1, 2, 3, 4, 5]], width=4)
    with pytest.raises(ValueError, match="leaves no room"):
        make_rollout(model.decode_fn, model.init_cache, CFG, ProtocolIds(), prompt_width=23)
    rollout = make_rollout(model.decode_fn, model.init_cache, CFG, ProtocolIds(), prompt_width=4)
    with pytest.raises(ValueError, match="built for 4"):
        rollout(model.params, jax.random.key(0), encode_prompts([[20]], width=5))


def test_sharded_rollout_decodes_shard_local_and_equals_one_device():
    """Under a data x fsdp mesh each shard decodes its prompts with its own
    lanes; the rows equal the single-device rollout's (keys follow threads)."""
    from apr_jax.runtime import sharding

    model = make_toy_model(ToyConfig(vocab_size=V, d_model=16, num_heads=2, num_layers=1, d_ff=32), jax.random.key(3))
    cfg = EngineConfig(
        max_children=2,
        max_rounds=1,
        max_depth=1,
        tokens_per_thread=12,
        max_context=20,
        sampling=SamplingConfig(temperature=0.7),
        samples_per_problem=2,
        max_threads=3,
        row_buckets=1,
        kv_buckets=1,
    )
    prompts = encode_prompts([[20 + i, 21, 22][: 1 + i % 3] for i in range(8)], width=3)
    one = jax.device_get(
        make_rollout(model.decode_fn, model.init_cache, cfg, ProtocolIds(), 3)(model.params, jax.random.key(7), prompts)
    )
    mesh = sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=2))
    with jax.set_mesh(mesh):
        rollout = make_rollout(model.decode_fn, model.init_cache, cfg, ProtocolIds(), 3)
        hlo = rollout.lower(model.params, jax.random.key(7), prompts).as_text()
        many = jax.device_get(rollout(model.params, jax.random.key(7), prompts))
    assert "shard_map" in hlo or "sdy.manual_computation" in hlo
    for name in ("tokens_RxL", "role_RxL", "length_R", "valid_R", "stop_R", "threads_N"):
        np.testing.assert_array_equal(getattr(many, name), getattr(one, name), err_msg=name)
    np.testing.assert_allclose(many.logp_RxL, one.logp_RxL, atol=1e-5)
