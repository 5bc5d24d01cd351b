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

Only the packed training forward uses the flash kernels. Cached decoding
reads a pool of cache lanes (``[kv_heads, layers, lanes, slots, head_dim]``)
in one of two ways (``DECODE_ATTENTIONS``): ``xla`` gathers each row's lane up
to a KV length and masks slots past the row's position; ``paged`` (width-1
calls only) hands the whole pool, viewed as pages of ``page_size`` slots, to
the platform's Pallas paged-attention kernel with each row's block table and
length, so a row reads only the pages below its own length and nothing is
gathered (the GPU kernel on GPU, the TPU kernel on TPU, the GPU kernel in
interpret mode elsewhere). ``auto`` is ``paged`` on GPU and TPU when the
shapes suit the kernel, ``xla`` otherwise.
Padding tokens (segment 0) may attend among themselves in the flash kernels;
their outputs are never used.

A tree sequence of the inherit family (``apr_jax.data.tree_sequence``) adds
per-token hidden ranges to the segment ids (a ``TreeMask``): ``xla`` builds
the dense mask from them, ``splash`` and ``triton`` run the Pallas tree
kernel of ``apr_jax.model.tree_attention`` (Mosaic on TPU, Triton on GPU),
which builds each tile's mask from the ids and never holds a ``T x T`` array.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from apr_jax.model import tree_attention
from apr_jax.model.tree_mask import TreeMask, segment_mask_BxTxS, tree_mask_BxTxS
from apr_jax.runtime import sharding

_MASKED = -1e30
IMPLEMENTATIONS = ("xla", "triton", "cudnn", "splash")
# Native platform of each flash kernel; elsewhere it runs in interpret mode.
_KERNEL_PLATFORM = {"triton": "gpu", "splash": "tpu"}
# The largest dense per-layer tensor a packed forward may build (global bytes).
DENSE_LIMIT_BYTES = 2 * 2**30
DECODE_ATTENTIONS = ("auto", "xla", "paged")
# Platforms with a native paged decode kernel (elsewhere the GPU one is interpreted).
_PAGED_NATIVE = ("gpu", "tpu")
# Query/key block of the Pallas tree kernel per platform (TPU: whole vregs; GPU and interpret: smaller tiles).
TREE_BLOCK = {"tpu": 128, "gpu": 64, "interpret": 64}
# Slots a TPU paged-attention block reads at once (pages_per_compute_block * page_size).
_TPU_PAGED_BLOCK = 512


def resolve_implementation(name: str, compute_dtype: jnp.dtype, platform: str) -> str:
    """The kernel for the packed forward on ``platform`` ("cpu", "gpu", "tpu");
    "auto" picks the platform's flash kernel. ValueError for a kernel that
    cannot run this compute dtype."""
    if name == "auto":
        name = {"gpu": "triton", "tpu": "splash"}.get(platform, "xla")
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention={name!r} is not one of auto, {', '.join(IMPLEMENTATIONS)}")
    if name == "cudnn" and jnp.dtype(compute_dtype) not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            "model.attention='cudnn' needs model.compute_dtype='bfloat16'; "
            f"got {jnp.dtype(compute_dtype).name} (use 'triton' or 'xla')"
        )
    return name


def interpret_kernel(implementation: str, platform: str) -> bool:
    """Whether a Pallas kernel runs in interpret mode (not on its own platform)."""
    return implementation in _KERNEL_PLATFORM and _KERNEL_PLATFORM[implementation] != platform


def check_dense_size(implementation: str, num_bytes: int) -> None:
    """One-line ValueError when a dense attention tensor is over ``DENSE_LIMIT_BYTES``."""
    if num_bytes > DENSE_LIMIT_BYTES:
        raise ValueError(
            f"model.attention={implementation!r} would build a {num_bytes / 2**30:.1f} GiB "
            f"T x T tensor per layer (limit {DENSE_LIMIT_BYTES / 2**30:.0f} GiB); set "
            "model.attention=auto (triton on GPU, splash on TPU) or shrink batch/seq_len"
        )


