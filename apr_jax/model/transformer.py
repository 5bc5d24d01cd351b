"""Llama-style decoder (Flax NNX) with a per-row-position KV cache.

Two entry points share the weights:

- ``model(tokens, positions, segment_ids)``: packed training forward.
- ``model.decode(tokens, positions, cache, lanes, kv_len, page_size)``: cached
  forward for T new tokens per row, row b in cache lane ``lanes[b]``. Cache
  slot == token position; each token's K/V is scattered into slot
  ``positions[b, t]`` of its lane (positions < 0 are padding and are dropped),
  and a query at position p attends to its lane's slots 0..p, so entries
  beyond p left by an earlier thread in the same lane are ignored. The
  ``xla`` path gathers the lanes' first ``kv_len`` slots; with ``page_size``
  a width-1 call reads the pool in place with the platform's paged kernel
  (``attention.paged_decode_attention``). The scatter updates the cache buffer
  in place when the cache is a donated jit argument or a loop carry.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from apr_jax.model import attention
from apr_jax.model.config import ModelConfig
from apr_jax.model.layers import RMSNorm, SwiGLU, apply_rotary, dtype_of, make_param, normal
from apr_jax.model.tree_mask import TreeMask
from apr_jax.runtime.sharding import constrain

ACT_BLD = ("activation_batch", "activation_length", "activation_embed")
ACT_BLNH = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
ACT_BLKH = ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim")
CACHE_AXES = ("cache_kv_heads", "cache_layers", "cache_batch", "cache_length", "cache_head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer: ``[kv_heads, num_layers, lanes, slots, head_dim]``.

    KV heads lead so the whole pool, reshaped, is the page array
    ``[kv_heads, pages, page_size, head_dim]`` the paged kernels read (a
    lane's pages are consecutive): no per-layer slice or copy."""

    k: jax.Array
    v: jax.Array

    @property
    def num_layers(self) -> int:
        return self.k.shape[1]

    @property
    def batch_size(self) -> int:
        return self.k.shape[2]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def replace(self, **changes) -> "KVCache":
        return dataclasses.replace(self, **changes)


