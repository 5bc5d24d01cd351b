"""The packed GRPO update: the packing keeps every thread token once with its
mask, log-prob and advantage, and the update on packed rows equals the update
on one thread per row (loss, metrics and parameters)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from apr_jax.data.packing import gather_index, pack_layout
from apr_jax.decode import engine_loop
from apr_jax.model.config import ModelConfig
from apr_jax.model.transformer import Transformer
from apr_jax.rl.grpo import GrpoConfig, UpdateBatch, make_grpo_update
from apr_jax.rl.pack import pack_update_batch
from apr_jax.rl.rollout import RolloutBatch
from apr_jax.training import train_state

N, S, L = 8, 3, 16  # rollouts, thread slots per rollout, row length


def rollout_batch(seed: int = 0) -> RolloutBatch:
    """A host rollout batch: threads of 3..L tokens, a prompt then written
    tokens with an engine-copied token inside, 1..S threads per rollout."""
    rng = np.random.default_rng(seed)
    R = N * S
    rollout_R = np.arange(R) // S
    threads_N = rng.integers(1, S + 1, N)
    valid_R = (np.arange(R) % S) < threads_N[rollout_R]
    length_R = np.where(valid_R, rng.integers(3, L + 1, R), 0).astype(np.int32)
    tokens = rng.integers(3, 24, (R, L)).astype(np.int32)
    role = np.zeros((R, L), np.int8)
    for r in range(R):
        role[r, 2 : length_R[r]] = engine_loop.ROLE_MODEL
        if length_R[r] > 5:
            role[r, 4] = engine_loop.ROLE_JOIN
    role[~valid_R] = engine_loop.ROLE_MODEL  # garbage in unused slots must not count
    tokens[np.arange(L)[None] >= length_R[:, None]] = 0
    logp = np.where(role == engine_loop.ROLE_MODEL, -rng.uniform(0.5, 3.0, (R, L)), 99.0).astype(np.float32)
    z = np.zeros(R, np.int32)
    return RolloutBatch(
        tokens_RxL=tokens,
        role_RxL=role,
        logp_RxL=logp,
        length_R=length_R,
        valid_R=valid_R,
        rollout_R=rollout_R,
        thread_R=np.arange(R) % S,
        parent_R=z - 1,
        depth_R=z,
        stop_R=z,
        written_R=z,
        rounds_R=z,
        spawn_round_R=z,
        threads_N=threads_N.astype(np.int32),
        dropped_children_N=np.zeros(N, np.int32),
        dropped_pool_N=np.zeros(N, np.int32),
    )


@pytest.mark.parametrize("ffd", [False, True])
def test_layout_places_every_sequence_once_inside_its_row(ffd):
    lengths = np.random.default_rng(1).integers(0, 17, 60)
    layout = pack_layout(lengths, 16, first_fit_decreasing=ffd)
    source, column, segment = gather_index(layout, lengths, 16)
    assert (layout.offset_S + lengths <= 16).all()
    for s, n in enumerate(lengths):  # each sequence's tokens, in order, in one row, once
        where = source == s
        assert where.sum() == n and (where.sum(axis=1) > 0).sum() <= 1
        assert sorted(column[where].tolist()) == list(range(n))
        assert (segment[where] == layout.segment_S[s]).all()
    np.testing.assert_array_equal(segment > 0, source >= 0)
    nonempty = source >= 0
    for row in range(layout.num_rows):  # segments run 1, 2, ... left to right; positions restart at 0
        ids = segment[row][nonempty[row]]
        assert (np.diff(ids) >= 0).all()
        for k in np.unique(ids):
            assert (column[row][segment[row] == k] == np.arange((segment[row] == k).sum())).all()
    if ffd:
        assert layout.num_rows <= pack_layout(lengths, 16).num_rows
    with pytest.raises(ValueError, match="seq_len=16"):
        pack_layout([17], 16)


def test_packed_batch_carries_each_token_once_with_its_mask_logp_and_advantage():
    batch = rollout_batch()
    adv_N = np.linspace(-1, 1, N).astype(np.float32)
    keep_N = np.ones(N, bool)
    keep_N[3] = False
    packed = pack_update_batch(batch, adv_N, keep_N, minibatches=2)
    R = N * S
    assert packed.tokens_RxL.shape == (R, L)
    seen = set()
    for k in range(R):
        for t in range(L):
            seg = packed.segment_ids_RxL[k, t]
            if seg == 0:
                assert packed.mask_RxL[k, t] == 0 and packed.adv_RxL[k, t] == 0
                continue
            n = packed.rollout_RxL[k, t]
            assert (k < R // 2) == (n < N // 2)  # a minibatch's rows hold its rollouts only
            j = packed.positions_RxL[k, t]
            # The source thread: the slot whose tokens match from this segment's start.
            start = t - j
            seg_tokens = packed.tokens_RxL[k, start : start + (packed.segment_ids_RxL[k, start:] == seg).sum()]
            rows = [
                r
                for r in np.flatnonzero(batch.rollout_R == n)
                if batch.length_R[r] == len(seg_tokens) and (batch.tokens_RxL[r, : len(seg_tokens)] == seg_tokens).all()
            ]
            assert len(rows) == 1
            r = rows[0]
            seen.add((r, j))
            assert packed.tokens_RxL[k, t] == batch.tokens_RxL[r, j]
            assert packed.mask_RxL[k, t] == float(batch.role_RxL[r, j] == engine_loop.ROLE_MODEL)
            assert packed.old_logp_RxL[k, t] == batch.logp_RxL[r, j]
            assert packed.adv_RxL[k, t] == adv_N[n]
    want = {
        (r, j) for r in range(R) if batch.valid_R[r] and keep_N[batch.rollout_R[r]] for j in range(batch.length_R[r])
    }
    assert seen == want
    np.testing.assert_array_equal(packed.valid_R, packed.segment_ids_RxL.max(axis=1) > 0)
    # Threads fill the first rows of each minibatch; a few rows hold them all.
    for m in range(2):
        v = packed.valid_R[m * R // 2 : (m + 1) * R // 2]
        assert v[: v.sum()].all() and v.sum() < (batch.valid_R & keep_N[batch.rollout_R]).reshape(2, -1)[m].sum()


def _model_state():
    mcfg = ModelConfig.from_config(
        dict(
            num_layers=1,
            d_model=16,
            num_heads=2,
            num_kv_heads=1,
            d_ff=32,
            max_len=L,
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
    graphs, state = train_state.split(model, nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param))
    ref = Transformer(mcfg, rngs=nnx.Rngs(1))
    return graphs, dataclasses.replace(state, ref=train_state.frozen_params(nnx.state(ref), graphs))


def test_packed_update_equals_unpacked_update():
    """Threads of 3..16 tokens, unused slots, a dropped rollout, a KL term,
    2 epochs x 2 minibatches x 2 microbatches: loss, metrics and parameters
    agree to float32 rounding (rtol 1e-5)."""
    graphs, state = _model_state()
    batch = rollout_batch()
    adv_N = np.random.default_rng(2).normal(size=N).astype(np.float32)
    keep_N = np.arange(N) != 5
    cfg = GrpoConfig(kl_coef=0.1, clip_low=0.1, clip_high=0.1, inner_epochs=2, minibatches=2, microbatches=2)
    update = make_grpo_update(graphs, cfg, num_rollouts=N)
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731  (the update donates its state)
    device = jax.tree.map(jnp.asarray, batch)
    plain_state, plain = update(copy(state), UpdateBatch.from_rollout(device, adv_N, keep_N), None)
    packed_state, packed = update(copy(state), pack_update_batch(batch, adv_N, keep_N, minibatches=2), None)
    assert bool(plain["finite"]) and bool(packed["finite"])
    for key in ("loss", "policy_loss", "kl", "clip_fraction", "ratio_mean", "ratio_max", "grad_norm"):
        np.testing.assert_allclose(float(packed[key]), float(plain[key]), rtol=1e-5, atol=1e-7, err_msg=key)
    assert float(plain["loss"]) != 0 and float(plain["clip_fraction"]) > 0  # the comparison has teeth
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        nnx.to_pure_dict(packed_state.model),
        nnx.to_pure_dict(plain_state.model),
    )
    moved = jax.tree.map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
        nnx.to_pure_dict(packed_state.model),
        nnx.to_pure_dict(state.model),
    )
    assert max(jax.tree.leaves(moved)) > 1e-3
    # Padding share of the forwards: rows of the microbatches that hold a thread.
    kept = batch.valid_R & keep_N[batch.rollout_R]
    real = batch.length_R[kept].sum()
    assert float(packed["update_padding"]) <= float(plain["update_padding"])
    pk = pack_update_batch(batch, adv_N, keep_N, minibatches=2)
    active = pk.valid_R.reshape(4, -1).any(axis=1).sum()
    np.testing.assert_allclose(float(packed["update_padding"]), 1 - real / (active * (N * S // 4) * L), rtol=1e-6)
