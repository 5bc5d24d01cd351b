"""Attention kernels, chosen per target platform.

- ``xla``: einsum with an explicit boolean mask; runs everywhere, handles any
  mask (packed training segments, per-row cache positions). Fully masked rows
  (padding) get a finite uniform distribution, never NaN. Its float32 logits
  are ``[B, heads, T, T]``.
- ``triton`` (GPU): Pallas's Triton flash-attention kernel (forward and
  backward) with causal masking and the segment ids taken natively, so no
  ``T x T`` tensor exists. Off GPU it runs in Pallas interpret mode (correct
  but slow; used by the tests).
- ``cudnn`` (GPU, bf16 only): ``jax.nn.dot_product_attention(implementation=
  "cudnn", is_causal=True)`` with the segment-equality mask as a dense
  ``[B, 1, T, T]`` input (and a bias gradient of that size in the backward).
- ``splash`` (TPU): the Pallas splash-attention kernel with a causal mask and
  segment ids. Off TPU it runs in Pallas interpret mode.

``auto`` picks ``triton`` on GPU, ``splash`` on TPU and ``xla`` elsewhere.
The flash kernels run under ``shard_map`` when a mesh is set (batch and heads
split as the activations are) and pad the sequence to their block size with
segment 0. A packed forward whose dense tensor (``xla`` logits, ``cudnn``
mask) would exceed ``DENSE_LIMIT_BYTES`` is a ValueError naming
``model.attention``: never a silent fallback.

Only the packed training forward uses the flash kernels; cached decoding
always uses the ``xla`` kernel because its mask depends on per-row positions.
Padding tokens (segment 0) may attend among themselves in the flash kernels;
their outputs are never used.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from apr_jax import sharding

_MASKED = -1e30
IMPLEMENTATIONS = ("xla", "triton", "cudnn", "splash")
# Native platform of each flash kernel; elsewhere it runs in interpret mode.
_KERNEL_PLATFORM = {"triton": "gpu", "splash": "tpu"}
# The largest dense per-layer tensor a packed forward may build (global bytes).
DENSE_LIMIT_BYTES = 2 * 2 ** 30


def resolve_implementation(name: str, compute_dtype: jnp.dtype, platform: str) -> str:
    """The kernel for the packed forward on ``platform`` ("cpu", "gpu", "tpu");
    "auto" picks the platform's flash kernel. ValueError for a kernel that
    cannot run this compute dtype."""
    if name == "auto":
        name = {"gpu": "triton", "tpu": "splash"}.get(platform, "xla")
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention={name!r} is not one of auto, {', '.join(IMPLEMENTATIONS)}")
    if name == "cudnn" and jnp.dtype(compute_dtype) not in (jnp.bfloat16, jnp.float16):
        raise ValueError("model.attention='cudnn' needs model.compute_dtype='bfloat16'; "
                         f"got {jnp.dtype(compute_dtype).name} (use 'triton' or 'xla')")
    return name


def interpret_kernel(implementation: str, platform: str) -> bool:
    """Whether a Pallas kernel runs in interpret mode (not on its own platform)."""
    return implementation in _KERNEL_PLATFORM and _KERNEL_PLATFORM[implementation] != platform


def check_dense_size(implementation: str, num_bytes: int) -> None:
    """One-line ValueError when a dense attention tensor is over ``DENSE_LIMIT_BYTES``."""
    if num_bytes > DENSE_LIMIT_BYTES:
        raise ValueError(
            f"model.attention={implementation!r} would build a {num_bytes / 2 ** 30:.1f} GiB "
            f"T x T tensor per layer (limit {DENSE_LIMIT_BYTES / 2 ** 30:.0f} GiB); set "
            "model.attention=auto (triton on GPU, splash on TPU) or shrink batch/seq_len")


def segment_mask_BxTxS(segment_ids_BxT: jax.Array) -> jax.Array:
    """Token i sees token j iff j <= i, same segment, and segment_ids[i] != 0."""
    t = segment_ids_BxT.shape[1]
    causal_TxS = jnp.tril(jnp.ones((t, t), dtype=bool))
    same = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
    real = (segment_ids_BxT != 0)[:, :, None]
    return causal_TxS[None] & same & real


def cache_mask_BxTxS(positions_BxT: jax.Array, num_slots: int) -> jax.Array:
    """Query at position p sees cache slots 0..p of its row; p < 0 (padding) sees none."""
    slots_S = jnp.arange(num_slots, dtype=positions_BxT.dtype)
    return (slots_S[None, None, :] <= positions_BxT[:, :, None]) & (positions_BxT >= 0)[:, :, None]


def xla_attention(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array,
                  mask_BxTxS: jax.Array) -> jax.Array:
    """Grouped-query softmax attention with a boolean mask; softmax in float32."""
    b, t, n, h = q_BxTxNxH.shape
    k = k_BxSxKxH.shape[2]
    q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, k, n // k, h) * jnp.asarray(h ** -0.5, q_BxTxNxH.dtype)
    logits = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH,
                        preferred_element_type=jnp.float32)
    logits = jnp.where(mask_BxTxS[:, None, None], logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_BxSxKxH.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v_BxSxKxH)
    return out.reshape(b, t, n, h)


def cudnn_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT) -> jax.Array:
    """cuDNN flash attention: causal natively, segments as a dense mask."""
    b, t = segment_ids_BxT.shape
    check_dense_size("cudnn", b * t * t * q_BxTxNxH.dtype.itemsize)
    same_Bx1xTxT = (segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask=same_Bx1xTxT,
                                        is_causal=True, implementation="cudnn")


def flash_length(t: int, implementation: str, interpret: bool) -> int:
    """Sequence length a flash kernel runs at: a multiple of 128 (a power of
    two from 16 below that, for Triton's tiles); interpreted splash takes any."""
    if implementation == "splash" and interpret:
        return t
    if implementation == "triton" and t < 128:
        return max(16, 1 << (t - 1).bit_length())
    return -(-t // 128) * 128


def _pad_length(x: jax.Array, length: int) -> jax.Array:
    """Zero-pads axis 1 (time) to ``length``; padding gets segment id 0."""
    if x.shape[1] == length:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, length - x.shape[1])
    return jnp.pad(x, widths)


def _per_shard(local: Callable, q, k, v, segment_ids_BxT, head_axis: int) -> jax.Array:
    """``local(q, k, v, segment_ids)`` on each device's batch and head shard
    (``shard_map``) under a mesh; directly without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return local(q, k, v, segment_ids_BxT)
    axes = [None] * 4
    axes[0], axes[head_axis] = "activation_batch", "activation_heads"
    qkv_spec = sharding.logical_to_spec(tuple(axes), mesh, q.shape)
    seg_spec = PartitionSpec(qkv_spec[0], None)
    return jax.shard_map(local, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec),
                         out_specs=qkv_spec, check_vma=False)(q, k, v, segment_ids_BxT)


def _splash_block(t: int) -> int:
    for block in (512, 256, 128):
        if t % block == 0:
            return block
    return t  # interpret mode only (flash_length gives multiples of 128 on TPU)


def splash_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT,
                     interpret: bool = False) -> jax.Array:
    """Pallas splash attention (TPU; ``interpret=True`` runs it anywhere, slowly).
    ``T`` must be a multiple of 128 unless interpreted (see ``flash_length``)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, n, h = q_BxTxNxH.shape
    block = _splash_block(t)
    groups = n // k_BxTxKxH.shape[2]
    q = jnp.swapaxes(q_BxTxNxH * jnp.asarray(h ** -0.5, q_BxTxNxH.dtype), 1, 2)
    k = jnp.swapaxes(jnp.repeat(k_BxTxKxH, groups, axis=2), 1, 2)
    v = jnp.swapaxes(jnp.repeat(v_BxTxKxH, groups, axis=2), 1, 2)

    def local(q_BxNxTxH, k_BxNxTxH, v_BxNxTxH, seg_BxT):
        heads = q_BxNxTxH.shape[1]
        mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(heads)])
        sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                              block_q_dq=block, block_kv_dq=block)
        kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                    interpret=interpret)
        return jax.vmap(kernel)(q_BxNxTxH, k_BxNxTxH, v_BxNxTxH, sk.SegmentIds(q=seg_BxT, kv=seg_BxT))

    return jnp.swapaxes(_per_shard(local, q, k, v, segment_ids_BxT, head_axis=1), 1, 2)


