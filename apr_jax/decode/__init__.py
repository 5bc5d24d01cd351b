"""Decoding: token sampler, plain batched generator, and the multi-thread
spawn/join engine that runs every thread of every problem in one compiled loop.

Shape suffixes. An array's name ends in its axes, one capital letter each,
joined by ``x`` (``buf_RxL``: R rows of L tokens); ``1`` is a broadcast axis
(``t_1xT``) and ``1S`` an axis of S + 1 entries. One legend for
``apr_jax.decode`` and ``apr_jax.rl`` (``rollout``, ``pack``, ``grpo``, ...):

    P  prompts (problems) of a batch
    G  samples of one prompt (``samples_per_problem``)
    N  rollouts: one sample of one prompt, P * G of a batch (the engine's groups)
    S  thread slots of one rollout (``threads_per_sample``)
    R  rows: the N * S thread rows of the engine and of a rollout batch
       (``rl.pack``: as many packed update rows)
    L  token positions of a thread's context or a cache lane (``max_context``),
       or the first ``kv_len`` of them that a model call reads
    T  token columns of a model call, or of a prompt array (a width, not a
       whole context)
    W  tokens the plain generator writes per row (``max_new_tokens``)
    B  rows of one model call, or of one (mini)batch
    C  KV-cache lanes of the engine's pool; also a step's list of threads that
       each hold a lane (spawners, join-ready parents), at most C of them
    K  children of one spawn (``max_children``)
    M  entries of a compacted list: a mask's members in order (``compact``)
    V  vocabulary
    X  any length: a helper's argument, as long as its caller makes it
    D, F, H, J, Y  the toy model's width, MLP width, heads, head width, layers
    Q, E  the replay model's sequences, and rows of its lookup table
"""

from apr_jax.decode.engine import Engine, EngineConfig, EngineOutput, SampleResult, ThreadResult, to_thread_trees
from apr_jax.decode.metrics import cons_at_k, pass_at_k, sequential_tokens
from apr_jax.decode.model_api import DecodeModel, as_decode_model
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.sampler import SamplingConfig, generate, sample_tokens

__all__ = [
    "DecodeModel",
    "Engine",
    "EngineConfig",
    "EngineOutput",
    "ProtocolIds",
    "SampleResult",
    "SamplingConfig",
    "ThreadResult",
    "as_decode_model",
    "cons_at_k",
    "generate",
    "pass_at_k",
    "sample_tokens",
    "sequential_tokens",
    "to_thread_trees",
]
