"""Decoding: token sampler, plain batched generator, and the multi-thread
spawn/join engine that runs every thread of every problem in one compiled loop."""

from apr_jax.decode.engine import (EngineConfig, Engine, EngineOutput, SampleResult, ThreadResult,
                                   to_thread_trees)
from apr_jax.decode.metrics import cons_at_k, pass_at_k, sequential_tokens
from apr_jax.decode.model_api import DecodeModel, as_decode_model
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.sampler import SamplingConfig, generate, sample_tokens

__all__ = [
    "DecodeModel", "Engine", "EngineConfig", "EngineOutput", "ProtocolIds", "SampleResult",
    "SamplingConfig", "ThreadResult", "as_decode_model", "cons_at_k", "generate", "pass_at_k",
    "sample_tokens", "sequential_tokens", "to_thread_trees",
]
