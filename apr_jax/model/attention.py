"""Attention kernels, chosen by backend.

- ``xla``: einsum with an explicit boolean mask; runs everywhere, handles any
  mask (packed training segments, per-row cache positions). Fully masked rows
  (padding) get a finite uniform distribution, never NaN.
- ``cudnn`` (GPU, bf16 only): ``jax.nn.dot_product_attention(implementation=
  "cudnn", is_causal=True)`` with the segment-equality mask (cuDNN turns a
  mask into an additive bias; the causal part is skipped natively). Falls back
  to ``xla`` for float32 compute or when cuDNN rejects the shape at trace time.
- ``splash`` (TPU): the Pallas splash-attention kernel with a causal mask and
  segment ids, under ``shard_map`` when a mesh is set. Needs the sequence
  length to be a multiple of 128 (else ``xla``). Requested off TPU, it runs in
  Pallas interpret mode (correct but slow; used by the tests).

Only the packed training forward uses cudnn/splash; cached decoding always
uses the ``xla`` kernel because its mask depends on per-row positions.
Padding tokens (segment 0) may attend among themselves in cudnn/splash; their
outputs are never used.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from apr_jax import sharding

_MASKED = -1e30


def resolve_implementation(name: str, compute_dtype: jnp.dtype) -> str:
    """The kernel to use for the packed forward: "auto" follows ``jax.default_backend()``."""
    if name == "auto":
        name = {"gpu": "cudnn", "tpu": "splash"}.get(jax.default_backend(), "xla")
    if name == "cudnn" and jnp.dtype(compute_dtype) not in (jnp.bfloat16, jnp.float16):
        return "xla"
    if name not in ("xla", "cudnn", "splash"):
        raise ValueError(f"unknown attention implementation {name!r}")
    return name


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
    """cuDNN flash attention: causal natively, segments as a mask."""
    same_Bx1xTxT = (segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask=same_Bx1xTxT,
                                        is_causal=True, implementation="cudnn")


def _splash_block(t: int, interpret: bool) -> int | None:
    for block in (512, 256, 128):
        if t % block == 0:
            return block
    return t if interpret else None


def splash_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT,
                     interpret: bool = False) -> jax.Array:
    """Pallas splash attention (TPU; ``interpret=True`` runs it anywhere, slowly)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, n, h = q_BxTxNxH.shape
    block = _splash_block(t, interpret)
    if block is None:
        return xla_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_mask_BxTxS(segment_ids_BxT))
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

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        out = local(q, k, v, segment_ids_BxT)
    else:
        qkv_spec = sharding.logical_to_spec(
            ("activation_batch", "activation_heads", None, None), mesh, q.shape)
        seg_spec = PartitionSpec(qkv_spec[0], None)
        out = jax.shard_map(local, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec),
                            out_specs=qkv_spec, check_vma=False)(q, k, v, segment_ids_BxT)
    return jnp.swapaxes(out, 1, 2)


def packed_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT,
                     implementation: str) -> jax.Array:
    """Training attention over packed sequences with the chosen kernel."""
    if implementation == "cudnn":
        try:
            return cudnn_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT)
        except Exception as error:  # cuDNN rejects some shapes/dtypes at trace time.
            logging.warning("cuDNN attention unavailable (%s); using XLA attention", error)
    elif implementation == "splash":
        # Off TPU the kernel runs in Pallas interpret mode (slow; for tests).
        return splash_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT,
                                interpret=jax.default_backend() != "tpu")
    return xla_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_mask_BxTxS(segment_ids_BxT))


def cached_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, positions_BxT) -> jax.Array:
    """Attention of new tokens over a row's cache slots 0..position."""
    mask = cache_mask_BxTxS(positions_BxT, k_BxSxKxH.shape[1])
    return xla_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask)
