"""GRPO arithmetic on hand-made batches, and the jitted update on a tiny model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from apr_jax.model.config import ModelConfig
from apr_jax.model.transformer import Transformer
from apr_jax.decode import engine_loop
from apr_jax.rl.grpo import (GrpoConfig, UpdateBatch, group_advantages, groups_with_signal, grpo_loss,
                             grpo_token_terms, make_grpo_update, rollout_token_weights, target_logprobs)
from apr_jax.rl.rollout import RolloutBatch
from apr_jax import train_state


def test_group_advantages_by_hand():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, 1.0]])
    plain = np.asarray(group_advantages(rewards, std_normalize=False))
    np.testing.assert_allclose(plain, [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [1, -1, 0, 0]])
    normed = np.asarray(group_advantages(rewards, std_normalize=True))
    np.testing.assert_allclose(normed[0], [1, -1, -1, 1], rtol=1e-5)
    np.testing.assert_allclose(normed[2], [np.sqrt(2), -np.sqrt(2), 0, 0], rtol=1e-5)
    # A group whose samples all got the same reward: exactly zero, never NaN.
    assert np.all(normed[1] == 0) and np.isfinite(normed).all()
    assert np.all(np.asarray(group_advantages(np.zeros((2, 3)))) == 0)


def test_flat_groups_are_dropped_from_the_update_batch():
    rewards = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert groups_with_signal(rewards).tolist() == [False, True, False]
    # Six rollouts (3 groups x 2 samples), two thread slots each; slot 1 of rollout 3 unused.
    R, L = 12, 4
    rollout_R = np.arange(R) // 2
    valid_R = np.ones(R, bool)
    valid_R[7] = False
    role_RxL = np.full((R, L), engine_loop.ROLE_MODEL, np.int8)
    role_RxL[:, 0] = 0
    z = np.zeros(R, np.int32)
    batch = RolloutBatch(
        tokens_RxL=np.ones((R, L), np.int32), role_RxL=role_RxL, logp_RxL=np.zeros((R, L), np.float32),
        length_R=np.full(R, L, np.int32), valid_R=valid_R, rollout_R=rollout_R, thread_R=np.arange(R) % 2,
        parent_R=z - 1, depth_R=z, stop_R=z, written_R=z, rounds_R=z, spawn_round_R=z,
        threads_N=np.array([2, 2, 2, 1, 2, 2]), dropped_children_N=np.zeros(6), dropped_pool_N=np.zeros(6))
    keep_N = np.repeat(groups_with_signal(rewards), 2)
    kept = UpdateBatch.from_rollout(batch, np.zeros(6), keep_N)
    assert np.asarray(kept.valid_R).tolist() == [False] * 4 + [True, True, True, False] + [False] * 4
    np.testing.assert_array_equal(np.asarray(kept.mask_RxL).sum(axis=1), [0] * 4 + [3, 3, 3, 0] + [0] * 4)
    everything = UpdateBatch.from_rollout(batch, np.zeros(6))
    assert np.asarray(everything.valid_R).tolist() == valid_R.tolist()
    # Only the kept group's rollouts share the per-rollout mean.
    w = np.asarray(rollout_token_weights(kept.mask_RxL, jnp.asarray(rollout_R), 6))
    np.testing.assert_allclose(w.sum(axis=1), [0] * 4 + [0.25, 0.25, 0.5, 0] + [0] * 4)


def test_rollout_token_weights_average_per_rollout_then_over_rollouts():
    # Rollout 0 has two rows (3 + 1 written tokens), rollout 1 one row (2 tokens),
    # rollout 2 wrote nothing and must not count.
    mask = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], np.float32)
    rollout = np.array([0, 0, 1, 2])
    w = np.asarray(rollout_token_weights(jnp.asarray(mask), jnp.asarray(rollout), 3))
    np.testing.assert_allclose(w[0], [0, 1 / 8, 1 / 8, 1 / 8])
    np.testing.assert_allclose(w[1], [0, 0, 1 / 8, 0])
    np.testing.assert_allclose(w[2], [1 / 4, 1 / 4, 0, 0])
    assert w[3].sum() == 0 and np.isclose(w.sum(), 1.0)
    # The weighted sum of per-token values is the mean of per-rollout means.
    values = np.arange(16, dtype=np.float32).reshape(4, 4)
    expected = np.mean([(1 + 2 + 3 + 6) / 4, (8 + 9) / 2])
    assert np.isclose((w * values).sum(), expected)


def test_clipped_ratio_kl_and_clip_fraction_by_hand():
    cfg = GrpoConfig(clip_low=0.2, clip_high=0.3, kl_coef=0.5)
    old = np.zeros((2, 3), np.float32)
    new = np.log(np.array([[1.0, 1.5, 0.5], [1.0, 1.5, 0.5]], np.float32))
    ref = np.zeros((2, 3), np.float32)
    adv = np.array([1.0, -1.0], np.float32)
    t = jax.tree.map(np.asarray, grpo_token_terms(jnp.asarray(new), jnp.asarray(old), jnp.asarray(ref),
                                                  jnp.asarray(adv), cfg))
    # A > 0: min(r, clip(r, 0.8, 1.3)) -> 1, 1.3, 0.5;  A < 0: -max(r, clip(r)) -> -1, -1.5, -0.8.
    np.testing.assert_allclose(t["policy_loss"], [[-1, -1.3, -0.5], [1, 1.5, 0.8]], rtol=1e-6)
    np.testing.assert_allclose(t["clip_fraction"], [[0, 1, 0], [0, 0, 1]])
    k3 = lambda r: np.exp(-np.log(r)) + np.log(r) - 1  # noqa: E731  ref/new = 1/r
    np.testing.assert_allclose(t["kl"][0], [0, k3(1.5), k3(0.5)], rtol=1e-5)
    np.testing.assert_allclose(t["loss"], t["policy_loss"] + 0.5 * t["kl"], rtol=1e-6)
    weights = np.full((2, 3), 1 / 6, np.float32)
    loss, stats = grpo_loss(jnp.asarray(new), jnp.asarray(old), None, jnp.asarray(adv), jnp.asarray(weights), cfg)
    assert np.isclose(float(loss), t["policy_loss"].mean()) and float(stats["kl"]) == 0.0


def test_target_logprobs_align_with_next_token():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 7))
    tokens = jnp.array([[1, 2, 3, 4, 5], [6, 5, 4, 3, 2]])
    out = np.asarray(target_logprobs(logits, tokens, temperature=2.0))
    ref = np.asarray(jax.nn.log_softmax(logits / 2.0, axis=-1))
    assert np.all(out[:, 0] == 0)
    for r in range(2):
        for j in range(1, 5):
            assert np.isclose(out[r, j], ref[r, j - 1, tokens[r, j]], atol=1e-6)


def test_gradient_flows_only_through_model_written_tokens():
    cfg = GrpoConfig(kl_coef=0.1)
    key = jax.random.key(1)
    logits = jax.random.normal(key, (3, 6, 9))
    tokens = jax.random.randint(jax.random.key(2), (3, 6), 0, 9)
    mask = jnp.array([[0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]], jnp.float32)
    rollout = jnp.array([0, 0, 1])
    weights = rollout_token_weights(mask, rollout, 2)
    old = jnp.full((3, 6), -2.0)
    ref = jnp.full((3, 6), -2.5)
    adv = jnp.array([1.0, -0.5, 2.0])

    def loss(lg):
        return grpo_loss(target_logprobs(lg, tokens), old, ref, adv, weights, cfg)[0]

    g = np.asarray(jax.grad(loss)(logits))
    # Logits at j predict token j + 1: only those whose target is model-written get gradient.
    counted = np.zeros((3, 6), bool)
    counted[:, :-1] = np.asarray(mask)[:, 1:] > 0
    assert np.all(g[~counted] == 0)
    assert np.all(np.abs(g[counted]).sum(-1) > 0)


def _tiny_model():
    cfg = ModelConfig.from_config(dict(num_layers=1, d_model=16, num_heads=2, num_kv_heads=1, d_ff=32,
                                       max_len=16, tie_embeddings=True, param_dtype="float32",
                                       compute_dtype="float32", attention="xla", remat=False,
                                       rope_theta=10000.0), vocab_size=24)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    return model, optimizer


def _batch(tokens, valid, mask, adv, old_logp):
    R, L = tokens.shape
    length = np.full((R,), L, np.int32)
    seg = (valid[:, None] & (np.arange(L)[None] < length[:, None])).astype(np.int32)
    return UpdateBatch(jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(L), (R, L)), jnp.asarray(seg),
                       jnp.asarray(mask, jnp.float32), jnp.asarray(old_logp), jnp.asarray(valid),
                       jnp.asarray(np.arange(R) // 2), jnp.asarray(adv, jnp.float32))


@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_update_ignores_prompt_tokens_and_padding_rows(kl_coef):
    model, optimizer = _tiny_model()
    graphs, state = train_state.split(model, optimizer)
    state = dataclasses.replace(state, ref=train_state.frozen_params(state.model, graphs))
    rng = np.random.default_rng(0)
    R, L = 8, 16
    tokens = rng.integers(3, 24, (R, L)).astype(np.int32)
    valid = np.array([1, 1, 1, 0, 1, 0, 1, 1], bool)
    mask = np.zeros((R, L), np.float32)
    mask[:, 6:12] = 1
    mask[~valid] = 0
    old = np.where(mask > 0, -3.0, 0.0).astype(np.float32)
    adv = np.array([1.0, -1.0, 0.5, -0.5])
    cfg = GrpoConfig(kl_coef=kl_coef, inner_epochs=2, minibatches=2, microbatches=2)
    update = make_grpo_update(graphs, cfg, num_rollouts=4)
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731  (the update donates its state)
    state_a, m_a = update(copy(state), _batch(tokens, valid, mask, adv, old))
    assert bool(m_a["finite"]) and np.isfinite(float(m_a["loss"]))

    # Change what must not matter: tokens after the written span, the old
    # log-probs of unmasked tokens and everything in padding rows.
    tokens_b, old_b = tokens.copy(), old.copy()
    tokens_b[:, 13:] = rng.integers(3, 24, (R, 3))
    tokens_b[~valid] = rng.integers(3, 24, (int((~valid).sum()), L))
    old_b[mask == 0] = 5.0
    state_b, m_b = update(copy(state), _batch(tokens_b, valid, mask, adv, old_b))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 nnx.to_pure_dict(state_a.model), nnx.to_pure_dict(state_b.model))

    # Zero advantages and no KL: nothing to learn, parameters unchanged.
    if kl_coef == 0:
        state_c, _ = update(copy(state), _batch(tokens, valid, mask, np.zeros(4), old))
        jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(state_c.model), nnx.to_pure_dict(state.model))
    else:
        changed = jax.tree.map(lambda a, b: not np.allclose(a, b), nnx.to_pure_dict(state_a.model),
                               nnx.to_pure_dict(state.model))
        assert any(jax.tree.leaves(changed))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="temperature > 0"):
        GrpoConfig(temperature=0.0)
    with pytest.raises(ValueError, match="inner_epochs"):
        GrpoConfig(inner_epochs=0)
    model, optimizer = _tiny_model()
    graphs, _ = train_state.split(model, optimizer)
    with pytest.raises(ValueError, match="do not split into 3 minibatches"):
        make_grpo_update(graphs, GrpoConfig(minibatches=3), num_rollouts=4)
