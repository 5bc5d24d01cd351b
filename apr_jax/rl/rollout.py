"""Pure, jitted, fixed-shape rollouts on the spawn/join engine.

    rollout = make_rollout(decode_fn, init_cache, engine_cfg, ids, prompt_width)
    batch = rollout(params, key, PromptBatch(tokens_PxT, length_P))

Each of the P prompts is sampled G times (``engine_cfg.samples_per_problem``);
each sample (a *rollout*) owns S thread slots (``engine_cfg.threads_per_sample``),
so the batch always has ``R = P * G * S`` rows of ``L = max_context`` tokens,
whatever the number of children the model spawned: unused slots are rows with
``valid == False``. Row ``r`` belongs to rollout ``r // S`` (problem
``r // (G * S)``) and is thread ``r % S`` of it (0 = the root). One shape, so
XLA compiles the rollout, and the update that consumes it, once. Array names
end in their shape, with the letters of ``apr_jax.decode``'s legend.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from apr_jax.decode import engine_loop
from apr_jax.decode.engine import EngineConfig, make_decoder, sample_major
from apr_jax.decode.model_api import DecodeFn
from apr_jax.decode.protocol_ids import ProtocolIds


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Root prompts without BOS, right-padded: int32 [P, T] and lengths [P]."""

    tokens_PxT: jax.Array
    length_P: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RolloutBatch:
    """Every thread of every rollout as one row (see the module docstring)."""

    tokens_RxL: jax.Array  # int32: the thread's context exactly as the engine built it
    role_RxL: jax.Array  # int8: engine_loop.ROLE_* (prompt, model-written, join; inherit family: inherit, stitch)
    logp_RxL: jax.Array  # float32: sampling-time log-prob of each model-written token
    length_R: jax.Array  # int32: tokens in the row
    valid_R: jax.Array  # bool: the slot holds a thread
    rollout_R: jax.Array  # int32: which rollout (problem * G + sample)
    thread_R: jax.Array  # int32: which thread of its rollout (0 = root)
    parent_R: jax.Array  # int32: parent thread (-1 for the root)
    depth_R: jax.Array
    stop_R: jax.Array  # index into threads.STOPS
    written_R: jax.Array  # model-written tokens
    rounds_R: jax.Array  # spawns the thread made
    spawn_round_R: jax.Array  # which of its parent's spawns created it
    threads_N: jax.Array  # int32 [P * G]: slots used by each rollout
    dropped_children_N: jax.Array
    dropped_pool_N: jax.Array

    @property
    def model_mask_RxL(self) -> jax.Array:
        """1.0 on model-written tokens of valid rows; prompts, joins and padding are 0."""
        j_1xL = jnp.arange(self.tokens_RxL.shape[1])[None]
        keep = (self.role_RxL == engine_loop.ROLE_MODEL) & self.valid_R[:, None] & (j_1xL < self.length_R[:, None])
        return keep.astype(jnp.float32)

    @property
    def segment_ids_RxL(self) -> jax.Array:
        """1 on each valid row's tokens, 0 on padding (one sequence per row)."""
        j_1xL = jnp.arange(self.tokens_RxL.shape[1])[None]
        return ((j_1xL < self.length_R[:, None]) & self.valid_R[:, None]).astype(jnp.int32)

    @property
    def positions_RxL(self) -> jax.Array:
        return jnp.broadcast_to(jnp.arange(self.tokens_RxL.shape[1], dtype=jnp.int32), self.tokens_RxL.shape)


# RolloutBatch fields copied from the engine's loop state: batch field -> LoopState field.
LOOP_FIELDS = {
    "tokens_RxL": "buf_RxL",
    "role_RxL": "role_RxL",
    "logp_RxL": "logp_RxL",
    "length_R": "length_R",
    "parent_R": "parent_R",
    "depth_R": "depth_R",
    "stop_R": "stop_R",
    "written_R": "written_R",
    "rounds_R": "rounds_R",
    "spawn_round_R": "spawn_round_R",
    "threads_N": "next_free_N",
    "dropped_children_N": "dropped_children_N",
    "dropped_pool_N": "dropped_pool_N",
}