def cache_mask_BxTxS(positions_BxT: jax.Array, num_slots: int) -> jax.Array:
    """Query at position p sees cache slots 0..p of its row; p < 0 (padding) sees none."""
    slots_S = jnp.arange(num_slots, dtype=positions_BxT.dtype)
    return (slots_S[None, None, :] <= positions_BxT[:, :, None]) & (positions_BxT >= 0)[:, :, None]


def xla_attention(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array, mask_BxTxS: jax.Array) -> jax.Array:
    """Grouped-query softmax attention with a boolean mask; softmax in float32."""
    b, t, n, h = q_BxTxNxH.shape
    k = k_BxSxKxH.shape[2]
    q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, k, n // k, h) * jnp.asarray(h**-0.5, q_BxTxNxH.dtype)
    logits = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH, preferred_element_type=jnp.float32)
    logits = jnp.where(mask_BxTxS[:, None, None], logits, _MASKED)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_BxSxKxH.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v_BxSxKxH)
    return out.reshape(b, t, n, h)


def cudnn_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT) -> jax.Array:
    """cuDNN flash attention: causal natively, segments as a dense mask."""
    b, t = segment_ids_BxT.shape
    check_dense_size("cudnn", b * t * t * q_BxTxNxH.dtype.itemsize)
    same_Bx1xTxT = (segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :])[:, None]
    return jax.nn.dot_product_attention(
        q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask=same_Bx1xTxT, is_causal=True, implementation="cudnn"
    )


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
    (``shard_map``) under a mesh; directly without one. ``segment_ids_BxT``
    may be any pytree of per-token arrays (a ``TreeMask``), split by batch."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return local(q, k, v, segment_ids_BxT)
    axes = [None] * 4
    axes[0], axes[head_axis] = "activation_batch", "activation_heads"
    qkv_spec = sharding.logical_to_spec(tuple(axes), mesh, q.shape)
    seg_spec = jax.tree.map(lambda x: PartitionSpec(qkv_spec[0], *(None,) * (x.ndim - 1)), segment_ids_BxT)
    return jax.shard_map(local, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec), out_specs=qkv_spec, check_vma=False)(
        q, k, v, segment_ids_BxT
    )


def _splash_block(t: int) -> int:
    for block in (512, 256, 128):
        if t % block == 0:
            return block
    return t  # interpret mode only (flash_length gives multiples of 128 on TPU)


