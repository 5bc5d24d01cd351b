"""Tests for apr_jax.runtime.sharding on eight virtual CPU devices."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from helpers.tiny import tiny_model_config
from jax.sharding import PartitionSpec as P

from apr_jax.model import Transformer
from apr_jax.model.transformer import CACHE_AXES
from apr_jax.runtime import sharding

CFG = tiny_model_config()


def test_eight_devices():
    assert jax.device_count() == 8


# --- mesh config ----------------------------------------------------------


def test_mesh_config_from_config_fills_minus_one():
    section = ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=1))
    mesh = sharding.make_mesh(sharding.MeshConfig.from_config(section))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert mesh.axis_names == sharding.MESH_AXES


@pytest.mark.parametrize(
    "sizes,message",
    [
        ((2, 2, 1), "multiply to 4, but there are 8 devices"),
        ((-1, 3, 1), "not divisible by 3"),
        ((-1, -1, 1), "at most one mesh axis may be -1"),
        ((0, 1, 1), "mesh.data"),
    ],
)
def test_mesh_config_errors(sizes, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(sharding.MeshConfig(*sizes))


# --- logical rules --------------------------------------------------------


def test_logical_to_spec_rules():
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    assert sharding.logical_to_spec(("embed", "mlp"), mesh) == P("fsdp", "tensor")
    assert sharding.logical_to_spec(("activation_batch", "activation_length", "activation_embed"), mesh) == P(
        ("data", "fsdp"), None, None
    )
    # A mesh axis is used once: batch takes fsdp, so embed stays unsharded.
    assert sharding.logical_to_spec(("activation_batch", "embed"), mesh) == P(("data", "fsdp"), None)
    # Axes that do not divide the dimension are dropped; size-1 axes are left out.
    assert sharding.logical_to_spec(("batch", "vocab"), mesh, shape=(2, 7)) == P("data", None)
    flat = sharding.make_mesh(sharding.MeshConfig(8, 1, 1))
    assert sharding.logical_to_spec(("embed", "heads"), flat) == P(None, None)
    with pytest.raises(ValueError, match="no rule"):
        sharding.logical_to_spec(("nonsense",), mesh)
    with pytest.raises(ValueError, match="do not match array shape"):
        sharding.logical_to_spec(("embed",), mesh, shape=(2, 3))


def test_constrain_is_a_no_op_without_mesh():
    x = jnp.ones((4, 4))
    assert sharding.constrain(x, ("activation_batch", "activation_embed")) is x


# --- sharded training step equals the single-device one ---------------------


def _batch(batch=8, length=12):
    tokens = jax.random.randint(jax.random.key(5), (batch, length), 0, CFG.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    segments = jnp.ones((batch, length), jnp.int32).at[:, 8:].set(2).at[0, 10:].set(0)
    return tokens, positions, segments


def _loss(model, tokens, positions, segments):
    logits = model(tokens, positions, segments)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], axis=-1)[..., 0]
    return -jnp.sum(logp * (segments != 0)) / jnp.sum(segments != 0)


_step = nnx.jit(nnx.value_and_grad(_loss))


@pytest.fixture(scope="module")
def reference():
    return _step(Transformer(CFG, rngs=nnx.Rngs(0)), *_batch())


@pytest.mark.parametrize("sizes", [(2, 4, 1), (2, 2, 2)])
def test_sharded_loss_and_grads_match_single_device(reference, sizes):
    mesh = sharding.make_mesh(sharding.MeshConfig(*sizes))
    model = sharding.shard_model(Transformer(CFG, rngs=nnx.Rngs(0)), mesh)
    gate = model.blocks[0].mlp.gate_DxF.get_value()
    expected = P("fsdp", "tensor") if sizes[2] > 1 else P("fsdp", None)
    assert gate.sharding.spec == expected and len(gate.addressable_shards) == 8
    assert gate.addressable_shards[0].data.shape == (32 // sizes[1], 64 // sizes[2])
    batch = jax.device_put(_batch(), sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        loss, grads = _step(model, *batch)
    np.testing.assert_allclose(loss, reference[0], rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(reference[1])):
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_model_state_shardings_and_create_sharded_model():
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    model = sharding.create_sharded_model(lambda: Transformer(CFG, rngs=nnx.Rngs(0)), mesh)
    specs = sharding.model_state_shardings(nnx.state(model), mesh)
    assert specs.blocks[0].attn.q_DxNxH.get_value().spec == P("fsdp", "tensor", None)
    assert specs.embed_VxD.get_value().spec == P("tensor", "fsdp")
    assert specs.final_norm.scale.get_value().spec == P(None)
    q = model.blocks[0].attn.q_DxNxH.get_value()
    assert q.sharding.spec == P("fsdp", "tensor", None)
    eager = Transformer(CFG, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(q, eager.blocks[0].attn.q_DxNxH.get_value(), atol=1e-6)


def test_sharded_decode_matches_unsharded():
    model = Transformer(CFG, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (4, 3), 0, CFG.vocab_size)
    positions = jnp.array([[0, 1, 2], [0, 1, -1], [0, -1, -1], [0, 1, 2]], jnp.int32)
    decode = nnx.jit(lambda m, t, p, c: m.decode(t, p, c))
    want, _ = decode(model, tokens, positions, model.init_cache(4, 8))
    mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
    sharding.shard_model(model, mesh)
    cache = model.init_cache(4, 8)
    cache_sharding = sharding.logical_to_sharding(CACHE_AXES, mesh, cache.k.shape)
    cache = jax.device_put(cache, cache_sharding)
    with jax.set_mesh(mesh):
        got, new_cache = decode(model, tokens, positions, cache)
    assert cache_sharding.spec == P("tensor", None, ("data", "fsdp"), None, None)
    assert new_cache.k.sharding.is_equivalent_to(cache_sharding, 5)
    np.testing.assert_allclose(got, want, atol=1e-5)


# --- multi-host helpers ---------------------------------------------------


def test_global_batch_from_single_process():
    mesh = sharding.make_mesh(sharding.MeshConfig(4, 2, 1))
    local = {"tokens": np.arange(16 * 3).reshape(16, 3), "weights": np.ones(16, np.float32)}
    batch = sharding.global_batch_from_process(local, mesh)
    assert batch["tokens"].shape == (16, 3)
    assert batch["tokens"].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(batch["tokens"], local["tokens"])
    with pytest.raises(ValueError, match="'tokens'"):
        sharding.global_batch_from_process({"tokens": np.zeros((6, 3))}, mesh)


def test_initialize_distributed_is_a_no_op_locally(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert sharding.initialize_distributed() is False
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS"):
        sharding.initialize_distributed()
