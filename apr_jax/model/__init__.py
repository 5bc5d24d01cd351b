"""Flax NNX Llama-style decoder with a per-row-position KV cache."""

from apr_jax.model.config import ModelConfig, flops_per_token, num_params, peak_flops_per_device
from apr_jax.model.transformer import KVCache, Transformer

__all__ = ["ModelConfig", "Transformer", "KVCache", "num_params", "flops_per_token", "peak_flops_per_device"]
