"""Model hyperparameters, parameter counts, FLOPs per token and device peaks."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from apr_jax.config import checks

DTYPES = ("float32", "bfloat16")
ATTENTIONS = ("auto", "xla", "triton", "cudnn", "splash")
# Activation checkpointing per block: keep every activation, keep only the
# matmul outputs (recompute norms, rotary, SwiGLU's gate), or keep only the
# block's input (recompute the whole block in the backward pass).
REMATS = ("none", "dots", "full")
# Fields that change how the model computes, not its parameters: a checkpoint
# trained under one setting loads under another.
COMPUTE_FIELDS = ("compute_dtype", "attention", "remat")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of the Llama-style decoder."""

    vocab_size: int
    num_layers: int
    d_model: int
    num_heads: int
    num_kv_heads: int
    d_ff: int
    max_len: int
    tie_embeddings: bool = True
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    attention: str = "auto"  # auto (triton on GPU, splash on TPU, else xla) | xla | triton | cudnn | splash
    remat: str = "none"  # none | dots (keep matmul outputs) | full (recompute each block)
    rope_theta: float = 10000.0
    head_dim: int = 0  # 0: d_model // num_heads
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2)
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before rotary (Qwen3)
    norm_eps: float = 1e-6  # epsilon of every RMSNorm
    # Llama 3.1 rotary rescaling (0: none); see layers.rotary_inv_freq.
    rope_scaling_factor: float = 0.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192

    def __post_init__(self):
        for name in ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "d_ff", "max_len"):
            checks.positive_int(f"model.{name}", getattr(self, name))
        if self.head_dim == 0:
            if self.d_model % self.num_heads:
                raise ValueError(
                    f"config.model.d_model={self.d_model} is not divisible by config.model.num_heads={self.num_heads}"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
        if not isinstance(self.head_dim, int) or isinstance(self.head_dim, bool) or self.head_dim < 1:
            raise ValueError(f"model.head_dim must be a positive integer (or 0), got {self.head_dim!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"config.model.num_heads={self.num_heads} is not divisible by "
                f"config.model.num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"model head_dim ({self.head_dim}) must be even for rotary")
        for name in ("param_dtype", "compute_dtype"):
            checks.choice(f"model.{name}", getattr(self, name), DTYPES)
        checks.choice("model.attention", self.attention, ATTENTIONS)
        if isinstance(self.remat, bool):  # older configs: remat on/off
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        checks.choice("model.remat", self.remat, REMATS)
        if self.rope_theta <= 0:
            raise ValueError(f"model.rope_theta must be positive, got {self.rope_theta!r}")
        if self.norm_eps <= 0:
            raise ValueError(f"model.norm_eps must be positive, got {self.norm_eps!r}")
        if self.rope_scaling_factor < 0 or (
            self.rope_scaling_factor
            and not (0 < self.rope_low_freq_factor < self.rope_high_freq_factor and self.rope_original_max_len > 0)
        ):
            raise ValueError(
                f"model rope scaling needs rope_scaling_factor >= 0, 0 < rope_low_freq_factor < "
                f"rope_high_freq_factor and rope_original_max_len > 0, got {self.rope_scaling_factor}, "
                f"{self.rope_low_freq_factor}, {self.rope_high_freq_factor}, {self.rope_original_max_len}"
            )

    @property
    def rope_llama3_scaling(self) -> tuple[float, float, float, int] | None:
        """(factor, low_freq_factor, high_freq_factor, original_max_len), or None when off."""
        if not self.rope_scaling_factor:
            return None
        return (
            self.rope_scaling_factor,
            self.rope_low_freq_factor,
            self.rope_high_freq_factor,
            self.rope_original_max_len,
        )

    @classmethod
    def from_config(cls, model_cfg: Any, vocab_size: int) -> "ModelConfig":
        """Builds from the ``model`` section of a config (ConfigDict or mapping)."""
        section = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.name == "vocab_size":
                continue
            value = section.get(field.name)
            if value is None:
                if field.default is dataclasses.MISSING:
                    raise ValueError(f"config.model.{field.name} is missing")
                continue
            kwargs[field.name] = value
        kwargs["rope_theta"] = float(kwargs.get("rope_theta", cls.rope_theta))
        for name in ("norm_eps", "rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
            kwargs[name] = float(kwargs.get(name, getattr(cls, name)))
        return cls(vocab_size=int(vocab_size), **kwargs)


def num_params(cfg: ModelConfig, non_embedding: bool = False) -> int:
    """Exact parameter count of ``Transformer(cfg)``.

    ``non_embedding`` leaves out the token embedding and an untied output head
    (the convention of Kaplan et al.); norms and all block weights stay in.
    """
    d, h = cfg.d_model, cfg.head_dim
    attention = d * cfg.num_heads * h * 2 + d * cfg.num_kv_heads * h * 2  # q, o, k, v
    mlp = 3 * d * cfg.d_ff
    per_layer = attention + mlp + 2 * d  # two RMSNorm scales
    per_layer += (cfg.num_heads + 2 * cfg.num_kv_heads) * h if cfg.qkv_bias else 0
    per_layer += 2 * h if cfg.qk_norm else 0
    body = cfg.num_layers * per_layer + d  # final norm
    if non_embedding:
        return body
    embedding = cfg.vocab_size * d
    head = 0 if cfg.tie_embeddings else d * cfg.vocab_size
    return body + embedding + head


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token at sequence length ``seq_len``.

    ``6 * N_matmul + 6 * num_layers * num_heads * head_dim * seq_len`` where
    ``N_matmul`` = block matmul weights + the output projection ``d_model * vocab``
    (norm scales and the embedding lookup do no matmul work). The second term
    is causal attention: QK^T and AV cost ``2 * 2 * d_attn * seq_len`` FLOPs per
    token forward without the causal saving; with it half, and x3 for
    forward + backward. MFU = tokens/s * flops_per_token / (devices * peak).
    """
    d, h = cfg.d_model, cfg.head_dim
    block_matmul = cfg.num_layers * (d * cfg.num_heads * h * 2 + d * cfg.num_kv_heads * h * 2 + 3 * d * cfg.d_ff)
    n_matmul = block_matmul + d * cfg.vocab_size
    attention = 6 * cfg.num_layers * cfg.num_heads * h * seq_len
    return float(6 * n_matmul + attention)


# Dense bf16 matrix peak per device (vendor figures): what MFU on an accelerator
# is relative to.
_PEAKS = (
    ("h200", 989e12),
    ("h100", 989e12),
    ("gh200", 989e12),
    ("a100", 312e12),
    ("l4", 121e12),
    ("v6 lite", 918e12),
    ("v6e", 918e12),
    ("v5 lite", 197e12),
    ("v5e", 197e12),
    ("v5p", 459e12),
    ("v5", 459e12),
    ("v4", 275e12),
)


def measured_cpu_matmul_flops(size: int = 1024, repeats: int = 3) -> float:
    """FLOP/s of a float32 ``size x size`` matmul on this host, best of
    ``repeats`` (about a second). CPUs have no published peak that JAX can
    reach, so CPU MFU is relative to this measured matmul rate."""
    import time

    import jax.numpy as jnp

    cpu = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((size, size), jnp.float32), cpu)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


_CPU_PEAK: list[float] = []


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """Best-effort peak FLOP/s of one device, or None when the kind is unknown.

    Accelerators: the dense bf16 figure above. CPU: the host's measured
    float32 matmul rate (``measured_cpu_matmul_flops``, once per process)
    shared by its local devices.
    """
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        if not _CPU_PEAK:
            _CPU_PEAK.append(measured_cpu_matmul_flops())
        return _CPU_PEAK[0] / max(1, jax.local_device_count())
    kind = device.device_kind.lower()
    for name, peak in _PEAKS:
        if name in kind:
            return peak
    return None
