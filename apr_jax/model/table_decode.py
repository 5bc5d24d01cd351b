"""Decode attention over the pages a KV table lists, as a Pallas kernel: the
inherit family's width-1 engine calls on GPU (Triton), in interpret mode on
the CPU.

One new query token per row attends over a list of pages of the pool
``[kv_heads, pages, page, head_dim]``: for each listed page its physical
index and the slots of it the row sees, ``[lo, hi)`` within the page (a
forked child sees its parent's page at the fork only below the fork; a
stitched parent sees a child's first page from the fork on). The kernel
loops over the row's ``count`` listed pages only, one page per step, with an
online softmax in float32, so a row reads exactly the pages its table lists
below its position, however long its lanes. One grid step per (row, kv
head): the query heads of a kv head's group share each page load.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

_MASKED = -1e30  # a masked logit: exp() of it minus any real logit is 0
_NT = (((1,), (1,)), ((), ()))  # A @ B.T
_NN = (((1,), (0,)), ((), ()))  # A @ B
# Triton's dot wants at least 16 rows: a kv head's query group is padded to it on GPU.
_GPU_MIN_ROWS = 16


def table_decode_attention(
    q_BxNxH: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    page_BxP: jax.Array,
    lo_BxP: jax.Array,
    hi_BxP: jax.Array,
    count_B: jax.Array,
    platform: str,
) -> jax.Array:
    """``softmax(q k^T) v`` of each row's query (already scaled) over the
    slots ``[lo_BxP[b, p], hi_BxP[b, p])`` of pages ``page_BxP[b, p]``,
    ``p < count_B[b]``, of ``k_pages``/``v_pages`` ``[kv_heads, pages, page,
    head_dim]``; query head ``n`` reads kv head ``n // (N / kv_heads)``. A row
    with no visible slot gets zeros. Returns ``[B, N, H]`` in q's dtype."""
    b, n, h = q_BxNxH.shape
    kv_heads = k_pages.shape[0]
    if n % kv_heads:
        raise ValueError(f"{n} query heads do not split into {kv_heads} kv heads")
    group = n // kv_heads
    rows = max(group, _GPU_MIN_ROWS) if platform == "gpu" else group
    q_BxKxGxH = q_BxNxH.reshape(b, kv_heads, group, h)
    q_BxKxGxH = jnp.pad(q_BxKxGxH, ((0, 0), (0, 0), (0, rows - group), (0, 0)))
    listed = page_BxP.shape[1]
    width = 1 << max(listed - 1, 0).bit_length()  # Triton blocks have power-of-two sizes
    pad = functools.partial(jnp.pad, pad_width=((0, 0), (0, width - listed)))
    page_BxP, lo_BxP, hi_BxP = (pad(x.astype(jnp.int32)) for x in (page_BxP, lo_BxP, hi_BxP))
    row_call = functools.partial(_row_attention, k_pages=k_pages, v_pages=v_pages, platform=platform)
    out_BxKxGxH = jax.vmap(row_call)(q_BxKxGxH, page_BxP, lo_BxP, hi_BxP, count_B.astype(jnp.int32)[:, None])
    return out_BxKxGxH[:, :, :group].reshape(b, n, h)


def _row_attention(q_KxGxH, page_P, lo_P, hi_P, count_1, *, k_pages, v_pages, platform: str) -> jax.Array:
    """One row's call (``table_decode_attention`` vmaps it over rows)."""
    kv_heads, total_pages, page, h = k_pages.shape
    _, rows, _ = q_KxGxH.shape
    listed = page_P.shape[0]
    whole = lambda shape: pl.BlockSpec(shape, lambda k: (0,) * len(shape))
    per_head = lambda shape: pl.BlockSpec((None, *shape), lambda k: (k,) + (0,) * len(shape))
    params = None
    if platform == "gpu":
        from jax.experimental.pallas import triton as plgpu

        params = plgpu.CompilerParams(num_warps=4 if h <= 64 else 8, num_stages=2)
    return pl.pallas_call(
        _kernel,
        grid=(kv_heads,),
        in_specs=[
            whole((1,)),
            whole((listed,)),
            whole((listed,)),
            whole((listed,)),
            per_head((rows, h)),
            per_head((total_pages, page, h)),
            per_head((total_pages, page, h)),
        ],
        out_specs=per_head((rows, h)),
        out_shape=jax.ShapeDtypeStruct(q_KxGxH.shape, q_KxGxH.dtype),
        compiler_params=params,
        interpret=platform != "gpu",
        name="table_decode",
    )(count_1, page_P, lo_P, hi_P, q_KxGxH, k_pages, v_pages)


def _kernel(count_ref, page_ref, lo_ref, hi_ref, q_ref, k_ref, v_ref, o_ref):
    rows, h = q_ref.shape
    page = k_ref.shape[1]
    q_GxH = q_ref[...]
    offsets_1xW = lax.broadcasted_iota(jnp.int32, (1, page), 1)

    def step(i, carry):
        o_GxH, m_G, l_G = carry
        at = pl.ds(i, 1)
        index = page_ref[at]
        k_WxH = k_ref[index].reshape(page, h).astype(q_GxH.dtype)
        v_WxH = v_ref[index].reshape(page, h).astype(q_GxH.dtype)
        seen_1xW = (offsets_1xW >= lo_ref[at][:, None]) & (offsets_1xW < hi_ref[at][:, None])
        s_GxW = lax.dot_general(q_GxH, k_WxH, _NT, preferred_element_type=jnp.float32)
        s_GxW = jnp.where(seen_1xW, s_GxW, _MASKED)
        m_next = jnp.maximum(m_G, jnp.max(s_GxW, axis=1))
        p_GxW = jnp.where(seen_1xW, jnp.exp(s_GxW - m_next[:, None]), 0.0)
        correction = jnp.exp(m_G - m_next)
        pv_GxH = lax.dot_general(p_GxW.astype(v_WxH.dtype), v_WxH, _NN, preferred_element_type=jnp.float32)
        return correction[:, None] * o_GxH + pv_GxH, m_next, correction * l_G + jnp.sum(p_GxW, axis=1)

    init = (
        jnp.zeros((rows, h), jnp.float32),
        jnp.full((rows,), _MASKED, jnp.float32),
        jnp.zeros((rows,), jnp.float32),
    )
    o_GxH, _, l_G = lax.fori_loop(0, count_ref[0], step, init)
    o_ref[...] = (o_GxH / jnp.where(l_G > 0, l_G, 1.0)[:, None]).astype(o_ref.dtype)