def triton_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT,
                     interpret: bool = False) -> jax.Array:
    """Pallas Triton flash attention with segment ids (GPU; ``interpret=True``
    runs it anywhere, slowly). ``T`` must be a power of two or a multiple of 128."""
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    t, n, h = q_BxTxNxH.shape[1:]
    groups = n // k_BxTxKxH.shape[2]
    k = jnp.repeat(k_BxTxKxH, groups, axis=2)
    v = jnp.repeat(v_BxTxKxH, groups, axis=2)
    forward, backward = min(128, t), min(64, t)
    sizes = gpu_attention.BlockSizes(
        block_q=forward, block_k=forward, block_q_dkv=backward, block_kv_dkv=backward,
        block_q_dq=backward, block_kv_dq=backward)
    local = functools.partial(gpu_attention.mha, sm_scale=h ** -0.5, causal=True,
                              block_sizes=sizes, interpret=interpret)
    return _per_shard(local, q_BxTxNxH, k, v, segment_ids_BxT, head_axis=2)


def packed_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT,
                     implementation: str, platform: str | None = None) -> jax.Array:
    """Training attention over packed sequences with the chosen kernel, for
    ``platform`` (default: JAX's default backend)."""
    platform = platform or jax.default_backend()
    if implementation == "cudnn":
        return cudnn_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT)
    if implementation in ("splash", "triton"):
        interpret = interpret_kernel(implementation, platform)
        t = q_BxTxNxH.shape[1]
        length = flash_length(t, implementation, interpret)
        q, k, v, seg = (_pad_length(x, length)
                        for x in (q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT))
        kernel = splash_attention if implementation == "splash" else triton_attention
        return kernel(q, k, v, seg, interpret=interpret)[:, :t]
    b, t, n, _ = q_BxTxNxH.shape
    check_dense_size(implementation, b * n * t * t * 4)
    return xla_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_mask_BxTxS(segment_ids_BxT))


def cached_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, positions_BxT) -> jax.Array:
    """Attention of new tokens over a row's cache slots 0..position."""
    mask = cache_mask_BxTxS(positions_BxT, k_BxSxKxH.shape[1])
    return xla_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask)
