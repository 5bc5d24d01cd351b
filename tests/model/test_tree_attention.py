"""tree_flash_attention (Pallas, no T x T array) against the dense reference
``xla_attention(tree_mask_BxTxS(mask))``: random packed tree masks and real
inherit-family trees, forward and gradients in interpret mode on CPU; the
Triton lowering for CUDA and an ahead-of-time TPU compile without hardware."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.inherit import CharEncoder, nested_tree

from apr_jax import aot
from apr_jax.data.tree_sequence import MASK_RANGES, NEVER, tree_sequence
from apr_jax.model import tree_attention
from apr_jax.model.attention import xla_attention
from apr_jax.model.tree_attention import tree_flash_attention
from apr_jax.model.tree_mask import TreeMask, tree_mask_BxTxS

B, N, K, H = 2, 4, 2, 16
HAVE_LIBTPU = aot.libtpu_path() is not None


def random_tree_mask(rng: np.random.Generator, t: int) -> TreeMask:
    """Packed segments in runs with trailing padding (segment 0); per key,
    ranges that are empty, open-ended (``NEVER``) or real intervals, all
    starting after the key (as tree sequences' do: a token never hides
    itself, so every real query sees at least itself)."""
    segment_ids = np.zeros((B, t), np.int32)
    for b in range(B):
        start, segment, end = 0, 1, t - rng.integers(1, t // 4)
        while start < end:
            stop = min(end, start + int(rng.integers(5, t // 2)))
            segment_ids[b, start:stop], start, segment = segment, stop, segment + 1
    kind = rng.integers(0, 3, size=(B, t, MASK_RANGES))  # 0 empty, 1 open-ended, 2 interval
    start = np.arange(t)[None, :, None] + rng.integers(1, t // 2, size=kind.shape)
    stop = start + rng.integers(0, t // 2, size=kind.shape)
    hidden_from = np.where(kind == 0, 0, start).astype(np.int32)
    hidden_until = np.select([kind == 0, kind == 1], [0, NEVER], stop).astype(np.int32)
    return TreeMask(jnp.asarray(segment_ids), jnp.asarray(hidden_from), jnp.asarray(hidden_until))


def real_tree_mask(t: int) -> TreeMask:
    """Row 0: the stitched nested tree, then the linear one; row 1 the other
    way round; each tree its own segment, its ranges shifted with it (as
    ``data.pipeline.place`` packs them), padding after."""
    sequences = {
        join: tree_sequence(nested_tree().with_context("inherit", join), CharEncoder(), join)
        for join in ("stitch", "linear")
    }
    segment_ids = np.zeros((B, t), np.int32)
    hidden = np.zeros((2, B, t, MASK_RANGES), np.int32)
    for row, order in enumerate((("stitch", "linear"), ("linear", "stitch"))):
        offset = 0
        for segment, join in enumerate(order, start=1):
            seq = sequences[join]
            end = offset + len(seq)
            segment_ids[row, offset:end] = segment
            for i, ranges in enumerate((seq.hidden_from_TxR, seq.hidden_until_TxR)):
                hidden[i, row, offset:end] = np.where(ranges >= NEVER, NEVER, ranges + offset)
            offset = end
    assert offset < t and (hidden[1] > hidden[0]).any()
    return TreeMask(jnp.asarray(segment_ids), jnp.asarray(hidden[0]), jnp.asarray(hidden[1]))


def qkv(rng: np.random.Generator, t: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array, jax.Array]:
    shapes = ((B, t, N, H), (B, t, K, H), (B, t, K, H))
    return tuple(jnp.asarray(rng.normal(size=shape), dtype) for shape in shapes)


def assert_forward_matches(mask: TreeMask, block: int, seed: int = 0) -> None:
    """Kernel output equals the dense reference on every real query (1e-5,
    float32); padding queries' outputs are finite."""
    t = mask.segment_ids_BxT.shape[1]
    q, k, v = qkv(np.random.default_rng(seed), t)
    kernel = jax.jit(lambda q, k, v, m: tree_flash_attention(q, k, v, m, platform="cpu", block=block))
    out = np.asarray(kernel(q, k, v, mask))
    ref = np.asarray(xla_attention(q, k, v, tree_mask_BxTxS(mask)))
    real = np.asarray(mask.segment_ids_BxT) != 0
    assert out.shape == ref.shape and np.isfinite(out).all()
    np.testing.assert_allclose(out[real], ref[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t, block", [(100, 32), (200, 64)])
def test_forward_matches_the_dense_reference_on_random_tree_masks(t, block):
    assert_forward_matches(random_tree_mask(np.random.default_rng(t), t), block)


@pytest.mark.parametrize("join_first", ["stitch", "linear"])
def test_forward_matches_the_dense_reference_on_real_trees(join_first):
    mask = real_tree_mask(160)
    if join_first == "linear":  # rows swapped: each layout at both offsets across the two tests
        mask = jax.tree.map(lambda x: x[::-1], mask)
    assert_forward_matches(mask, block=64)


def test_tpu_id_layout_matches_in_interpret_mode(monkeypatch):
    """The ids as the TPU kernels read them (repeated along 128 lanes, 128
    blocks), run in interpret mode."""
    monkeypatch.setitem(tree_attention._SIDE_LANES, "cpu", 128)
    assert_forward_matches(random_tree_mask(np.random.default_rng(1), 200), block=128)


def grads(attention, q, k, v, weights) -> tuple[jax.Array, ...]:
    """d/d(q, k, v) of a weighted sum of the outputs."""
    loss = lambda q, k, v: jnp.sum(attention(q, k, v).astype(jnp.float32) * weights)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("source", ["random", "tree"])
def test_gradients_match_the_dense_reference(source):
    t = 130 if source == "random" else 160
    mask = random_tree_mask(np.random.default_rng(7), t) if source == "random" else real_tree_mask(t)
    rng = np.random.default_rng(3)
    q, k, v = qkv(rng, t)
    real = np.asarray(mask.segment_ids_BxT) != 0
    weights = jnp.asarray(rng.normal(size=q.shape) * real[:, :, None, None], jnp.float32)
    kernel = grads(lambda q, k, v: tree_flash_attention(q, k, v, mask, platform="cpu", block=32), q, k, v, weights)
    dense = grads(lambda q, k, v: xla_attention(q, k, v, tree_mask_BxTxS(mask)), q, k, v, weights)
    for name, got, want in zip("qkv", kernel, dense):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-4, err_msg=f"d{name}")


def test_bfloat16_inputs_give_bfloat16_outputs_close_to_the_reference():
    t = 100
    mask = random_tree_mask(np.random.default_rng(5), t)
    q, k, v = qkv(np.random.default_rng(6), t, jnp.bfloat16)
    out = jax.jit(lambda q, k, v: tree_flash_attention(q, k, v, mask, platform="cpu", block=32))(q, k, v)
    ref = xla_attention(*(x.astype(jnp.float32) for x in (q, k, v)), tree_mask_BxTxS(mask))
    real = np.asarray(mask.segment_ids_BxT) != 0
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32)[real], np.asarray(ref)[real], atol=3e-2)