def splash_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT, interpret: bool = False) -> jax.Array:
    """Pallas splash attention (TPU; ``interpret=True`` runs it anywhere, slowly).
    ``T`` must be a multiple of 128 unless interpreted (see ``flash_length``)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, n, h = q_BxTxNxH.shape
    block = _splash_block(t)
    groups = n // k_BxTxKxH.shape[2]
    q = jnp.swapaxes(q_BxTxNxH * jnp.asarray(h**-0.5, q_BxTxNxH.dtype), 1, 2)
    k = jnp.swapaxes(jnp.repeat(k_BxTxKxH, groups, axis=2), 1, 2)
    v = jnp.swapaxes(jnp.repeat(v_BxTxKxH, groups, axis=2), 1, 2)

    def local(q_BxNxTxH, k_BxNxTxH, v_BxNxTxH, seg_BxT):
        heads = q_BxNxTxH.shape[1]
        mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(heads)])
        sizes = sk.BlockSizes(
            block_q=block,
            block_kv=block,
            block_kv_compute=block,
            block_q_dkv=block,
            block_kv_dkv=block,
            block_kv_dkv_compute=block,
            block_q_dq=block,
            block_kv_dq=block,
        )
        kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
        return jax.vmap(kernel)(q_BxNxTxH, k_BxNxTxH, v_BxNxTxH, sk.SegmentIds(q=seg_BxT, kv=seg_BxT))

    return jnp.swapaxes(_per_shard(local, q, k, v, segment_ids_BxT, head_axis=1), 1, 2)


def triton_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT, interpret: bool = False) -> jax.Array:
    """Pallas Triton flash attention with segment ids (GPU; ``interpret=True``
    runs it anywhere, slowly). ``T`` must be a power of two or a multiple of 128."""
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    t, n, h = q_BxTxNxH.shape[1:]
    groups = n // k_BxTxKxH.shape[2]
    k = jnp.repeat(k_BxTxKxH, groups, axis=2)
    v = jnp.repeat(v_BxTxKxH, groups, axis=2)
    forward, backward = min(128, t), min(64, t)
    sizes = gpu_attention.BlockSizes(
        block_q=forward,
        block_k=forward,
        block_q_dkv=backward,
        block_kv_dkv=backward,
        block_q_dq=backward,
        block_kv_dq=backward,
    )
    local = functools.partial(gpu_attention.mha, sm_scale=h**-0.5, causal=True, block_sizes=sizes, interpret=interpret)
    return _per_shard(local, q_BxTxNxH, k, v, segment_ids_BxT, head_axis=2)


def packed_attention(
    q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT, implementation: str, platform: str | None = None
) -> jax.Array:
    """Training attention over packed sequences with the chosen kernel, for
    ``platform`` (default: JAX's default backend). ``segment_ids_BxT`` may
    be a ``TreeMask`` (tree sequences): ``xla`` builds its mask, ``splash``
    and ``triton`` run the Pallas tree kernel (``tree_attention``) for their
    platform, ``cudnn`` cannot take it."""
    platform = platform or jax.default_backend()
    if isinstance(segment_ids_BxT, TreeMask):
        if implementation == "cudnn":
            raise ValueError(
                "model.attention='cudnn' cannot apply the tree mask of data.context='inherit'; "
                "set model.attention=triton (or auto)"
            )
        if implementation in _KERNEL_PLATFORM:
            kernel_platform = platform if not interpret_kernel(implementation, platform) else "interpret"
            local = functools.partial(
                tree_attention.tree_flash_attention,
                platform=kernel_platform,
                block=TREE_BLOCK.get(kernel_platform, TREE_BLOCK["interpret"]),
            )
            return _per_shard(local, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT, head_axis=2)
        b, t, n, _ = q_BxTxNxH.shape
        check_dense_size(implementation, b * n * t * t * 4)
        return xla_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, tree_mask_BxTxS(segment_ids_BxT))
    if implementation == "cudnn":
        return cudnn_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT)
    if implementation in ("splash", "triton"):
        interpret = interpret_kernel(implementation, platform)
        t = q_BxTxNxH.shape[1]
        length = flash_length(t, implementation, interpret)
        q, k, v, seg = (_pad_length(x, length) for x in (q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids_BxT))
        kernel = splash_attention if implementation == "splash" else triton_attention
        return kernel(q, k, v, seg, interpret=interpret)[:, :t]
    b, t, n, _ = q_BxTxNxH.shape
    check_dense_size(implementation, b * n * t * t * 4)
    return xla_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_mask_BxTxS(segment_ids_BxT))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVTable:
    """What each row of a cached call reads in the inherit family's engine:
    ``E`` entries, entry e the slots ``[lo, hi)`` of lane ``lane`` (a slot
    holds the K/V of that position; unused entries have ``lo == hi``). A
    forked child lists its parent's lanes below the fork and its own lane
    after it; a stitched parent lists its children's lanes too. The ranges
    are read in pages of ``page`` slots."""

    lane_BxE: jax.Array
    lo_BxE: jax.Array
    hi_BxE: jax.Array
    page: int = dataclasses.field(default=16, metadata={"static": True})


def table_pages_BxE(table: KVTable, end_B: jax.Array) -> jax.Array:
    """Pages each entry's range covers below ``end_B`` (what a row feeding
    positions up to ``end_B - 1`` must read)."""
    hi_BxE = jnp.minimum(table.hi_BxE, end_B[:, None])
    first_BxE = table.lo_BxE // table.page
    return jnp.where(hi_BxE > table.lo_BxE, -(-hi_BxE // table.page) - first_BxE, 0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TablePages:
    """A ``KVTable``'s pages below each row's end, one after the other:
    ``P`` listed pages per row (the caller's bound), page p the slots
    ``[start, start + page)`` of lane ``lane``, of which the row sees
    ``[lo, hi)`` (absolute slots; empty past the row's ``count`` pages)."""

    lane_BxP: jax.Array
    start_BxP: jax.Array
    lo_BxP: jax.Array
    hi_BxP: jax.Array
    count_B: jax.Array


def table_pages(table: KVTable, end_B: jax.Array, pages: int, num_slots: int) -> TablePages:
    """The pages of every entry's range below ``end_B`` (``table_pages_BxE``),
    entry after entry, in ``pages`` listed pages per row of lanes of
    ``num_slots`` slots."""
    e = table.lane_BxE.shape[1]
    page = table.page
    count_BxE = table_pages_BxE(table, end_B)
    after_BxE = jnp.cumsum(count_BxE, axis=1)  # pages of the entries up to and including e
    j_1xP = jnp.arange(pages, dtype=after_BxE.dtype)[None]
    entry_BxP = jnp.minimum(jnp.sum(after_BxE[:, None, :] <= j_1xP[:, :, None], axis=-1), e - 1)
    take = functools.partial(jnp.take_along_axis, indices=entry_BxP, axis=1)
    page_BxP = take(table.lo_BxE // page) + j_1xP - take(after_BxE - count_BxE)
    listed_BxP = j_1xP < after_BxE[:, -1:]
    return TablePages(
        lane_BxP=take(table.lane_BxE),
        start_BxP=jnp.clip(page_BxP * page, 0, num_slots - page),
        lo_BxP=jnp.where(listed_BxP, take(table.lo_BxE), 0),
        hi_BxP=jnp.where(listed_BxP, jnp.minimum(take(table.hi_BxE), end_B[:, None]), 0),
        count_B=jnp.minimum(after_BxE[:, -1], pages),
    )


def table_attention(q_BxTxNxH, k_cache, v_cache, layer: int, table: KVTable, positions_BxT, slots: int) -> jax.Array:
    """Attention of new tokens over the slots their ``KVTable`` lists (and
    not after the query's own position), gathered from the pool
    ``[kv_heads, layers, lanes, slots, head_dim]`` page by page: the pages
    of every entry's range below the row's last position, one after the
    other, ``slots / table.page`` pages per row (the caller's bound on every
    row's pages). Each page is one block of the gather."""
    b = table.lane_BxE.shape[0]
    heads, _, _, num_slots, head_dim = k_cache.shape
    page = table.page
    pages = slots // page
    listed = table_pages(table, jnp.max(positions_BxT, axis=1) + 1, pages, num_slots)

    def block(x, lane, start):
        return jax.lax.dynamic_slice(x, (0, layer, lane, start, 0), (heads, 1, 1, page, head_dim)).reshape(
            heads, page, head_dim
        )

    gather = jax.vmap(jax.vmap(block, in_axes=(None, 0, 0)), in_axes=(None, 0, 0))
    k_BxSxKxH, v_BxSxKxH = (
        jnp.moveaxis(gather(x, listed.lane_BxP, listed.start_BxP), 2, 3)
        .reshape(b, pages * page, heads, head_dim)
        .astype(q_BxTxNxH.dtype)
        for x in (k_cache, v_cache)
    )
    slot_BxPxW = listed.start_BxP[:, :, None] + jnp.arange(page, dtype=listed.start_BxP.dtype)
    seen_BxPxW = (slot_BxPxW >= listed.lo_BxP[:, :, None]) & (slot_BxPxW < listed.hi_BxP[:, :, None])
    slot_BxS, seen_BxS = slot_BxPxW.reshape(b, pages * page), seen_BxPxW.reshape(b, pages * page)
    before_BxTxS = slot_BxS[:, None] <= positions_BxT[:, :, None]
    mask_BxTxS = seen_BxS[:, None] & before_BxTxS & (positions_BxT >= 0)[..., None]
    return xla_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_BxTxS)


def cached_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, positions_BxT) -> jax.Array:
    """Attention of new tokens over a row's cache slots 0..position."""
    mask = cache_mask_BxTxS(positions_BxT, k_BxSxKxH.shape[1])
    return xla_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask)


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def paged_decode_problem(platform: str, head_dim: int, page_size: int, max_len: int) -> str | None:
    """Why the paged decode kernel of ``platform`` cannot read a pool of
    ``max_len``-slot lanes in pages of ``page_size`` slots (None: it can)."""
    if page_size < 1 or max_len % page_size:
        return f"eval.page_size={page_size} does not divide the context of {max_len} slots"
    if platform == "tpu" and (page_size % 8 or head_dim % 128):
        return (
            f"the TPU paged kernel needs eval.page_size a multiple of 8 and head_dim a multiple "
            f"of 128; got page_size={page_size}, head_dim={head_dim}"
        )
    if platform == "gpu":
        if not (_power_of_two(page_size) and _power_of_two(head_dim) and head_dim >= 16):
            return (
                f"the GPU paged kernel (Triton) needs a power-of-two eval.page_size and "
                f"head_dim >= 16; got page_size={page_size}, head_dim={head_dim}"
            )
        if _gpu_compute_pages(max_len // page_size) * page_size < 16:
            return f"eval.page_size={page_size} gives the GPU paged kernel blocks under 16 slots"
    return None


def resolve_decode_attention(
    name: str, platform: str, head_dim: int, page_size: int, max_len: int, tables: bool = False
) -> int:
    """The page size width-1 decode calls read the cache in (0: the ``xla``
    gather). ``auto`` is paged on GPU and TPU when the shapes suit the
    kernel; an explicit ``paged`` that cannot run is a ValueError. With
    ``tables`` (the inherit family's KV tables) the kernel is
    ``table_decode``'s, which runs on GPU (and interpreted on the CPU), not TPU."""
    if name not in DECODE_ATTENTIONS:
        raise ValueError(f"eval.decode_attention={name!r} is not one of {', '.join(DECODE_ATTENTIONS)}")
    if name == "xla":
        return 0
    problem = paged_decode_problem(platform, head_dim, page_size, max_len)
    if tables and platform == "tpu":
        problem = "the inherit family's KV tables are read by a Triton kernel, which has no TPU version"
    if name == "auto":
        return page_size if problem is None and platform in _PAGED_NATIVE else 0
    if problem is not None:
        raise ValueError(f"eval.decode_attention='paged' cannot run on {platform}: {problem}")
    return page_size


def _power_of_two_divisor(n: int, limit: int) -> int:
    """The largest power of two <= ``limit`` that divides ``n``."""
    d = 1
    while d * 2 <= limit and n % (d * 2) == 0:
        d *= 2
    return d


def _gpu_splits(pages_per_lane: int) -> int:
    return _power_of_two_divisor(pages_per_lane, 16)


def _gpu_compute_pages(pages_per_lane: int) -> int:
    return _power_of_two_divisor(pages_per_lane // _gpu_splits(pages_per_lane), 8)


def _first_page(layer: int, lanes: int, lane: jax.Array, pages_per_lane: int) -> jax.Array:
    """Index of lane ``lane``'s first page of ``layer`` in the pool's page view."""
    return (layer * lanes + lane.astype(jnp.int32)) * pages_per_lane


def _write_pages(k_pool, v_pool, k_BxKxH, v_BxKxH, layer: int, lanes_B, positions_B, page_size: int):
    """The pools viewed as pages ``[kv_heads, layers * lanes * pages, page,
    head_dim]`` with each real row's new K/V in slot ``positions_B[b]`` of lane
    ``lanes_B[b]`` of ``layer`` (position < 0: padding, nothing written)."""
    kv_heads, layers, lanes, slots, head_dim = k_pool.shape
    pages_per_lane = slots // page_size
    pages_shape = (kv_heads, layers * lanes * pages_per_lane, page_size, head_dim)
    first_page_B = _first_page(layer, lanes, lanes_B, pages_per_lane)
    real_B = positions_B >= 0
    page_B = jnp.where(real_B, first_page_B + positions_B // page_size, pages_shape[1])  # padding: dropped
    offset_B = jnp.where(real_B, positions_B % page_size, 0)
    # Every axis but head_dim indexed (heads too): a scatter with a [kv_heads,
    # head_dim] window makes the TPU compiler pick another layout for the pool
    # and copy it whole to and from the kernel's at every layer.
    heads_Kx1 = jnp.arange(kv_heads)[:, None]
    return tuple(
        pool.reshape(pages_shape)
        .at[heads_Kx1, page_B[None], offset_B[None]]
        .set(jnp.swapaxes(new, 0, 1).astype(pool.dtype), mode="drop")
        for pool, new in ((k_pool, k_BxKxH), (v_pool, v_BxKxH))
    )


def paged_decode_attention(
    q_BxNxH: jax.Array,
    k_BxKxH: jax.Array,
    v_BxKxH: jax.Array,
    k_pool: jax.Array,
    v_pool: jax.Array,
    layer: int,
    lanes_B: jax.Array,
    positions_B: jax.Array,
    page_size: int,
    platform: str,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One new token per row: writes its K/V into slot ``positions_B[b]`` of
    lane ``lanes_B[b]`` of ``layer`` (position < 0: padding, nothing written,
    zeros out), then attends over that lane's slots 0..position, read in
    place from the whole pool ``[kv_heads, layers, lanes, slots, head_dim]``
    as pages of ``page_size`` slots by the platform's paged kernel. Both the
    write and the read use the page view, so the pool keeps the layout the
    kernel reads. Returns (out_BxNxH, k_pool, v_pool)."""
    kv_heads, layers, lanes, slots, head_dim = k_pool.shape
    pages_per_lane = slots // page_size
    k_pages, v_pages = _write_pages(k_pool, v_pool, k_BxKxH, v_BxKxH, layer, lanes_B, positions_B, page_size)
    first_page_B = _first_page(layer, lanes, lanes_B, pages_per_lane)
    table_BxP = first_page_B[:, None] + jnp.arange(pages_per_lane, dtype=jnp.int32)
    lengths_B = jnp.where(positions_B >= 0, positions_B + 1, 0).astype(jnp.int32)
    q = q_BxNxH * jnp.asarray(head_dim**-0.5, q_BxNxH.dtype)
    if platform == "tpu":
        from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention as tpu_paged

        block = _power_of_two_divisor(pages_per_lane, max(1, _TPU_PAGED_BLOCK // page_size))
        out = tpu_paged(
            q, k_pages.astype(q.dtype), v_pages.astype(q.dtype), lengths_B, table_BxP, pages_per_compute_block=block
        )
    else:
        from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention as gpu_paged

        out = gpu_paged(
            q,
            k_pages.astype(q.dtype),
            v_pages.astype(q.dtype),
            table_BxP,
            lengths_B,
            k_splits=_gpu_splits(pages_per_lane),
            pages_per_compute_block=_gpu_compute_pages(pages_per_lane),
            interpret=platform != "gpu",
        )
    return out, k_pages.reshape(k_pool.shape), v_pages.reshape(v_pool.shape)


def paged_table_decode_attention(
    q_BxNxH: jax.Array,
    k_BxKxH: jax.Array,
    v_BxKxH: jax.Array,
    k_pool: jax.Array,
    v_pool: jax.Array,
    layer: int,
    lanes_B: jax.Array,
    positions_B: jax.Array,
    table: KVTable,
    pages: int,
    platform: str,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``paged_decode_attention`` for the inherit family: the new token's K/V
    is written the same way, then each row attends over the slots its
    ``KVTable`` lists up to its position (at most ``pages`` pages of
    ``table.page`` slots), read in place by ``table_decode.table_decode_attention``
    (Triton on GPU, interpret mode elsewhere): only the listed pages are read.
    Returns (out_BxNxH, k_pool, v_pool)."""
    from apr_jax.model.table_decode import table_decode_attention

    kv_heads, layers, lanes, slots, head_dim = k_pool.shape
    page = table.page
    k_pages, v_pages = _write_pages(k_pool, v_pool, k_BxKxH, v_BxKxH, layer, lanes_B, positions_B, page)
    end_B = jnp.where(positions_B >= 0, positions_B + 1, 0)
    listed = table_pages(table, end_B, pages, slots)
    page_BxP = _first_page(layer, lanes, listed.lane_BxP, slots // page) + listed.start_BxP // page
    lo_BxP, hi_BxP = (jnp.clip(x - listed.start_BxP, 0, page) for x in (listed.lo_BxP, listed.hi_BxP))
    q = q_BxNxH * jnp.asarray(head_dim**-0.5, q_BxNxH.dtype)
    out = table_decode_attention(q, k_pages, v_pages, page_BxP, lo_BxP, hi_BxP, listed.count_B, platform)
    return out, k_pages.reshape(k_pool.shape), v_pages.reshape(v_pool.shape)
