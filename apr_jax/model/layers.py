"""Building blocks: logically-named parameters, RMSNorm, rotary positions, SwiGLU."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from apr_jax.runtime.sharding import constrain

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


def dtype_of(name: str) -> jnp.dtype:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def fast_init_key(key: jax.Array) -> jax.Array:
    """An RBG key derived from an nnx (threefry) key.

    Initial values are drawn with XLA's RngBitGenerator: each threefry draw
    costs ~0.5 s of CPU compile time, RBG a small fraction, and RBG draws are
    identical whether or not the output is sharded. Deterministic per seed.
    """
    data = jax.random.key_data(key).reshape(-1)[:2]
    return jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)]), impl="rbg")


def make_param(
    rngs: nnx.Rngs, init: Initializer, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype: jnp.dtype
) -> nnx.Param:
    """A parameter tagged with logical axes (placed later by ``sharding.shard_model``)."""
    value = init(fast_init_key(rngs.params()), shape, dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def normal(stddev: float) -> Initializer:
    return lambda key, shape, dtype: (stddev * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale, computed in float32."""

    def __init__(self, dim: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs, eps: float = 1e-6):
        self.scale = make_param(rngs, lambda k, s, d: jnp.ones(s, d), (dim,), ("norm",), param_dtype)
        self.eps = eps

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        x = x_BxLxD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return (x * self.scale.get_value().astype(jnp.float32)).astype(x_BxLxD.dtype)


def rotary_inv_freq(
    head_dim: int, theta: float, llama3_scaling: tuple[float, float, float, int] | None = None
) -> jax.Array:
    """Rotary frequencies, optionally rescaled the Llama 3.1 way: with
    ``(factor, low_freq_factor, high_freq_factor, original_max_len)``,
    wavelengths longer than ``original_max_len / low_freq_factor`` are
    stretched by ``factor``, those shorter than ``original_max_len /
    high_freq_factor`` kept, and the ones between interpolated."""
    half = head_dim // 2
    inv_freq_F = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    if llama3_scaling is None:
        return inv_freq_F
    factor, low, high, original = llama3_scaling
    wavelen_F = 2 * jnp.pi / inv_freq_F
    scaled_F = jnp.where(wavelen_F > original / low, inv_freq_F / factor, inv_freq_F)
    smooth_F = (original / wavelen_F - low) / (high - low)
    smoothed_F = (1 - smooth_F) * scaled_F / factor + smooth_F * scaled_F
    medium_F = (wavelen_F >= original / high) & (wavelen_F <= original / low)
    return jnp.where(medium_F, smoothed_F, scaled_F)


def apply_rotary(
    x_BxLxNxH: jax.Array,
    positions_BxL: jax.Array,
    theta: float,
    llama3_scaling: tuple[float, float, float, int] | None = None,
) -> jax.Array:
    """Rotary position embedding (half-split convention) at explicit positions."""
    half = x_BxLxNxH.shape[-1] // 2
    inv_freq_F = rotary_inv_freq(x_BxLxNxH.shape[-1], theta, llama3_scaling)
    angle_BxLxF = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_F
    sin = jnp.sin(angle_BxLxF)[:, :, None, :]
    cos = jnp.cos(angle_BxLxF)[:, :, None, :]
    x = x_BxLxNxH.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxNxH.dtype)


class SwiGLU(nnx.Module):
    """Gated MLP: down(silu(x W_gate) * (x W_up))."""

    def __init__(self, d_model: int, d_ff: int, num_layers: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.gate_DxF = make_param(rngs, normal(d_model**-0.5), (d_model, d_ff), ("embed", "mlp"), param_dtype)
        self.up_DxF = make_param(rngs, normal(d_model**-0.5), (d_model, d_ff), ("embed", "mlp"), param_dtype)
        self.down_FxD = make_param(
            rngs, normal((2 * num_layers * d_ff) ** -0.5), (d_ff, d_model), ("mlp", "embed"), param_dtype
        )

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        dtype = x_BxLxD.dtype
        gate = jnp.einsum("bld,df->blf", x_BxLxD, self.gate_DxF.get_value().astype(dtype))
        up = jnp.einsum("bld,df->blf", x_BxLxD, self.up_DxF.get_value().astype(dtype))
        h_BxLxF = constrain(jax.nn.silu(gate) * up, ("activation_batch", "activation_length", "activation_mlp"))
        return jnp.einsum("blf,fd->bld", h_BxLxF, self.down_FxD.get_value().astype(dtype))
