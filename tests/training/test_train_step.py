"""The jitted SFT step: sharded equals single-device, accumulation equals one
big batch, and a tiny batch can be memorised."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from apr_jax.config.loading import load_run_config
from apr_jax.runtime import sharding
from apr_jax.training.train_step import build_train_step

VOCAB = 64
TINY = [
    "config.model.num_layers=2",
    "config.model.d_model=32",
    "config.model.num_heads=4",
    "config.model.num_kv_heads=2",
    "config.model.d_ff=64",
    "config.train.warmup_steps=0",
]


def random_batch(rows=16, length=32, seed=0):
    rng = np.random.default_rng(seed)
    segments = np.ones((rows, length), np.int32)
    segments[:, length // 2 :] = 2  # two packed segments per row
    segments[0, -4:] = 0  # some padding
    positions = np.where(segments == 1, np.arange(length), np.arange(length) - length // 2)
    return {
        "tokens": rng.integers(4, VOCAB, (rows, length)).astype(np.int32),
        "loss_mask": (rng.random((rows, length)) < 0.7).astype(np.int32),
        "segment_ids": segments,
        "positions": positions.astype(np.int32),
    }


def run_steps(overrides, devices, batch, steps=2):
    config = load_run_config(None, TINY + overrides)
    mesh = sharding.make_mesh(sharding.MeshConfig.from_config(config.mesh), devices=devices)
    _, _, state, step = build_train_step(config, VOCAB, mesh)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, sharding.global_batch_from_process(batch, mesh), jnp.int32(config.train.steps))
        losses.append(float(metrics["loss"]))
    params = jax.device_get(nnx.to_pure_dict(state.model))
    return losses, params, state


def test_sharded_step_matches_single_device():
    batch = random_batch()
    single_losses, single_params, _ = run_steps(
        ["config.mesh.data=1", "config.mesh.fsdp=1", "config.mesh.tensor=1"], jax.devices()[:1], batch
    )
    mesh_losses, mesh_params, state = run_steps(
        ["config.mesh.data=2", "config.mesh.fsdp=4", "config.mesh.tensor=1"], jax.devices(), batch
    )
    np.testing.assert_allclose(mesh_losses, single_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), mesh_params, single_params)
    # Parameters really are split over the fsdp axis.
    embed = nnx.to_pure_dict(state.model)["embed_VxD"]
    assert len({str(s.index) for s in embed.addressable_shards}) > 1


def test_gradient_accumulation_equals_full_batch():
    batch = random_batch()
    one = ["config.mesh.data=1"]
    full, full_params, _ = run_steps(one + ["config.train.grad_accum=1"], jax.devices()[:1], batch)
    accum, accum_params, _ = run_steps(one + ["config.train.grad_accum=2"], jax.devices()[:1], batch)
    np.testing.assert_allclose(accum, full, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), accum_params, full_params)


def test_overfits_a_tiny_batch():
    batch = random_batch(rows=8, length=16, seed=1)
    losses, _, _ = run_steps(
        ["config.train.lr=1e-2", "config.train.steps=200", "config.train.weight_decay=0.0", "config.mesh.data=1"],
        jax.devices()[:1],
        batch,
        steps=200,
    )
    assert losses[0] > 3.0
    assert losses[-1] < 0.05, losses[-10:]


def test_non_finite_step_leaves_state_unchanged():
    batch = random_batch()
    config = load_run_config(None, TINY + ["config.train.lr=1e30", "config.train.grad_clip=0.0", "config.mesh.data=1"])
    mesh = sharding.make_mesh(sharding.MeshConfig.from_config(config.mesh), jax.devices()[:1])
    _, _, state, step = build_train_step(config, VOCAB, mesh)
    finite = []
    for _ in range(4):
        before = jax.device_get(nnx.to_pure_dict(state.model))
        state, metrics = step(state, sharding.global_batch_from_process(batch, mesh), jnp.int32(config.train.steps))
        finite.append(bool(metrics["finite"]))
        if not finite[-1]:
            after = jax.device_get(nnx.to_pure_dict(state.model))
            jax.tree.map(np.testing.assert_array_equal, after, before)
            break
    assert not all(finite), "a 1e30 learning rate should produce a non-finite step"