class Attention(nnx.Module):
    """Grouped-query attention with rotary positions."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, platform: str):
        d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        pdt = dtype_of(cfg.param_dtype)
        self.q_DxNxH = make_param(rngs, normal(d**-0.5), (d, n, h), ("embed", "heads", "head_dim"), pdt)
        self.k_DxKxH = make_param(rngs, normal(d**-0.5), (d, k, h), ("embed", "kv_heads", "head_dim"), pdt)
        self.v_DxKxH = make_param(rngs, normal(d**-0.5), (d, k, h), ("embed", "kv_heads", "head_dim"), pdt)
        self.o_NxHxD = make_param(
            rngs, normal((2 * cfg.num_layers * n * h) ** -0.5), (n, h, d), ("heads", "head_dim", "embed"), pdt
        )
        if cfg.qkv_bias:
            zeros = lambda key, shape, dtype: jnp.zeros(shape, dtype)
            self.q_bias_NxH = make_param(rngs, zeros, (n, h), ("heads", "head_dim"), pdt)
            self.k_bias_KxH = make_param(rngs, zeros, (k, h), ("kv_heads", "head_dim"), pdt)
            self.v_bias_KxH = make_param(rngs, zeros, (k, h), ("kv_heads", "head_dim"), pdt)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(h, param_dtype=pdt, rngs=rngs, eps=cfg.norm_eps)
            self.k_norm = RMSNorm(h, param_dtype=pdt, rngs=rngs, eps=cfg.norm_eps)
        self.qkv_bias, self.qk_norm = cfg.qkv_bias, cfg.qk_norm
        self.rope_theta = cfg.rope_theta
        self.rope_scaling = cfg.rope_llama3_scaling
        self.implementation = attention.resolve_implementation(cfg.attention, dtype_of(cfg.compute_dtype), platform)
        self.platform = platform

    def project(self, x_BxLxD: jax.Array, positions_BxL: jax.Array):
        dtype = x_BxLxD.dtype
        q = jnp.einsum("bld,dnh->blnh", x_BxLxD, self.q_DxNxH.get_value().astype(dtype))
        k = jnp.einsum("bld,dkh->blkh", x_BxLxD, self.k_DxKxH.get_value().astype(dtype))
        v = jnp.einsum("bld,dkh->blkh", x_BxLxD, self.v_DxKxH.get_value().astype(dtype))
        if self.qkv_bias:
            q = q + self.q_bias_NxH.get_value().astype(dtype)
            k = k + self.k_bias_KxH.get_value().astype(dtype)
            v = v + self.v_bias_KxH.get_value().astype(dtype)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = constrain(apply_rotary(q, positions_BxL, self.rope_theta, self.rope_scaling), ACT_BLNH)
        k = constrain(apply_rotary(k, positions_BxL, self.rope_theta, self.rope_scaling), ACT_BLKH)
        return q, k, constrain(v, ACT_BLKH)

    def output(self, o_BxLxNxH: jax.Array) -> jax.Array:
        o = constrain(o_BxLxNxH, ACT_BLNH)
        return jnp.einsum("blnh,nhd->bld", o, self.o_NxHxD.get_value().astype(o.dtype))

    def __call__(self, x_BxLxD, positions_BxL, segment_ids_BxL):
        q, k, v = self.project(x_BxLxD, positions_BxL)
        return self.output(attention.packed_attention(q, k, v, segment_ids_BxL, self.implementation, self.platform))

    def decode(
        self,
        x_BxTxD,
        positions_BxT,
        k_cache,
        v_cache,
        layer: int,
        lanes_B,
        kv_len: int,
        page_size: int = 0,
        table: attention.KVTable | None = None,
    ):
        """Writes the new K/V into ``layer`` of the cache pool at each row's
        lane, then attends over that lane's slots 0..position: through the
        paged kernel for a width-1 call when ``page_size`` is set, else by
        gathering the lane's first ``kv_len`` slots; with a ``table``, over the
        slot ranges of the lanes it lists instead (``attention.KVTable``):
        read in place by the table kernel for a paged width-1 call, else
        gathered page by page."""
        q, k, v = self.project(x_BxTxD, positions_BxT)
        if page_size and positions_BxT.shape[1] == 1:
            one = (q[:, 0], k[:, 0], v[:, 0], k_cache, v_cache, layer, lanes_B, positions_BxT[:, 0])
            if table is None:
                o, k_cache, v_cache = attention.paged_decode_attention(*one, page_size, self.platform)
            else:
                pages = kv_len // table.page
                o, k_cache, v_cache = attention.paged_table_decode_attention(*one, table, pages, self.platform)
            return self.output(o[:, None]), constrain(k_cache, CACHE_AXES), constrain(v_cache, CACHE_AXES)
        num_slots = k_cache.shape[3]
        # Negative indices would wrap around: send padding to an out-of-range slot.
        slots_BxT = jnp.where(positions_BxT < 0, num_slots, positions_BxT)
        lanes_BxT = jnp.broadcast_to(lanes_B[:, None], slots_BxT.shape)
        k_KxBxTxH, v_KxBxTxH = (jnp.transpose(x, (2, 0, 1, 3)) for x in (k, v))
        # Every axis but head_dim indexed, as in the paged write: the TPU
        # compiler then keeps the pool in the paged kernels' layout.
        heads_Kx1x1 = jnp.arange(k_cache.shape[0])[:, None, None]
        index = (heads_Kx1x1, layer, lanes_BxT[None], slots_BxT[None])
        k_cache = k_cache.at[index].set(k_KxBxTxH.astype(k_cache.dtype), mode="drop")
        v_cache = v_cache.at[index].set(v_KxBxTxH.astype(v_cache.dtype), mode="drop")
        k_cache, v_cache = constrain(k_cache, CACHE_AXES), constrain(v_cache, CACHE_AXES)
        if table is not None:
            o = attention.table_attention(q, k_cache, v_cache, layer, table, positions_BxT, kv_len)
            return self.output(o), k_cache, v_cache
        k_BxSxKxH, v_BxSxKxH = (
            jnp.transpose(x[:, layer, lanes_B, :kv_len], (1, 2, 0, 3)).astype(q.dtype) for x in (k_cache, v_cache)
        )
        o = attention.cached_attention(q, k_BxSxKxH, v_BxSxKxH, positions_BxT)
        return self.output(o), k_cache, v_cache


class Block(nnx.Module):
    """Pre-norm residual block: attention then SwiGLU."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, platform: str):
        pdt = dtype_of(cfg.param_dtype)
        self.attn_norm = RMSNorm(cfg.d_model, param_dtype=pdt, rngs=rngs, eps=cfg.norm_eps)
        self.attn = Attention(cfg, rngs=rngs, platform=platform)
        self.mlp_norm = RMSNorm(cfg.d_model, param_dtype=pdt, rngs=rngs, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff, cfg.num_layers, param_dtype=pdt, rngs=rngs)

    def __call__(self, x_BxLxD, positions_BxL, segment_ids_BxL):
        x = x_BxLxD + self.attn(self.attn_norm(x_BxLxD), positions_BxL, segment_ids_BxL)
        x = constrain(x, ACT_BLD)
        return constrain(x + self.mlp(self.mlp_norm(x)), ACT_BLD)

    def decode(
        self,
        x_BxTxD,
        positions_BxT,
        k_cache,
        v_cache,
        layer: int,
        lanes_B,
        kv_len: int,
        page_size: int = 0,
        table: attention.KVTable | None = None,
    ):
        h, k_cache, v_cache = self.attn.decode(
            self.attn_norm(x_BxTxD), positions_BxT, k_cache, v_cache, layer, lanes_B, kv_len, page_size, table
        )
        x = constrain(x_BxTxD + h, ACT_BLD)
        return constrain(x + self.mlp(self.mlp_norm(x)), ACT_BLD), k_cache, v_cache


