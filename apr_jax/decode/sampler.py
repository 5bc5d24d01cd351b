"""Token sampling (greedy / temperature / top-p) and a plain batched generator.

``generate`` is the single-thread decoder: one prefill call over the padded
prompts (prompt width padded to a power-of-two bucket, so it compiles once per
bucket), then a ``lax.while_loop`` that feeds each row its last token at its
own position into a fixed-size, donated KV cache until every row has written a
stop token or ``max_new_tokens``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from apr_jax.decode.model_api import DecodeFn, as_decode_model


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """``temperature == 0`` means greedy (argmax); ``top_p`` keeps the smallest
    set of most likely tokens whose probability mass reaches ``top_p``."""

    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def top_p_mask(logits_BxV: jax.Array, top_p: float) -> jax.Array:
    """Logits with every token outside the top-p nucleus set to -inf.
    The most likely token is always kept; ties at the cut-off are kept."""
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    keep_BxV = mass_before_BxV < top_p
    cutoff_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BxV >= cutoff_Bx1, logits_BxV, -jnp.inf)


def sample_tokens(key: jax.Array, logits_BxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """One token per row (int32 [B])."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    if cfg.greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV / cfg.temperature
    if cfg.top_p < 1.0:
        logits_BxV = top_p_mask(logits_BxV, cfg.top_p)
    return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


def bucket_length(n: int, minimum: int = 8) -> int:
    """Smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


@dataclasses.dataclass
class GenerateOutput:
    tokens: np.ndarray  # int32 [B, max_new_tokens], pad after each row's end
    lengths: np.ndarray  # int32 [B], tokens written including the stop token


@functools.partial(
    jax.jit,
    static_argnames=("decode_fn", "sampling", "stop_ids", "max_new_tokens", "pad_id"),
    donate_argnames=("cache",),
)
def _generate_jit(
    params,
    prompt_BxT,
    prompt_len_B,
    cache,
    key,
    *,
    decode_fn: DecodeFn,
    sampling: SamplingConfig,
    stop_ids: tuple[int, ...],
    max_new_tokens: int,
    pad_id: int,
):
    B, T = prompt_BxT.shape
    lanes_B, kv_len = jnp.arange(B, dtype=jnp.int32), T + max_new_tokens
    positions_BxT = jnp.where(jnp.arange(T)[None] < prompt_len_B[:, None], jnp.arange(T)[None], -1)
    logits_BxTxV, cache = decode_fn(params, prompt_BxT, positions_BxT, cache, lanes_B, kv_len)
    last_BxV = logits_BxTxV[jnp.arange(B), prompt_len_B - 1]
    first_B = sample_tokens(jax.random.fold_in(key, 0), last_BxV, sampling)
    stop_X = jnp.asarray(stop_ids, jnp.int32)

    def cond(state):
        i, _, done_B, _, _, _ = state
        return (i < max_new_tokens) & ~jnp.all(done_B)

    def body(state):
        i, tok_B, done_B, out_BxW, count_B, cache = state
        out_BxW = out_BxW.at[:, i].set(jnp.where(done_B, pad_id, tok_B))
        count_B = count_B + (~done_B).astype(jnp.int32)
        done_B = done_B | jnp.any(tok_B[:, None] == stop_X[None], axis=-1)
        pos_Bx1 = jnp.where(done_B, -1, prompt_len_B + i)[:, None]
        logits_Bx1xV, cache = decode_fn(params, tok_B[:, None], pos_Bx1, cache, lanes_B, kv_len)
        tok_B = sample_tokens(jax.random.fold_in(key, i + 1), logits_Bx1xV[:, 0], sampling)
        return i + 1, tok_B, done_B, out_BxW, count_B, cache

    init = (
        jnp.int32(0),
        first_B,
        jnp.zeros((B,), bool),
        jnp.full((B, max_new_tokens), pad_id, jnp.int32),
        jnp.zeros((B,), jnp.int32),
        cache,
    )
    _, _, _, out_BxW, count_B, cache = jax.lax.while_loop(cond, body, init)
    return out_BxW, count_B, cache  # the cache is returned so its donated buffer is reused


def pad_prompts(prompts: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token lists into an int32 [B, width] array plus lengths."""
    out = np.full((len(prompts), width), pad_id, np.int32)
    for i, p in enumerate(prompts):
        out[i, : len(p)] = p
    return out, np.asarray([len(p) for p in prompts], np.int32)


def check_prompts(prompts: Any, vocab_hint: str = "prompt") -> list[list[int]]:
    """Validate a list of non-empty token-id lists; return them as int lists."""
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{vocab_hint}s must be a non-empty list of token-id lists")
    out = []
    for i, p in enumerate(prompts):
        try:
            ids = [int(t) for t in p]
        except (TypeError, ValueError):
            raise ValueError(f"{vocab_hint} {i} is not a list of token ids: {p!r}") from None
        if any(t < 0 for t in ids):
            raise ValueError(f"{vocab_hint} {i} has a negative token id")
        out.append(ids)
    return out


def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_ids: Sequence[int] = (3,),
    sampling: SamplingConfig = SamplingConfig(),
    key: jax.Array | None = None,
    pad_id: int = 0,
) -> GenerateOutput:
    """Sample up to ``max_new_tokens`` after each prompt (prompts include BOS if
    the model expects it). A row ends at its first token in ``stop_ids``."""
    dm = as_decode_model(model)
    prompts = check_prompts(prompts)
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    width = bucket_length(max(len(p) for p in prompts))
    prompt_BxT, prompt_len_B = pad_prompts(prompts, width, pad_id)
    cache = dm.init_cache(len(prompts), width + max_new_tokens)
    key = jax.random.key(0) if key is None else key
    out, count, _ = _generate_jit(
        dm.params,
        jnp.asarray(prompt_BxT),
        jnp.asarray(prompt_len_B),
        cache,
        key,
        decode_fn=dm.decode_fn,
        sampling=sampling,
        stop_ids=tuple(int(s) for s in stop_ids),
        max_new_tokens=int(max_new_tokens),
        pad_id=int(pad_id),
    )
    return GenerateOutput(tokens=np.asarray(out), lengths=np.asarray(count))
