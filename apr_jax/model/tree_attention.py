"""Flash attention under a ``TreeMask``, as Pallas kernels (no ``T x T`` array).

Key ``k`` is visible to query ``q`` (both layout indices of one row) when
``k <= q``, their segment ids are equal, and ``q`` lies outside each of the
key's hidden ranges ``[hidden_from[k, r], hidden_until[k, r])``: the mask of
``attention.tree_mask_BxTxS``, rebuilt tile by tile from the ids.

Three Pallas kernels, one grid step per (batch, query head, block):

- forward: a query block loops over the key blocks up to the diagonal with an
  online softmax in float32; writes the output and each row's logsumexp;
- dq: the same loop, recomputing the probabilities from the logsumexp;
- dk/dv: a key block loops over the query blocks from the diagonal on (tiles
  key-major, so every matmul is ``A @ B`` or ``A @ B.T``); per query head,
  summed over each kv head's group afterwards.

Grouped-query K/V heads are read in place (query head ``n`` reads kv head
``n // groups``). They run natively on GPU (Triton) and TPU (Mosaic), in
interpret mode elsewhere. The sequence is padded to a multiple of ``block``
with segment 0, which no real query sees; padding queries see padding keys
(finite outputs, never used).

Mosaic wants a tile's minor dims in whole (8, 128) vregs, so per-token ids
come in two layouts: "rows" ``[B, C, T]`` (a key block reads ``[1, block]``
slices along lanes) and "columns" ``[B, C, T, lanes]`` (a block reads
``[block, lanes]``, widened across the tile). On TPU ``lanes`` is 128 (the id
repeated along lanes, as splash attention passes segment ids); elsewhere 1.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from apr_jax.model.tree_mask import TreeMask

_MASKED = -1e30  # a masked logit: exp() of it minus any real logit is 0
_NT = (((1,), (1,)), ((), ()))  # contract the minor dims: A @ B.T
_NN = (((1,), (0,)), ((), ()))  # A @ B
NATIVE_PLATFORMS = ("gpu", "tpu")
# Lane width of the column-layout ids per platform (module docstring); 1 elsewhere.
_SIDE_LANES = {"tpu": 128}
# Mosaic's default scoped VMEM (v4/v5p) and a margin for a kernel's blocks and tiles.
_TPU_DEFAULT_VMEM = 16 * 2**20
_TPU_VMEM_BLOCKS = 4 * 2**20


@dataclasses.dataclass(frozen=True)
class _Kernel:
    """Static settings shared by the three kernels."""

    platform: str  # "gpu" (Triton), "tpu" (Mosaic), anything else: interpret mode
    block: int  # query and key block size
    lanes: int  # lane width of column-layout ids
    scale: float  # softmax scale, head_dim**-0.5 of the unpadded head dim

    @property
    def interpret(self) -> bool:
        return self.platform not in NATIVE_PLATFORMS


class _Ids(NamedTuple):
    """A padded ``TreeMask`` in the kernels' layouts (``L`` the padded length,
    ``R`` ranges, ``W`` the lane width)."""

    seg_rows_Bx1xL: jax.Array
    seg_cols_Bx1xLxW: jax.Array
    from_rows_BxRxL: jax.Array
    until_rows_BxRxL: jax.Array
    from_cols_BxRxLxW: jax.Array
    until_cols_BxRxLxW: jax.Array


def tree_flash_attention(
    q_BxTxNxH: jax.Array,
    k_BxTxKxH: jax.Array,
    v_BxTxKxH: jax.Array,
    mask: TreeMask,
    *,
    platform: str,
    block: int = 128,
) -> jax.Array:
    """Grouped-query softmax attention under ``mask`` (scale ``H**-0.5``,
    softmax in float32, output in q's dtype), equal to ``xla_attention`` with
    ``tree_mask_BxTxS(mask)`` on every real (segment != 0) query, without any
    ``T x T`` array. ``platform`` "gpu" or "tpu" runs the kernels natively,
    anything else in Pallas interpret mode. Differentiable in q, k and v."""
    _check_shapes(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask, platform, block)
    t, h = q_BxTxNxH.shape[1], q_BxTxNxH.shape[3]
    length = -(-t // block) * block
    head_dim = _head_dim(h, platform)
    kernel = _Kernel(platform, block, _SIDE_LANES.get(platform, 1), h**-0.5)
    q, k, v = (_to_heads_major(x, length, head_dim) for x in (q_BxTxNxH, k_BxTxKxH, v_BxTxKxH))
    o_BxNxLxH = _flash(kernel, q, k, v, _kernel_ids(mask, length, kernel.lanes))
    return jnp.swapaxes(o_BxNxLxH[:, :, :t, :h], 1, 2)


def _check_shapes(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask: TreeMask, platform: str, block: int) -> None:
    """ValueError for shapes or a block size the kernels cannot take."""
    b, t, n, h = q_BxTxNxH.shape
    if k_BxTxKxH.shape != v_BxTxKxH.shape or k_BxTxKxH.shape[:2] != (b, t) or k_BxTxKxH.shape[3] != h:
        raise ValueError(f"k {k_BxTxKxH.shape} and v {v_BxTxKxH.shape} must be [B, T, K, H] of q {q_BxTxNxH.shape}")
    if n % k_BxTxKxH.shape[2]:
        raise ValueError(f"{n} query heads do not split into groups of {k_BxTxKxH.shape[2]} kv heads")
    if mask.segment_ids_BxT.shape != (b, t) or mask.hidden_from_BxTxR.shape != mask.hidden_until_BxTxR.shape:
        raise ValueError(f"TreeMask ids {mask.segment_ids_BxT.shape} do not match the batch and length {(b, t)}")
    if platform == "tpu" and block % 128:
        raise ValueError(f"the TPU kernel needs a block that is a multiple of 128; got {block}")
    if platform == "gpu" and (block < 16 or block & (block - 1)):
        raise ValueError(f"the GPU kernel (Triton) needs a power-of-two block >= 16; got {block}")


def _head_dim(h: int, platform: str) -> int:
    """The head dim the kernels run at: Triton tiles are powers of two >= 16."""
    return max(16, 1 << (h - 1).bit_length()) if platform == "gpu" else h


def _pad_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    """``x`` zero-padded at the end of ``axis`` to ``size``."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _to_heads_major(x_BxTxNxH: jax.Array, length: int, head_dim: int) -> jax.Array:
    """``[B, T, N, H]`` as ``[B, N, length, head_dim]``, zero-padded."""
    x_BxNxTxH = jnp.swapaxes(x_BxTxNxH, 1, 2)
    return _pad_axis(_pad_axis(x_BxNxTxH, 2, length), 3, head_dim)


def _kernel_ids(mask: TreeMask, length: int, lanes: int) -> _Ids:
    """The mask's ids padded to ``length`` (segment 0, empty ranges) and to a
    power-of-two range count, in row and column layouts."""
    r = mask.hidden_from_BxTxR.shape[2]
    ranges = 1 << (r - 1).bit_length()
    seg_BxL = _pad_axis(mask.segment_ids_BxT.astype(jnp.int32), 1, length)
    from_BxRxL, until_BxRxL = (
        _pad_axis(_pad_axis(jnp.swapaxes(x.astype(jnp.int32), 1, 2), 1, ranges), 2, length)
        for x in (mask.hidden_from_BxTxR, mask.hidden_until_BxTxR)
    )
    seg_Bx1xL = seg_BxL[:, None]
    return _Ids(
        seg_Bx1xL,
        _columns(seg_Bx1xL, lanes),
        from_BxRxL,
        until_BxRxL,
        _columns(from_BxRxL, lanes),
        _columns(until_BxRxL, lanes),
    )


def _columns(x_BxCxL: jax.Array, lanes: int) -> jax.Array:
    """Row-layout ``[B, C, L]`` as column layout ``[B, C, L, lanes]``."""
    return jnp.broadcast_to(x_BxCxL[..., None], (*x_BxCxL.shape, lanes))


# --- the mask of one tile -------------------------------------------------


def _visible(q_pos, k_pos, q_seg, k_seg, hidden: list[tuple[jax.Array, jax.Array]]) -> jax.Array:
    """bool tile: key seen by query (causal, same segment, outside every hidden
    range). Arguments broadcast to the tile, in either orientation; ``hidden``
    holds each range's (from, until) of the keys."""
    seen = (k_pos <= q_pos) & (q_seg == k_seg)
    for start, stop in hidden:
        seen = seen & ((q_pos < start) | (stop <= q_pos))
    return seen


def _widen(x_LxW: jax.Array, width: int) -> jax.Array:
    """A column-layout block ``[L, W]`` to broadcast against ``[L, width]``
    tiles: as is when ``W`` is 1, else repeated along lanes to ``width``."""
    return x_LxW if x_LxW.shape[1] == 1 else jnp.tile(x_LxW, (1, width // x_LxW.shape[1]))


def _row(ref, index: int, start, size: int) -> jax.Array:
    """``[1, size]`` of row-layout ref ``[C, L]``: row ``index`` from ``start``."""
    return ref[pl.ds(index, 1), pl.ds(start, size)]


def _query_major_mask(q_start, k_start, block: int, seg_q_cols, seg_k_rows, from_k_rows, until_k_rows) -> jax.Array:
    """bool ``[block_q, block_k]``: query rows from ``q_start`` (column-layout
    segment ids), key columns from ``k_start`` (row-layout ids)."""
    q_pos = q_start + lax.broadcasted_iota(jnp.int32, (block, block), 0)
    k_pos = k_start + lax.broadcasted_iota(jnp.int32, (block, block), 1)
    hidden = [
        (_row(from_k_rows, r, k_start, block), _row(until_k_rows, r, k_start, block))
        for r in range(from_k_rows.shape[0])
    ]
    return _visible(q_pos, k_pos, _widen(seg_q_cols, block), _row(seg_k_rows, 0, k_start, block), hidden)


def _key_major_mask(k_start, q_start, block: int, seg_k_cols, from_k_cols, until_k_cols, seg_q_rows) -> jax.Array:
    """bool ``[block_k, block_q]``: key rows from ``k_start`` (column-layout
    ids), query columns from ``q_start`` (row-layout segment ids)."""
    k_pos = k_start + lax.broadcasted_iota(jnp.int32, (block, block), 0)
    q_pos = q_start + lax.broadcasted_iota(jnp.int32, (block, block), 1)
    hidden = [(_widen(from_k_cols[r], block), _widen(until_k_cols[r], block)) for r in range(from_k_cols.shape[0])]
    return _visible(q_pos, k_pos, _row(seg_q_rows, 0, q_start, block), _widen(seg_k_cols, block), hidden)


def _dot(a: jax.Array, b: jax.Array, dims) -> jax.Array:
    """A matmul of two tiles, accumulated in float32."""
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


# --- kernels --------------------------------------------------------------


def _forward_kernel(
    q_ref, k_ref, v_ref, seg_q_ref, seg_k_ref, from_ref, until_ref, o_ref, lse_ref, *, kernel: _Kernel
) -> None:
    """One query block: online softmax over the key blocks up to the diagonal."""
    block = kernel.block
    qi = pl.program_id(2)
    q_start = qi * block
    q_QxH = q_ref[...]

    def step(j, carry):
        m_Qx1, l_Qx1, acc_QxH = carry
        k_start = pl.multiple_of(j * block, block)
        k_KxH, v_KxH = k_ref[pl.ds(k_start, block), :], v_ref[pl.ds(k_start, block), :]
        seen_QxK = _query_major_mask(q_start, k_start, block, seg_q_ref[...], seg_k_ref, from_ref, until_ref)
        s_QxK = jnp.where(seen_QxK, _dot(q_QxH, k_KxH, _NT) * kernel.scale, _MASKED)
        m_next_Qx1 = jnp.maximum(m_Qx1, s_QxK.max(axis=1, keepdims=True))
        correction_Qx1 = jnp.exp(m_Qx1 - m_next_Qx1)
        p_QxK = jnp.exp(s_QxK - m_next_Qx1)
        l_next_Qx1 = correction_Qx1 * l_Qx1 + p_QxK.sum(axis=1, keepdims=True)
        acc_next_QxH = correction_Qx1 * acc_QxH + _dot(p_QxK.astype(v_KxH.dtype), v_KxH, _NN)
        return m_next_Qx1, l_next_Qx1, acc_next_QxH

    init = (
        jnp.full((block, 1), _MASKED, jnp.float32),
        jnp.zeros((block, 1), jnp.float32),
        jnp.zeros(q_QxH.shape, jnp.float32),
    )
    m_Qx1, l_Qx1, acc_QxH = lax.fori_loop(0, qi + 1, step, init)
    o_ref[...] = (acc_QxH / l_Qx1).astype(o_ref.dtype)
    lse_ref[...] = jnp.broadcast_to(m_Qx1 + jnp.log(l_Qx1), lse_ref.shape)


def _dq_kernel(
    q_ref, k_ref, v_ref, o_ref, do_ref, lse_ref, seg_q_ref, seg_k_ref, from_ref, until_ref, dq_ref, *, kernel: _Kernel
) -> None:
    """dq of one query block, over the key blocks up to the diagonal."""
    block = kernel.block
    qi = pl.program_id(2)
    q_start = qi * block
    q_QxH, do_QxH = q_ref[...], do_ref[...]
    lse_QxK = _widen(lse_ref[...], block)  # [Q, 1] where the ids are one lane wide
    delta_Qx1 = jnp.sum(o_ref[...].astype(jnp.float32) * do_QxH.astype(jnp.float32), axis=1, keepdims=True)

    def step(j, dq_QxH):
        k_start = pl.multiple_of(j * block, block)
        k_KxH, v_KxH = k_ref[pl.ds(k_start, block), :], v_ref[pl.ds(k_start, block), :]
        seen_QxK = _query_major_mask(q_start, k_start, block, seg_q_ref[...], seg_k_ref, from_ref, until_ref)
        p_QxK = jnp.where(seen_QxK, jnp.exp(_dot(q_QxH, k_KxH, _NT) * kernel.scale - lse_QxK), 0.0)
        ds_QxK = p_QxK * (_dot(do_QxH, v_KxH, _NT) - delta_Qx1)
        return dq_QxH + _dot(ds_QxK.astype(k_KxH.dtype), k_KxH, _NN)

    dq_QxH = lax.fori_loop(0, qi + 1, step, jnp.zeros(q_QxH.shape, jnp.float32))
    dq_ref[...] = (dq_QxH * kernel.scale).astype(dq_ref.dtype)


def _dkv_kernel(
    k_ref,
    v_ref,
    q_ref,
    do_ref,
    lse_ref,
    delta_ref,
    seg_k_ref,
    from_ref,
    until_ref,
    seg_q_ref,
    dk_ref,
    dv_ref,
    *,
    kernel: _Kernel,
) -> None:
    """dk and dv of one key block for one query head, over the query blocks
    from the diagonal on (tiles key-major)."""
    block = kernel.block
    ki = pl.program_id(2)
    k_start = ki * block
    k_KxH, v_KxH = k_ref[...], v_ref[...]

    def step(i, carry):
        dk_KxH, dv_KxH = carry
        q_start = pl.multiple_of(i * block, block)
        q_QxH, do_QxH = q_ref[pl.ds(q_start, block), :], do_ref[pl.ds(q_start, block), :]
        lse_1xQ, delta_1xQ = _row(lse_ref, 0, q_start, block), _row(delta_ref, 0, q_start, block)
        seen_KxQ = _key_major_mask(k_start, q_start, block, seg_k_ref[0], from_ref, until_ref, seg_q_ref)
        p_KxQ = jnp.where(seen_KxQ, jnp.exp(_dot(k_KxH, q_QxH, _NT) * kernel.scale - lse_1xQ), 0.0)
        ds_KxQ = p_KxQ * (_dot(v_KxH, do_QxH, _NT) - delta_1xQ)
        dv_next = dv_KxH + _dot(p_KxQ.astype(do_QxH.dtype), do_QxH, _NN)
        dk_next = dk_KxH + _dot(ds_KxQ.astype(q_QxH.dtype), q_QxH, _NN)
        return dk_next, dv_next

    zeros = jnp.zeros(k_KxH.shape, jnp.float32)
    dk_KxH, dv_KxH = lax.fori_loop(ki, q_ref.shape[0] // block, step, (zeros, zeros))
    dk_ref[...] = (dk_KxH * kernel.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_KxH.astype(dv_ref.dtype)


# --- pallas_call wiring -----------------------------------------------------


def _compiler_params(kernel: _Kernel, whole_sequence: jax.ShapeDtypeStruct):
    """Triton or Mosaic settings; None in interpret mode. ``whole_sequence``
    is one of the ``[B, heads, L, H]`` inputs a kernel reads whole."""
    head_dim = whole_sequence.shape[-1]
    if kernel.platform == "gpu":
        from jax.experimental.pallas import triton as plgpu

        return plgpu.CompilerParams(num_warps=4 if head_dim <= 64 else 8, num_stages=2)
    if kernel.platform == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel"), vmem_limit_bytes=_tpu_vmem_limit(whole_sequence)
        )
    return None


def _tpu_vmem_limit(whole_sequence: jax.ShapeDtypeStruct) -> int | None:
    """A kernel's VMEM limit on TPU: None (the compiler's default scoped limit)
    while its resident inputs fit that, else an estimate of what they need.
    Each kernel holds two whole ``[L, H]`` sequences (lanes padded to 128,
    double-buffered) and row-layout ids; the rest is a few blocks."""
    length, head_dim = whole_sequence.shape[-2:]
    lane_width = -(-head_dim // 128) * 128
    sequences = 2 * 2 * length * lane_width * jnp.dtype(whole_sequence.dtype).itemsize
    rows = 2 * 4 * 8 * length * 4  # four [<=8, L] int32/float32 rows, double-buffered
    need = sequences + rows + _TPU_VMEM_BLOCKS
    return None if need <= _TPU_DEFAULT_VMEM else need


def _call(body: Callable, kernel: _Kernel, whole_sequence: jax.Array, grid, in_specs, out_specs, out_shape, name: str):
    """``pl.pallas_call`` of ``body`` with the kernel settings bound; the
    kernel reads ``whole_sequence``'s sequences whole."""
    return pl.pallas_call(
        functools.partial(body, kernel=kernel),
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=_compiler_params(kernel, jax.ShapeDtypeStruct(whole_sequence.shape, whole_sequence.dtype)),
        interpret=kernel.interpret,
        name=name,
    )


def _seq_block(block: int, head_dim: int, groups: int = 1) -> pl.BlockSpec:
    """Block ``i`` of ``[B, heads, L, H]`` over the (batch, query head, block)
    grid; ``groups`` > 1 reads kv head ``n // groups`` for query head ``n``."""
    return pl.BlockSpec((None, None, block, head_dim), lambda b, n, i: (b, lax.div(n, groups), i, 0))


def _seq_all(length: int, head_dim: int, groups: int = 1) -> pl.BlockSpec:
    """The whole sequence of ``[B, heads, L, H]`` (see ``_seq_block``)."""
    return pl.BlockSpec((None, None, length, head_dim), lambda b, n, i: (b, lax.div(n, groups), 0, 0))


def _id_cols(block: int, count: int | None, lanes: int) -> pl.BlockSpec:
    """Block ``i`` of column-layout ids ``[B, C, L, W]``: ``count`` ids (None:
    the one id, squeezed)."""
    return pl.BlockSpec((None, count, block, lanes), lambda b, n, i: (b, 0, i, 0))


def _id_rows(length: int, count: int) -> pl.BlockSpec:
    """All of row-layout ids ``[B, C, L]``."""
    return pl.BlockSpec((None, count, length), lambda b, n, i: (b, 0, 0))


def _head_cols(block: int, lanes: int) -> pl.BlockSpec:
    """Block ``i`` of a per-head column ``[B, N, L, W]`` (logsumexp, delta)."""
    return pl.BlockSpec((None, None, block, lanes), lambda b, n, i: (b, n, i, 0))


def _head_row(length: int) -> pl.BlockSpec:
    """All of a per-head row ``[B, N, 1, L]`` (logsumexp, delta)."""
    return pl.BlockSpec((None, None, 1, length), lambda b, n, i: (b, n, 0, 0))


def _query_major_specs(kernel: _Kernel, q, k, ids: _Ids) -> tuple[list[pl.BlockSpec], list[pl.BlockSpec]]:
    """The block specs the query-major kernels (forward, dq) share: q in
    blocks, k and v whole; the ids of ``_query_major_ids``."""
    _, n, length, h = q.shape
    groups, ranges, block, lanes = n // k.shape[1], ids.from_rows_BxRxL.shape[1], kernel.block, kernel.lanes
    qkv = [_seq_block(block, h), _seq_all(length, h, groups), _seq_all(length, h, groups)]
    id_specs = [_id_cols(block, None, lanes), _id_rows(length, 1), _id_rows(length, ranges), _id_rows(length, ranges)]
    return qkv, id_specs


def _query_major_ids(ids: _Ids) -> tuple[jax.Array, ...]:
    """The id arrays the query-major kernels read, in ``_query_major_specs`` order."""
    return ids.seg_cols_Bx1xLxW, ids.seg_rows_Bx1xL, ids.from_rows_BxRxL, ids.until_rows_BxRxL


def _forward(kernel: _Kernel, q, k, v, ids: _Ids) -> tuple[jax.Array, jax.Array]:
    """(o ``[B, N, L, H]``, logsumexp ``[B, N, L]`` float32)."""
    b, n, length, h = q.shape
    block, lanes = kernel.block, kernel.lanes
    qkv_specs, id_specs = _query_major_specs(kernel, q, k, ids)
    out_specs = [_seq_block(block, h), _head_cols(block, lanes)]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, length, lanes), jnp.float32)]
    grid, in_specs = (b, n, length // block), qkv_specs + id_specs
    call = _call(_forward_kernel, kernel, k, grid, in_specs, out_specs, out_shape, "tree_flash_forward")
    o, lse_BxNxLxW = call(q, k, v, *_query_major_ids(ids))
    return o, lse_BxNxLxW[..., 0]


def _dq(kernel: _Kernel, q, k, v, o, do, lse_BxNxL, ids: _Ids) -> jax.Array:
    """dq ``[B, N, L, H]`` in q's dtype."""
    b, n, length, h = q.shape
    block, lanes = kernel.block, kernel.lanes
    qkv_specs, id_specs = _query_major_specs(kernel, q, k, ids)
    in_specs = qkv_specs + [_seq_block(block, h), _seq_block(block, h), _head_cols(block, lanes)] + id_specs
    out_spec, out_shape = _seq_block(block, h), jax.ShapeDtypeStruct(q.shape, q.dtype)
    call = _call(_dq_kernel, kernel, k, (b, n, length // block), in_specs, [out_spec], [out_shape], "tree_flash_dq")
    lse_BxNxLxW = jnp.broadcast_to(lse_BxNxL[..., None], (b, n, length, lanes))
    return call(q, k, v, o, do, lse_BxNxLxW, *_query_major_ids(ids))[0]


def _dkv(kernel: _Kernel, q, k, v, o, do, lse_BxNxL, ids: _Ids) -> tuple[jax.Array, jax.Array]:
    """(dk, dv) ``[B, K, L, H]`` in k's and v's dtypes: per query head in the
    kernel (in float32 when a group of query heads shares a kv head), summed
    over each group."""
    b, n, length, h = q.shape
    kv_heads, ranges, block, lanes = k.shape[1], ids.from_rows_BxRxL.shape[1], kernel.block, kernel.lanes
    groups = n // kv_heads
    in_specs = [
        _seq_block(block, h, groups),
        _seq_block(block, h, groups),
        _seq_all(length, h),
        _seq_all(length, h),
        _head_row(length),
        _head_row(length),
        _id_cols(block, 1, lanes),
        _id_cols(block, ranges, lanes),
        _id_cols(block, ranges, lanes),
        _id_rows(length, 1),
    ]
    out_specs = [_seq_block(block, h)] * 2
    out_shape = [jax.ShapeDtypeStruct(q.shape, x.dtype if groups == 1 else jnp.float32) for x in (k, v)]
    call = _call(_dkv_kernel, kernel, q, (b, n, length // block), in_specs, out_specs, out_shape, "tree_flash_dkv")
    delta_BxNx1xL = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)[:, :, None]
    ids_in = (ids.seg_cols_Bx1xLxW, ids.from_cols_BxRxLxW, ids.until_cols_BxRxLxW, ids.seg_rows_Bx1xL)
    dk_BxNxLxH, dv_BxNxLxH = call(k, v, q, do, lse_BxNxL[:, :, None], delta_BxNx1xL, *ids_in)
    if groups == 1:
        return dk_BxNxLxH, dv_BxNxLxH
    dk, dv = (x.reshape(b, kv_heads, groups, length, h).sum(2) for x in (dk_BxNxLxH, dv_BxNxLxH))
    return dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(kernel: _Kernel, q, k, v, ids: _Ids) -> jax.Array:
    """Attention on heads-major padded arrays (``q [B, N, L, H]``, ``k``/``v``
    ``[B, K, L, H]``)."""
    return _forward(kernel, q, k, v, ids)[0]


def _flash_forward(kernel: _Kernel, q, k, v, ids: _Ids):
    o, lse_BxNxL = _forward(kernel, q, k, v, ids)
    return o, (q, k, v, ids, o, lse_BxNxL)


def _flash_backward(kernel: _Kernel, residuals, do):
    q, k, v, ids, o, lse_BxNxL = residuals
    dq = _dq(kernel, q, k, v, o, do, lse_BxNxL, ids)
    dk, dv = _dkv(kernel, q, k, v, o, do, lse_BxNxL, ids)
    return dq, dk, dv, None


_flash.defvjp(_flash_forward, _flash_backward)
