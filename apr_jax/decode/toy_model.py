"""A minimal pure-JAX decoder with the model's cache API.

Used by the decoding tests and the throughput benchmark so they do not depend
on the full Flax model: pre-norm attention + MLP blocks with rotary positions,
a fixed-size KV cache of lanes written at each token's own position of its lane
(slot == position), and dense masked attention over the lane's first ``kv_len``
slots. Array names end in their shape (legend: ``apr_jax.decode``'s docstring).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from apr_jax.decode.model_api import DecodeModel

_NEG = -1e30


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    vocab_size: int = 64
    d_model: int = 32
    num_layers: int = 2
    num_heads: int = 2
    d_ff: int = 64
    dtype: str = "float32"

    def __post_init__(self):
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.num_heads} heads of even size")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


def init_params(cfg: ToyConfig, key: jax.Array) -> dict:
    """Random weights, scaled so logits are O(1)."""
    dt = jnp.dtype(cfg.dtype)
    k = jax.random.split(key, 7)
    D, F, Y = cfg.d_model, cfg.d_ff, cfg.num_layers

    def dense(key, shape, fan_in):
        return (jax.random.normal(key, shape) / jnp.sqrt(fan_in)).astype(dt)

    return {
        "embed_VxD": dense(k[0], (cfg.vocab_size, D), 1.0),
        "wqkv_YxDx3D": dense(k[1], (Y, D, 3 * D), D),
        "wo_YxDxD": dense(k[2], (Y, D, D), D),
        "w1_YxDxF": dense(k[3], (Y, D, F), D),
        "w2_YxFxD": dense(k[4], (Y, F, D), F),
        "unembed_DxV": dense(k[5], (D, cfg.vocab_size), D),
    }


def init_cache(cfg: ToyConfig, batch_size: int, max_len: int) -> dict:
    shape = (cfg.num_layers, batch_size, max_len, cfg.num_heads, cfg.head_dim)
    dt = jnp.dtype(cfg.dtype)
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


def _rms_norm(x):
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + 1e-6)


def _rope(x_BxTxHxJ, positions_BxT):
    half = x_BxTxHxJ.shape[-1] // 2
    freq = 1.0 / (10000.0 ** (jnp.arange(half) / half))
    angle_BxTx1xK = (jnp.maximum(positions_BxT, 0)[..., None] * freq)[:, :, None, :]
    sin, cos = jnp.sin(angle_BxTx1xK), jnp.cos(angle_BxTx1xK)
    x1, x2 = x_BxTxHxJ[..., :half], x_BxTxHxJ[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BxTxHxJ.dtype)


def decode(cfg: ToyConfig, params: dict, tokens_BxT, positions_BxT, cache, lanes_B=None, kv_len=None):
    """Write K/V at each token's position of its lane, attend to slots <= position
    (only slots < ``kv_len`` are read). Lanes default to one per row."""
    B, T = tokens_BxT.shape
    L = cache["k"].shape[2]
    lanes_B = jnp.arange(B) if lanes_B is None else lanes_B
    kv_len = L if kv_len is None else kv_len
    lanes_BxT = jnp.broadcast_to(lanes_B[:, None], (B, T))
    slots_BxT = jnp.where(positions_BxT < 0, L, positions_BxT)  # padding -> dropped
    mask_BxTxL = jnp.arange(kv_len)[None, None, :] <= positions_BxT[:, :, None]
    x_BxTxD = params["embed_VxD"][tokens_BxT]
    ks, vs = cache["k"], cache["v"]
    for n in range(cfg.num_layers):
        h = _rms_norm(x_BxTxD) @ params["wqkv_YxDx3D"][n]
        q, k, v = (a.reshape(B, T, cfg.num_heads, cfg.head_dim) for a in jnp.split(h, 3, axis=-1))
        q, k = _rope(q, positions_BxT), _rope(k, positions_BxT)
        ks = ks.at[n, lanes_BxT, slots_BxT].set(k, mode="drop")
        vs = vs.at[n, lanes_BxT, slots_BxT].set(v, mode="drop")
        k_BxLxHxJ, v_BxLxHxJ = ks[n, lanes_B, :kv_len], vs[n, lanes_B, :kv_len]
        scores_BxHxTxL = jnp.einsum("bthk,bshk->bhts", q, k_BxLxHxJ) / jnp.sqrt(cfg.head_dim)
        scores_BxHxTxL = jnp.where(mask_BxTxL[:, None], scores_BxHxTxL, _NEG)
        attn = jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(scores_BxHxTxL, axis=-1), v_BxLxHxJ)
        x_BxTxD = x_BxTxD + attn.reshape(B, T, -1) @ params["wo_YxDxD"][n]
        x_BxTxD = x_BxTxD + jax.nn.gelu(_rms_norm(x_BxTxD) @ params["w1_YxDxF"][n]) @ params["w2_YxFxD"][n]
    logits_BxTxV = (_rms_norm(x_BxTxD) @ params["unembed_DxV"]).astype(jnp.float32)
    return logits_BxTxV, {"k": ks, "v": vs}


def make_toy_model(cfg: ToyConfig, key: jax.Array) -> DecodeModel:
    """Random-weight toy decoder as a ``DecodeModel``."""
    return DecodeModel(
        params=init_params(cfg, key),
        decode_fn=lambda p, t, pos, c, lanes=None, kv_len=None: decode(cfg, p, t, pos, c, lanes, kv_len),
        init_cache=lambda b, n: init_cache(cfg, b, n),
    )


def full_forward_logits(model: DecodeModel, tokens_BxT) -> jax.Array:
    """Logits of a whole sequence from a fresh cache (no incremental decoding)."""
    B, T = tokens_BxT.shape
    positions_BxT = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    logits, _ = model.decode_fn(model.params, tokens_BxT, positions_BxT, model.init_cache(B, T))
    return logits