def engine_arrays(batch: RolloutBatch, num_prompts: int) -> dict[str, np.ndarray]:
    """The batch on the host, shaped as ``Engine.run_arrays`` returns the loop
    state ([problem, sample, thread, ...], by ``engine.sample_major``) and
    keyed by the loop state's names, for ``engine.sample_results``."""
    host = jax.device_get(batch)
    return sample_major({loop_name: getattr(host, name) for name, loop_name in LOOP_FIELDS.items()}, num_prompts)


def make_rollout(
    decode_fn: DecodeFn,
    init_cache: Callable[[int, int], Any],
    cfg: EngineConfig,
    ids: ProtocolIds,
    prompt_width: int,
    *,
    chunks: int = 1,
    page_size: int = 0,
) -> Callable[[Any, jax.Array, PromptBatch], RolloutBatch]:
    """Returns ``rollout(params, key, prompts) -> RolloutBatch``, pure and jitted.

    ``prompt_width`` is the static prompt width T (tokens without BOS); the
    prompts are split into ``chunks`` sequential engine runs (``lax.map``) to
    bound the thread rows' memory (the KV cache is bounded by
    ``cfg.lanes``). Sampling keys depend only on the key, the thread row and
    the position, so the rollout is the same whatever the split. ``page_size``
    (``engine.decode_page_size``; 0: xla) is how decode calls read the cache."""
    G, S, L = cfg.samples_per_problem, cfg.threads_per_sample, cfg.max_context
    if prompt_width + 2 > L:
        raise ValueError(f"prompt width {prompt_width} leaves no room in max_context {L}")
    if chunks < 1:
        raise ValueError(f"rollout chunks must be >= 1, got {chunks}")

    def rollout(params, key: jax.Array, prompts: PromptBatch) -> RolloutBatch:
        P, T = prompts.tokens_PxT.shape
        if T != prompt_width:
            raise ValueError(f"prompts are {T} tokens wide; this rollout was built for {prompt_width}")
        if P % chunks:
            raise ValueError(f"{P} prompts do not split into {chunks} rollout chunks")
        per_chunk = P // chunks
        decode = make_decoder(decode_fn, init_cache, cfg, ids, per_chunk, prompt_width, page_size)

        def run_chunk(c, tokens_PxT, length_P):
            return decode(params, tokens_PxT, length_P, jnp.int32(per_chunk), key, c * per_chunk * G * S)

        if chunks == 1:
            s = run_chunk(jnp.int32(0), prompts.tokens_PxT, prompts.length_P)
        else:
            per = jax.lax.map(
                lambda xs: run_chunk(*xs),
                (
                    jnp.arange(chunks, dtype=jnp.int32),
                    prompts.tokens_PxT.reshape(chunks, per_chunk, T),
                    prompts.length_P.reshape(chunks, per_chunk),
                ),
            )
            s = jax.tree.map(lambda v: v.reshape((-1,) + v.shape[2:]), per.replace(cache=None))
        R = P * G * S
        row_R = jnp.arange(R, dtype=jnp.int32)
        rollout_R = row_R // S
        thread_R = row_R % S
        return RolloutBatch(
            valid_R=thread_R < s.next_free_N[rollout_R],
            rollout_R=rollout_R,
            thread_R=thread_R,
            **{name: getattr(s, loop_name) for name, loop_name in LOOP_FIELDS.items()},
        )

    return jax.jit(rollout)


def encode_prompts(token_lists: list[list[int]], width: int, pad_id: int = 0) -> PromptBatch:
    """Host-side: token-id lists (without BOS) -> a PromptBatch of static width."""
    tokens = np.full((len(token_lists), width), pad_id, np.int32)
    for i, ids in enumerate(token_lists):
        if len(ids) > width:
            raise ValueError(f"prompt {i} has {len(ids)} tokens; the rollout's prompt width is {width}")
        if not ids:
            raise ValueError(f"prompt {i} is empty")
        tokens[i, : len(ids)] = ids
    return PromptBatch(tokens, np.asarray([len(t) for t in token_lists], np.int32))