def abstract_inputs(b, t, n, k, h, dtype, sharding=None) -> tuple:
    spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)
    ids = TreeMask(spec((b, t), jnp.int32), spec((b, t, MASK_RANGES), jnp.int32), spec((b, t, MASK_RANGES), jnp.int32))
    return spec((b, t, n, h), dtype), spec((b, t, k, h), dtype), spec((b, t, k, h), dtype), ids


def forward_and_grad(platform: str, block: int):
    """The attention and its (q, k, v) gradient as functions of (q, k, v, mask)."""
    forward = lambda q, k, v, m: tree_flash_attention(q, k, v, m, platform=platform, block=block)
    loss = lambda q, k, v, m: jnp.sum(forward(q, k, v, m).astype(jnp.float32))
    return forward, jax.grad(loss, argnums=(0, 1, 2))


def test_triton_kernels_lower_for_cuda():
    """Forward (one kernel) and backward (forward, dq, dk/dv) become Triton
    calls for CUDA on this host: Pallas builds the Triton IR at lowering, so
    block shapes and ops are checked here (compiling it needs a GPU). T=192
    is no power of two and head_dim=48 is padded to 64."""
    args = abstract_inputs(B, 192, N, K, 48, jnp.bfloat16)
    forward, grad = forward_and_grad("gpu", 64)
    for fn, kernels in ((forward, 1), (grad, 3)):
        hlo = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        assert hlo.count("xla.gpu.triton") == kernels, hlo.count("xla.gpu.triton")
    assert all(f"tree_flash_{name}" in hlo for name in ("forward", "dq", "dkv"))


@pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu not installed (see apr_jax/aot.py); the TPU compile needs it")
@pytest.mark.parametrize("kv_heads", [16, 4])
def test_mosaic_kernels_compile_for_tpu_without_a_t_by_t_buffer(kv_heads):
    """Ahead-of-time compile for one v5p device of a 228M-like layer's
    attention (bf16, T=4096, 16 heads of 64; and grouped-query), forward and
    backward: Mosaic kernels, and temporaries far below one float32 T x T
    buffer per head."""
    t = 4096
    devices = aot.topology_devices(aot.topology_spec("v5p-8"))
    args = abstract_inputs(1, t, 16, kv_heads, 64, jnp.bfloat16, jax.sharding.SingleDeviceSharding(devices[0]))
    dense_bytes = t * t * 4 * 16
    for fn in forward_and_grad("tpu", 128):
        compiled = jax.jit(fn).trace(*args).lower().compile()
        assert "tpu_custom_call" in compiled.as_text()
        temporaries = aot.memory_report(compiled)["temporaries"]
        assert 0 < temporaries < dense_bytes / 4, (temporaries, dense_bytes)


@pytest.mark.parametrize("implementation", ["splash", "triton"])
def test_training_attention_sends_tree_masks_to_the_kernel_under_a_mesh(implementation, monkeypatch):
    """``packed_attention`` with a flash kernel chosen runs the tree kernel
    (interpreted here), split over a mesh's batch devices, and matches xla."""
    from apr_jax.model import tree_attention
    from apr_jax.model.attention import packed_attention
    from apr_jax.runtime import sharding

    calls = []
    kernel = tree_attention.tree_flash_attention

    def counted(q, *args, **kwargs):
        calls.append((q.shape, kwargs["platform"]))
        return kernel(q, *args, **kwargs)

    monkeypatch.setattr(tree_attention, "tree_flash_attention", counted)
    rng = np.random.default_rng(3)
    masks = [random_tree_mask(rng, 96) for _ in range(2)]
    mask = jax.tree.map(lambda *x: jnp.concatenate(x), *masks)
    q, k, v = (jnp.concatenate(pair) for pair in zip(qkv(rng, 96), qkv(rng, 96)))
    want = np.asarray(packed_attention(q, k, v, mask, "xla", platform="cpu"))
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=1, tensor=1), jax.devices()[:2])
    with jax.set_mesh(mesh):
        got = np.asarray(jax.jit(lambda *a: packed_attention(*a, implementation, platform="cpu"))(q, k, v, mask))
    real = np.asarray(mask.segment_ids_BxT) != 0
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)
    assert q.shape[0] == 4 and calls == [((2, 96, 4, 16), "interpret")]  # half the rows per device, interpreted
