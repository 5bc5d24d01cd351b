"""The table decode kernel (``model/table_decode.py``): a width-1 call of the
inherit family's engine reads exactly the pages its KV table lists, in place,
and gives the xla page gather's attention; it lowers to Triton for CUDA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apr_jax.model import attention
from apr_jax.model.attention import KVTable

KV_HEADS, HEADS, HEAD_DIM, LAYERS, LANES, SLOTS, PAGE = 2, 4, 16, 2, 5, 64, 8


def _tables():
    """Four rows: a root reading its own lane; a child reading its parent's
    lane below an unaligned fork (19) and its own lane after it; a stitched
    parent reading its prefix, two children's ranges from the fork and its
    own lane after the longest; a padding row."""
    lane = [[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    lo = [[0, 0, 0, 0], [0, 19, 0, 0], [0, 19, 19, 41], [0, 0, 0, 0]]
    hi = [[SLOTS, 0, 0, 0], [19, SLOTS, 0, 0], [19, 37, 41, SLOTS], [0, 0, 0, 0]]
    positions = [30, 33, 50, -1]
    as_i32 = lambda x: jnp.asarray(x, jnp.int32)
    return KVTable(as_i32(lane), as_i32(lo), as_i32(hi), PAGE), as_i32(positions), as_i32([0, 1, 3, 4])


def _inputs(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    pool = lambda: jnp.asarray(rng.normal(size=(KV_HEADS, LAYERS, LANES, SLOTS, HEAD_DIM)), dtype)
    new = lambda n: jnp.asarray(rng.normal(size=(4, n, HEAD_DIM)), dtype)
    return new(HEADS), new(KV_HEADS), new(KV_HEADS), pool(), pool()


def _gathered(q, k, v, k_pool, v_pool, layer, table, positions_B, lanes_B, pages):
    """The xla path: write the new K/V at each row's position, then gather pages."""
    pos_Bx1 = positions_B[:, None]
    slots_Bx1 = jnp.where(pos_Bx1 < 0, SLOTS, pos_Bx1)
    heads_Kx1x1 = jnp.arange(KV_HEADS)[:, None, None]
    index = (heads_Kx1x1, layer, lanes_B[None, :, None], slots_Bx1[None])
    k_pool = k_pool.at[index].set(jnp.swapaxes(k, 0, 1)[:, :, None], mode="drop")
    v_pool = v_pool.at[index].set(jnp.swapaxes(v, 0, 1)[:, :, None], mode="drop")
    return attention.table_attention(q[:, None], k_pool, v_pool, layer, table, pos_Bx1, pages * PAGE)[:, 0], k_pool


@pytest.mark.parametrize("layer", [0, 1])
def test_table_kernel_equals_the_page_gather(layer):
    table, positions_B, lanes_B = _tables()
    q, k, v, k_pool, v_pool = _inputs()
    pages = 4 * SLOTS // PAGE
    want, want_pool = _gathered(q, k, v, k_pool, v_pool, layer, table, positions_B, lanes_B, pages)
    got, got_pool, _ = attention.paged_table_decode_attention(
        q, k, v, k_pool, v_pool, layer, lanes_B, positions_B, table, pages, "cpu"
    )
    real = np.asarray(positions_B) >= 0
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=2e-5, rtol=1e-5)
    assert not np.asarray(got)[~real].any()  # a padding row sees nothing: zeros
    np.testing.assert_array_equal(np.asarray(got_pool), np.asarray(want_pool))


def test_the_kernel_reads_only_listed_slots():
    """Slots outside the listed ranges (the parent's lane past the fork, a
    child's lane before it, anything past the position) hold huge values:
    the output does not move."""
    table, positions_B, lanes_B = _tables()
    q, k, v, k_pool, v_pool = _inputs()
    pages = 4 * SLOTS // PAGE
    args = (q, k, v)
    tail = (0, lanes_B, positions_B, table, pages, "cpu")
    clean, _, _ = attention.paged_table_decode_attention(*args, k_pool, v_pool, *tail)
    slot = np.arange(SLOTS)
    seen = np.zeros((LANES, SLOTS), bool)  # any row's listed slots of layer 0
    for b in range(3):
        for e in range(4):
            lane, lo, hi = (int(x[b, e]) for x in (table.lane_BxE, table.lo_BxE, table.hi_BxE))
            seen[lane] |= (slot >= lo) & (slot < min(hi, int(positions_B[b]) + 1))
    poison = jnp.asarray(~seen)[None, None, :, :, None]
    dirty_k = jnp.where(poison, 1e4, k_pool)
    dirty_v = jnp.where(poison, 1e4, v_pool)
    dirty, _, _ = attention.paged_table_decode_attention(*args, dirty_k, dirty_v, *tail)
    np.testing.assert_allclose(np.asarray(dirty)[:3], np.asarray(clean)[:3], atol=1e-5)


def test_table_kernel_lowers_for_cuda():
    """Pallas builds the Triton IR at lowering, so block shapes and ops are
    checked on this host (compiling it needs a GPU)."""
    table, positions_B, lanes_B = _tables()
    q, k, v, k_pool, v_pool = _inputs(jnp.bfloat16)
    pages = 4 * SLOTS // PAGE

    def fn(q, k, v, k_pool, v_pool):
        return attention.paged_table_decode_attention(
            q, k, v, k_pool, v_pool, 1, lanes_B, positions_B, table, pages, "gpu"
        )[0]

    hlo = jax.jit(fn).trace(q, k, v, k_pool, v_pool).lower(lowering_platforms=("cuda",)).as_text()
    assert hlo.count("xla.gpu.triton") == 1 and "table_decode" in hlo
