"""A Hugging Face ``config.json`` of the Llama family -> this project's model fields.

Supported: ``llama`` (Llama 2/3), ``qwen2`` (Qwen2/2.5: q/k/v biases) and
``qwen3`` (Qwen3: q/k RMSNorm, explicit head_dim). Anything these layers
cannot reproduce exactly (other activations, rope scalings but Llama 3.1's, sliding windows,
output or MLP biases) is refused with one line naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

CONFIG_FILE = "config.json"
SUPPORTED = {  # model_type -> architecture class
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


class ConversionError(ValueError):
    """A pretrained checkpoint that cannot be converted; one line naming the file and field."""


@dataclasses.dataclass(frozen=True)
class HFArchitecture:
    """What the converter needs from ``config.json``."""

    model_type: str
    vocab_size: int  # embedding rows in the checkpoint
    num_layers: int
    d_model: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    max_len: int
    tie_embeddings: bool
    rope_theta: float
    norm_eps: float
    qkv_bias: bool
    qk_norm: bool
    bos_token_id: int | None
    eos_token_id: int | None
    rope_llama3: dict[str, Any] = dataclasses.field(default_factory=dict)  # Llama 3.1 scaling fields

    def model_fields(self) -> dict[str, Any]:
        """The ``config.model`` values that describe this architecture."""
        return {
            "num_layers": self.num_layers,
            "d_model": self.d_model,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "d_ff": self.d_ff,
            "max_len": self.max_len,
            "tie_embeddings": self.tie_embeddings,
            "rope_theta": self.rope_theta,
            "head_dim": self.head_dim,
            "qkv_bias": self.qkv_bias,
            "qk_norm": self.qk_norm,
            "norm_eps": self.norm_eps,
            "rope_scaling_factor": 0.0,
            **self.rope_llama3,
        }


def read_architecture(hf_dir: str) -> HFArchitecture:
    """Parse and check ``hf_dir/config.json``."""
    path = os.path.join(hf_dir, CONFIG_FILE)
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConversionError(
            f"{path}: not found (a Hugging Face model directory holds config.json and *.safetensors)"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise ConversionError(f"{path}: not a JSON object")

    def bad(field: str, why: str) -> ConversionError:
        return ConversionError(f"{path}: field {field}={raw.get(field)!r} {why}")

    model_type = raw.get("model_type")
    if model_type not in SUPPORTED:
        raise ConversionError(
            f"{path}: field model_type={model_type!r} (architectures {raw.get('architectures')}) is not "
            f"supported; supported: {', '.join(f'{t} ({c})' for t, c in SUPPORTED.items())}"
        )
    architectures = raw.get("architectures") or [SUPPORTED[model_type]]
    if architectures != [SUPPORTED[model_type]]:
        raise bad("architectures", f"is not supported; expected [{SUPPORTED[model_type]!r}]")

    def positive_int(field: str, default: Any = None) -> int:
        value = raw.get(field)
        if value is None:
            value = default
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad(field, "must be a positive integer")
        return value

    def positive_float(field: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConversionError(f"{path}: field {field}={value!r} must be a positive number")
        return float(value)

    num_heads = positive_int("num_attention_heads")
    d_model = positive_int("hidden_size")
    head_dim = raw.get("head_dim")
    if head_dim is None:
        if d_model % num_heads:
            raise bad("hidden_size", f"is not divisible by num_attention_heads={num_heads} and no head_dim is set")
        head_dim = d_model // num_heads
    head_dim = positive_int("head_dim", head_dim)
    if head_dim % 2:
        raise bad("head_dim", "must be even for rotary positions")
    num_kv_heads = positive_int("num_key_value_heads", num_heads)
    if num_heads % num_kv_heads:
        raise bad("num_key_value_heads", f"does not divide num_attention_heads={num_heads}")

    activation = raw.get("hidden_act", "silu")
    if activation != "silu":
        raise bad("hidden_act", "is not supported (only silu: the SwiGLU MLP)")
    if raw.get("mlp_bias"):
        raise bad("mlp_bias", "is not supported (the MLP has no biases)")
    if raw.get("attention_bias"):
        raise bad("attention_bias", "is not supported (no bias on the attention output projection)")
    if raw.get("use_sliding_window"):
        raise bad("use_sliding_window", "is not supported (full attention only)")

    # transformers 4 writes rope_theta and rope_scaling; 5 writes rope_parameters holding both.
    rope = raw.get("rope_parameters") or {}
    scaling_field = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
    scaling = raw.get("rope_scaling") or rope
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    llama3 = {}
    if rope_type == "llama3":
        try:
            llama3 = {
                "rope_scaling_factor": positive_float("factor", scaling["factor"]),
                "rope_low_freq_factor": positive_float("low_freq_factor", scaling["low_freq_factor"]),
                "rope_high_freq_factor": positive_float("high_freq_factor", scaling["high_freq_factor"]),
                "rope_original_max_len": int(scaling["original_max_position_embeddings"]),
            }
        except KeyError as e:
            raise bad(scaling_field, f"has rope_type 'llama3' but no {e.args[0]}") from None
    elif rope_type not in (None, "default"):
        raise bad(scaling_field, f"has rope_type {rope_type!r}, which is not supported (plain rotary and llama3 only)")
    rope_theta = positive_float("rope_theta", raw.get("rope_theta", rope.get("rope_theta", 10000.0)))
    norm_eps = positive_float("rms_norm_eps", raw.get("rms_norm_eps", 1e-6))

    def token_id(field: str) -> int | None:
        value = raw.get(field)
        if isinstance(value, list):  # Llama 3.1 lists several end tokens; the first is end-of-text
            value = value[0] if value else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return HFArchitecture(
        model_type=model_type,
        vocab_size=positive_int("vocab_size"),
        num_layers=positive_int("num_hidden_layers"),
        d_model=d_model,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        d_ff=positive_int("intermediate_size"),
        max_len=positive_int("max_position_embeddings"),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        rope_theta=rope_theta,
        norm_eps=norm_eps,
        qkv_bias=model_type == "qwen2",
        qk_norm=model_type == "qwen3",
        bos_token_id=token_id("bos_token_id"),
        eos_token_id=token_id("eos_token_id"),
        rope_llama3=llama3,
    )
