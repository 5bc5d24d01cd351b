"""GRPO arithmetic on hand-made batches, and the jitted update on a tiny model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from apr_jax.decode import engine_loop
from apr_jax.model.config import ModelConfig
from apr_jax.model.transformer import Transformer
from apr_jax.rl.grpo import (
    GrpoConfig,
    UpdateBatch,
    group_advantages,
    groups_with_signal,
    grpo_loss,
    grpo_token_terms,
    make_grpo_update,
    rollout_token_weights,
    target_logprobs,
)
from apr_jax.rl.pack import pack_update_batch
from apr_jax.rl.rollout import RolloutBatch
from apr_jax.training import train_state


def test_group_advantages_by_hand():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 1.0, 1.0]])
    plain = np.asarray(group_advantages(rewards, "drgrpo"))
    np.testing.assert_allclose(plain, [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [1, -1, 0, 0]])
    normed = np.asarray(group_advantages(rewards, "grpo"))
    np.testing.assert_allclose(normed[0], [1, -1, -1, 1], rtol=1e-5)
    np.testing.assert_allclose(normed[2], [np.sqrt(2), -np.sqrt(2), 0, 0], rtol=1e-5)
    # A group whose samples all got the same reward: exactly zero, never NaN.
    assert np.all(normed[1] == 0) and np.isfinite(normed).all()
    assert np.all(np.asarray(group_advantages(np.zeros((2, 3)))) == 0)
    np.testing.assert_array_equal(np.asarray(group_advantages(rewards)), normed)  # grpo by default
    with pytest.raises(ValueError, match="advantage 'ppo' is not one of grpo, drgrpo"):
        group_advantages(rewards, "ppo")
    with pytest.raises(ValueError, match="advantage 'ppo' is not one of grpo, drgrpo"):
        GrpoConfig(advantage="ppo")


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
        tokens_RxL=np.ones((R, L), np.int32),
        role_RxL=role_RxL,
        logp_RxL=np.zeros((R, L), np.float32),
        length_R=np.full(R, L, np.int32),
        valid_R=valid_R,
        rollout_R=rollout_R,
        thread_R=np.arange(R) % 2,
        parent_R=z - 1,
        depth_R=z,
        stop_R=z,
        written_R=z,
        rounds_R=z,
        spawn_round_R=z,
        threads_N=np.array([2, 2, 2, 1, 2, 2]),
        dropped_children_N=np.zeros(6),
        dropped_pool_N=np.zeros(6),
    )
    keep_N = np.repeat(groups_with_signal(rewards), 2)
    kept = UpdateBatch.from_rollout(batch, np.zeros(6), keep_N)
    assert np.asarray(kept.valid_R).tolist() == [False] * 4 + [True, True, True, False] + [False] * 4
    np.testing.assert_array_equal(np.asarray(kept.mask_RxL).sum(axis=1), [0] * 4 + [3, 3, 3, 0] + [0] * 4)
    everything = UpdateBatch.from_rollout(batch, np.zeros(6))
    assert np.asarray(everything.valid_R).tolist() == valid_R.tolist()
    # Only the kept group's rollouts share the per-rollout mean.
    w = np.asarray(rollout_token_weights(kept.mask_RxL, jnp.asarray(rollout_R)[:, None], 6))
    np.testing.assert_allclose(w.sum(axis=1), [0] * 4 + [0.25, 0.25, 0.5, 0] + [0] * 4)


def test_rollout_token_weights_average_per_rollout_then_over_rollouts():
    # Rollout 0 has two rows (3 + 1 written tokens), rollout 1 one row (2 tokens),
    # rollout 2 wrote nothing and must not count.
    mask = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], np.float32)
    rollout = np.array([0, 0, 1, 2])
    w = np.asarray(rollout_token_weights(jnp.asarray(mask), jnp.asarray(rollout)[:, None], 3))
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
    adv = np.array([[1.0], [-1.0]], np.float32)
    t = jax.tree.map(
        np.asarray,
        grpo_token_terms(jnp.asarray(new), jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.ones((2, 3)), cfg),
    )
    # A > 0: min(r, clip(r, 0.8, 1.3)) -> 1, 1.3, 0.5;  A < 0: -max(r, clip(r)) -> -1, -1.5, -0.8.
    np.testing.assert_allclose(t["policy_loss"], [[-1, -1.3, -0.5], [1, 1.5, 0.8]], rtol=1e-6)
    np.testing.assert_allclose(t["clip_fraction"], [[0, 1, 0], [0, 0, 1]])
    k3 = lambda r: np.exp(-np.log(r)) + np.log(r) - 1  # noqa: E731  ref/new = 1/r
    np.testing.assert_allclose(t["kl"][0], [0, k3(1.5), k3(0.5)], rtol=1e-5)
    np.testing.assert_allclose(t["loss"], t["policy_loss"] + 0.5 * t["kl"], rtol=1e-6)
    weights = np.full((2, 3), 1 / 6, np.float32)
    loss, stats = grpo_loss(jnp.asarray(new), jnp.asarray(old), None, jnp.asarray(adv), jnp.asarray(weights), cfg)
    assert np.isclose(float(loss), t["policy_loss"].mean()) and float(stats["kl"]) == 0.0
    assert np.isclose(float(stats["ratio_mean"]), 1.0) and np.isclose(float(stats["ratio_max"]), 1.5)
    assert np.isclose(float(stats["clip_fraction"]), 2 / 6)


def test_adversarial_logprobs_at_masked_positions_give_finite_loss_and_gradients():
    """Old and reference log-probs at prompts, joins and padding can hold
    anything (huge, infinite, NaN); none of it may reach the loss."""
    cfg = GrpoConfig(kl_coef=0.5)
    logits = jax.random.normal(jax.random.key(0), (3, 6, 9))
    tokens = jax.random.randint(jax.random.key(1), (3, 6), 0, 9)
    mask = jnp.array([[0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 1, 1], [0, 0, 0, 0, 0, 0]], jnp.float32)
    weights = rollout_token_weights(mask, jnp.array([[0], [1], [2]]), 3)
    adv = jnp.array([[1.0], [-0.5], [2.0]])
    old = np.full((3, 6), -2.0, np.float32)
    ref = np.full((3, 6), -2.5, np.float32)
    garbage = np.array([1e4, -1e4, np.inf, -np.inf, np.nan, 3e38], np.float32)
    masked = np.asarray(mask) == 0
    old_bad, ref_bad = old.copy(), ref.copy()
    old_bad[masked] = np.resize(garbage, masked.sum())
    ref_bad[masked] = np.resize(garbage[::-1], masked.sum())

    def loss(lg, o, r):
        return grpo_loss(target_logprobs(lg, tokens), jnp.asarray(o), jnp.asarray(r), adv, weights, cfg)

    (clean, clean_stats), clean_grad = jax.value_and_grad(loss, has_aux=True)(logits, old, ref)
    (value, stats), grad = jax.value_and_grad(loss, has_aux=True)(logits, old_bad, ref_bad)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    assert all(np.isfinite(float(v)) for v in stats.values())
    assert float(value) == float(clean) and float(stats["ratio_max"]) == float(clean_stats["ratio_max"])
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(clean_grad))


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
    rollout = jnp.array([[0], [0], [1]])
    weights = rollout_token_weights(mask, rollout, 2)
    old = jnp.full((3, 6), -2.0)
    ref = jnp.full((3, 6), -2.5)
    adv = jnp.array([[1.0], [-0.5], [2.0]])

    def loss(lg):
        return grpo_loss(target_logprobs(lg, tokens), old, ref, adv, weights, cfg)[0]

    g = np.asarray(jax.grad(loss)(logits))
    # Logits at j predict token j + 1: only those whose target is model-written get gradient.
    counted = np.zeros((3, 6), bool)
    counted[:, :-1] = np.asarray(mask)[:, 1:] > 0
    assert np.all(g[~counted] == 0)
    assert np.all(np.abs(g[counted]).sum(-1) > 0)


def _tiny_model():
    cfg = ModelConfig.from_config(
        dict(
            num_layers=1,
            d_model=16,
            num_heads=2,
            num_kv_heads=1,
            d_ff=32,
            max_len=16,
            tie_embeddings=True,
            param_dtype="float32",
            compute_dtype="float32",
            attention="xla",
            remat=False,
            rope_theta=10000.0,
        ),
        vocab_size=24,
    )
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    return model, optimizer


def _batch(tokens, valid, mask, adv, old_logp):
    R, L = tokens.shape
    length = np.full((R,), L, np.int32)
    seg = (valid[:, None] & (np.arange(L)[None] < length[:, None])).astype(np.int32)
    return UpdateBatch(
        jnp.asarray(tokens),
        jnp.broadcast_to(jnp.arange(L), (R, L)),
        jnp.asarray(seg),
        jnp.asarray(mask, jnp.float32),
        jnp.asarray(old_logp),
        jnp.asarray(valid),
        jnp.asarray(np.arange(R) // 2),
        jnp.asarray(adv, jnp.float32),
    )


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
    state_a, m_a = update(copy(state), _batch(tokens, valid, mask, adv, old), None)
    assert bool(m_a["finite"]) and np.isfinite(float(m_a["loss"]))

    # Change what must not matter: tokens after the written span, the old
    # log-probs of unmasked tokens and everything in padding rows.
    tokens_b, old_b = tokens.copy(), old.copy()
    tokens_b[:, 13:] = rng.integers(3, 24, (R, 3))
    tokens_b[~valid] = rng.integers(3, 24, (int((~valid).sum()), L))
    old_b[mask == 0] = np.resize(np.array([1e4, -1e4, np.inf, 5.0], np.float32), int((mask == 0).sum()))
    state_b, m_b = update(copy(state), _batch(tokens_b, valid, mask, adv, old_b), None)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        nnx.to_pure_dict(state_a.model),
        nnx.to_pure_dict(state_b.model),
    )

    # Zero advantages and no KL: nothing to learn, parameters unchanged.
    if kl_coef == 0:
        state_c, _ = update(copy(state), _batch(tokens, valid, mask, np.zeros(4), old), None)
        jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(state_c.model), nnx.to_pure_dict(state.model))
    else:
        changed = jax.tree.map(
            lambda a, b: not np.allclose(a, b), nnx.to_pure_dict(state_a.model), nnx.to_pure_dict(state.model)
        )
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


def test_one_update_matches_a_reference_computation_and_moves_logprobs_by_advantage():
    """Four rollouts of three thread slots (rollout 0: 1 thread, 1: 3, 2: 2,
    3: 1), two minibatches of two microbatches: the update reorders rows
    (whole rollouts per minibatch, valid rows first), or packs them. Its loss and parameters
    after plain SGD must equal a direct computation: per rollout the mean
    over its written tokens of the clipped loss plus the k3 KL, averaged over
    the minibatch's rollouts, one gradient step per minibatch."""
    lr, kl_coef = 0.2, 0.1
    cfg = GrpoConfig(clip_low=0.2, clip_high=0.25, kl_coef=kl_coef, minibatches=2, microbatches=2)
    mcfg = ModelConfig.from_config(
        dict(
            num_layers=1,
            d_model=16,
            num_heads=2,
            num_kv_heads=1,
            d_ff=32,
            max_len=16,
            tie_embeddings=True,
            param_dtype="float32",
            compute_dtype="float32",
            attention="xla",
            remat=False,
            rope_theta=10000.0,
        ),
        vocab_size=24,
    )
    model = Transformer(mcfg, rngs=nnx.Rngs(0))
    graphs, state = train_state.split(model, nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param))
    ref_model = Transformer(mcfg, rngs=nnx.Rngs(1))  # a reference unlike the policy: the KL pulls
    state = dataclasses.replace(state, ref=train_state.frozen_params(nnx.state(ref_model), graphs))

    N, S, L = 4, 3, 16
    R = N * S
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 24, (R, L)).astype(np.int32)
    rollout_R = np.arange(R) // S
    valid = (np.arange(R) % S) < np.array([1, 3, 2, 1])[rollout_R]
    mask = np.zeros((R, L), np.float32)
    for r in range(R):
        start = 3 + r % 4
        mask[r, start : start + 6 + r % 3] = 1
        mask[r, start + 2] = 0  # an engine-copied token inside the written span
    mask[~valid] = 0
    adv_N = np.array([1.0, -0.7, 0.5, -1.2], np.float32)

    params0 = nnx.split(nnx.merge(graphs.model, state.model), nnx.Param, ...)[1]
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def logp_of(params):
        """log p(token j | tokens < j) of every row, straight from the logits."""
        positions = jnp.broadcast_to(jnp.arange(L), (R, L))
        seg = jnp.asarray(valid[:, None] * np.ones((R, L)), jnp.int32)
        logits = nnx.merge(graphdef, params, rest)(jnp.asarray(tokens), positions, seg)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(logp[:, :-1], jnp.asarray(tokens)[:, 1:, None], axis=-1)[..., 0]
        return jnp.concatenate([jnp.zeros((R, 1)), picked], axis=1)

    lp0 = np.asarray(logp_of(params0))
    old = np.where(mask > 0, lp0 + rng.normal(0, 0.3, (R, L)), 1e4).astype(np.float32)  # ratios != 1
    ref_lp = logp_of(state.ref)

    written = (mask > 0) & valid[:, None]  # the counted tokens, flattened in row order below
    owner_TxN = np.eye(N, dtype=np.float32)[np.broadcast_to(rollout_R[:, None], (R, L))[written]]

    def reference_loss(params, in_minibatch_N, old_T):
        lp = logp_of(params)[written]
        ratio = jnp.exp(lp - old_T)
        a = owner_TxN @ adv_N
        policy = -jnp.minimum(ratio * a, jnp.clip(ratio, 0.8, 1.25) * a)
        log_r = ref_lp[written] - lp
        terms = policy + kl_coef * (jnp.exp(log_r) - log_r - 1)
        per_rollout = (owner_TxN.T @ terms) / owner_TxN.sum(axis=0)  # mean over each rollout's tokens
        return (per_rollout * in_minibatch_N).sum() / in_minibatch_N.sum()

    reference_step = jax.jit(jax.value_and_grad(reference_loss))

    def reference_update(old_T):
        losses, params = [], params0
        for in_minibatch_N in ([1, 1, 0, 0], [0, 0, 1, 1]):
            value, grads = reference_step(params, jnp.asarray(in_minibatch_N, jnp.float32), old_T)
            losses.append(float(value))
            params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
        return losses, params

    expected, params = reference_update(old[written])

    seg = (valid[:, None] & np.ones((R, L), bool)).astype(np.int32)
    batch = UpdateBatch(
        jnp.asarray(tokens),
        jnp.broadcast_to(jnp.arange(L), (R, L)),
        jnp.asarray(seg),
        jnp.asarray(mask),
        jnp.asarray(old),
        jnp.asarray(valid),
        jnp.asarray(rollout_R),
        jnp.asarray(adv_N),
    )
    # The same rollout as the engine returns it, for the packed update.
    z = np.zeros(R, np.int32)
    rollout = RolloutBatch(
        tokens_RxL=tokens,
        role_RxL=np.where(mask > 0, engine_loop.ROLE_MODEL, 0).astype(np.int8),
        logp_RxL=old,
        length_R=np.full(R, L, np.int32),
        valid_R=valid,
        rollout_R=rollout_R,
        thread_R=np.arange(R) % S,
        parent_R=z - 1,
        depth_R=z,
        stop_R=z,
        written_R=z,
        rounds_R=z,
        spawn_round_R=z,
        threads_N=np.array([1, 3, 2, 1], np.int32),
        dropped_children_N=np.zeros(N),
        dropped_pool_N=np.zeros(N),
    )
    packed = pack_update_batch(rollout, adv_N, None, minibatches=2)
    update = make_grpo_update(graphs, cfg, num_rollouts=N)
    for update_batch in (batch, packed):
        new_state, metrics = update(jax.tree.map(jnp.array, state), update_batch, None)
        assert bool(metrics["finite"])
        np.testing.assert_allclose(float(metrics["loss"]), np.mean(expected), rtol=1e-5, atol=1e-6)
        updated = nnx.split(nnx.merge(graphs.model, new_state.model), nnx.Param, ...)[1]
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            nnx.to_pure_dict(updated),
            nnx.to_pure_dict(params),
        )
    moved = jax.tree.map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
        nnx.to_pure_dict(updated),
        nnx.to_pure_dict(params0),
    )
    assert max(jax.tree.leaves(moved)) > 1e-3  # the update did something

    # Written tokens of positive-advantage rollouts became likelier, of negative ones less likely.
    lp1 = np.asarray(logp_of(updated))
    for n in range(N):
        rows = (rollout_R == n)[:, None] & (mask > 0)
        change = (lp1[rows] - lp0[rows]).mean()
        assert np.sign(change) == np.sign(adv_N[n]), (n, change)

    # old_logprobs="recompute": the ratio's old log-probs are the update
    # forward's on the sampling parameters (lp0), whatever the engine recorded;
    # the recorded ones only give the gap metrics.
    expected_rc, params_rc = reference_update(lp0[written])
    gap_T = np.abs(old[written] - lp0[written])
    update_rc = make_grpo_update(graphs, dataclasses.replace(cfg, old_logprobs="recompute"), num_rollouts=N)
    for update_batch in (batch, packed):
        new_state, metrics = update_rc(jax.tree.map(jnp.array, state), update_batch, None)
        np.testing.assert_allclose(float(metrics["loss"]), np.mean(expected_rc), rtol=1e-5, atol=1e-6)
        updated = nnx.split(nnx.merge(graphs.model, new_state.model), nnx.Param, ...)[1]
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            nnx.to_pure_dict(updated),
            nnx.to_pure_dict(params_rc),
        )
        np.testing.assert_allclose(float(metrics["logp_gap_mean"]), gap_T.mean(), rtol=1e-4)
        np.testing.assert_allclose(float(metrics["logp_gap_max"]), gap_T.max(), rtol=1e-4)