def _block_forward(block: Block, x, positions, segment_ids):
    return block(x, positions, segment_ids)


BLOCK_FORWARDS = {
    "none": _block_forward,
    "dots": nnx.remat(_block_forward, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
    "full": nnx.remat(_block_forward),
}


class Transformer(nnx.Module):
    """Decoder-only language model returning float32 logits.

    ``platform`` ("cpu", "gpu", "tpu"; default: JAX's default backend) is where
    the training forward will run: it picks the attention kernel for
    ``cfg.attention="auto"`` (an ahead-of-time compile for a TPU slice builds
    the model for "tpu" on any host)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, platform: str | None = None):
        self.cfg = cfg
        platform = platform or jax.default_backend()
        self.platform = platform
        pdt = dtype_of(cfg.param_dtype)
        self.embed_VxD = make_param(
            rngs, normal(cfg.d_model**-0.5), (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), pdt
        )
        self.blocks = nnx.List([Block(cfg, rngs=rngs, platform=platform) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.d_model, param_dtype=pdt, rngs=rngs, eps=cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.head_DxV = make_param(
                rngs, normal(cfg.d_model**-0.5), (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), pdt
            )

    @property
    def compute_dtype(self) -> jnp.dtype:
        return dtype_of(self.cfg.compute_dtype)

    def _embed(self, tokens_BxL: jax.Array) -> jax.Array:
        _check_tokens(tokens_BxL)
        # Gather from a replicated table: a sharded-table gather makes the SPMD
        # partitioner rematerialize the whole table anyway, with a warning.
        table = constrain(self.embed_VxD.get_value(), (None, None))
        return constrain(jnp.take(table, tokens_BxL, axis=0).astype(self.compute_dtype), ACT_BLD)

    def _logits(self, x_BxLxD: jax.Array) -> jax.Array:
        x = self.final_norm(x_BxLxD)
        if self.cfg.tie_embeddings:
            logits = jnp.einsum(
                "bld,vd->blv", x, self.embed_VxD.get_value().astype(x.dtype), preferred_element_type=jnp.float32
            )
        else:
            logits = jnp.einsum(
                "bld,dv->blv", x, self.head_DxV.get_value().astype(x.dtype), preferred_element_type=jnp.float32
            )
        return constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))

    def __call__(
        self, tokens_BxL: jax.Array, positions_BxL: jax.Array, segment_ids_BxL: jax.Array | TreeMask
    ) -> jax.Array:
        """Packed training forward; returns logits [B, L, vocab] in float32.
        ``segment_ids_BxL`` may be a ``TreeMask`` (tree sequences)."""
        segments = segment_ids_BxL.segment_ids_BxT if isinstance(segment_ids_BxL, TreeMask) else segment_ids_BxL
        _check_same_shape(tokens_BxL, positions=positions_BxL, segment_ids=segments)
        x = self._embed(tokens_BxL)
        forward = BLOCK_FORWARDS[self.cfg.remat]
        for block in self.blocks:
            x = forward(block, x, positions_BxL, segment_ids_BxL)
        return self._logits(x)

    def init_cache(self, num_lanes: int, max_len: int) -> KVCache:
        """An all-zero cache of ``num_lanes`` lanes of ``max_len`` slots, in the compute dtype."""
        if num_lanes < 1 or max_len < 1:
            raise ValueError(f"init_cache needs num_lanes >= 1 and max_len >= 1, got {num_lanes}, {max_len}")
        shape = (self.cfg.num_kv_heads, self.cfg.num_layers, num_lanes, max_len, self.cfg.head_dim)
        # Two separate buffers, so both can be donated to a jitted step.
        k = constrain(jnp.zeros(shape, self.compute_dtype), CACHE_AXES)
        v = constrain(jnp.zeros(shape, self.compute_dtype), CACHE_AXES)
        return KVCache(k=k, v=v)

    def decode_page_size(self, decode_attention: str, page_size: int, max_len: int, tables: bool = False) -> int:
        """The page size width-1 decode calls read the cache in for an
        ``eval.decode_attention`` choice on this model's platform (0: the xla
        gather), reading KV tables or not; see ``attention.resolve_decode_attention``."""
        return attention.resolve_decode_attention(
            decode_attention, self.platform, self.cfg.head_dim, page_size, max_len, tables
        )

    def decode(
        self,
        tokens_BxT: jax.Array,
        positions_BxT: jax.Array,
        cache: KVCache,
        lanes_B: jax.Array | None = None,
        kv_len: int | None = None,
        page_size: int = 0,
        table: attention.KVTable | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Cached forward of T new tokens per row, row b in cache lane
        ``lanes_B[b]`` (default: lane b), attending over slots ``< kv_len``
        (default: all), or, for a width-1 call with ``page_size`` > 0, over
        exactly its slots 0..position through the paged kernel, or, with a
        ``table`` (the inherit family's engine), over the lane ranges it lists
        (``kv_len`` slots of their pages in all, which may exceed one lane);
        returns (logits [B, T, vocab] f32, cache)."""
        _check_same_shape(tokens_BxT, positions=positions_BxT)
        if lanes_B is None:
            if cache.batch_size != tokens_BxT.shape[0]:
                raise ValueError(f"cache batch {cache.batch_size} != tokens batch {tokens_BxT.shape[0]}")
            lanes_B = jnp.arange(tokens_BxT.shape[0], dtype=jnp.int32)
        elif lanes_B.shape != tokens_BxT.shape[:1]:
            raise ValueError(f"lanes shape {lanes_B.shape} != tokens batch {tokens_BxT.shape[:1]}")
        kv_len = cache.max_len if kv_len is None else int(kv_len)
        if not 1 <= kv_len <= cache.max_len and table is None:
            raise ValueError(f"kv_len {kv_len} is outside [1, {cache.max_len}]")
        if table is not None and kv_len % table.page:
            raise ValueError(f"kv_len {kv_len} is not a whole number of the table's {table.page}-slot pages")
        if cache.num_layers != self.cfg.num_layers:
            raise ValueError(f"cache has {cache.num_layers} layers, model has {self.cfg.num_layers}")
        if page_size and cache.max_len % page_size:
            raise ValueError(f"page_size {page_size} does not divide the cache's {cache.max_len} slots")
        if page_size and table is not None and table.page != page_size:
            raise ValueError(f"the KV table's {table.page}-slot pages are not the paged call's {page_size}")
        x = self._embed(tokens_BxT)
        k_cache, v_cache = cache.k, cache.v
        for layer, block in enumerate(self.blocks):
            x, k_cache, v_cache = block.decode(
                x, positions_BxT, k_cache, v_cache, layer, lanes_B, kv_len, page_size, table
            )
        return self._logits(x), KVCache(k=k_cache, v=v_cache)


def _check_tokens(tokens: jax.Array) -> None:
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integers, got {tokens.dtype}")


def _check_same_shape(tokens: jax.Array, **others: jax.Array) -> None:
    for name, array in others.items():
        if array.shape != tokens.shape:
            raise ValueError(f"{name} shape {array.shape} != tokens shape {tokens.shape}")
