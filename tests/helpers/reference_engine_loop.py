"""Reference engine for the tests: the first spawn/join loop, kept verbatim in
behaviour. Every step runs the model on every thread row over the whole cache
(one cache row per thread row, never reused), feeds one forced token per step
and prefills only root prompts. Slow by design and easy to read; the
production loop (``apr_jax.decode.engine_loop``) must produce the same threads.
``decode_fn`` here is the 4-argument ``(params, tokens, positions, cache)``."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from apr_jax import threads as threads_lib
from apr_jax.decode.engine_loop import token_logprobs
from apr_jax.decode.model_api import DecodeFn
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.sampler import SamplingConfig, sample_tokens

FREE, RUNNING, WAITING, DONE = 0, 1, 2, 3
ROLE_PROMPT, ROLE_MODEL, ROLE_JOIN = 0, 1, 2
PER_GROUP = ("next_free", "dropped_children", "dropped_pool")  # state arrays with one value per group
STOP = {name: i for i, name in enumerate(threads_lib.STOPS)}


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """Static shape/behaviour of one compiled loop."""

    ids: ProtocolIds
    slots: int  # S: rows per group
    max_children: int  # K
    max_context: int  # L
    prefill_width: int  # root prompts (minus last token) are prefilled in one call this wide
    sampling: SamplingConfig


@dataclasses.dataclass(frozen=True)
class Limits:
    """Limits passed as traced scalars, so changing them does not recompile."""

    max_rounds: jax.Array
    max_depth: jax.Array
    tokens_per_thread: jax.Array
    max_steps: jax.Array


jax.tree_util.register_dataclass(
    Limits, data_fields=["max_rounds", "max_depth", "tokens_per_thread", "max_steps"], meta_fields=[]
)


def init_state(spec: LoopSpec, prompt_buf_RxL, prompt_len_R, active_G, cache):
    """State with each active group's root holding its prompt as forced tokens."""
    R, L = prompt_buf_RxL.shape
    S = spec.slots
    is_root_R = (jnp.arange(R) % S) == 0
    root_active_R = is_root_R & jnp.repeat(active_G, S)
    i32 = functools.partial(jnp.full, (R,), dtype=jnp.int32)
    return {
        "step": jnp.int32(0),
        "cache": cache,
        "buf": prompt_buf_RxL.astype(jnp.int32),
        "role": jnp.zeros((R, L), jnp.int8),
        "logp": jnp.zeros((R, L), jnp.float32),  # sampling-time log-prob of model tokens
        "length": jnp.where(is_root_R, prompt_len_R, 0).astype(jnp.int32),
        "fed": i32(0),
        "status": jnp.where(root_active_R, RUNNING, jnp.where(is_root_R, DONE, FREE)).astype(jnp.int32),
        "stop": i32(STOP["running"]),
        "parent": i32(-1),
        "depth": i32(0),
        "rounds": i32(0),  # spawns this thread made
        "spawn_round": i32(-1),  # which of its parent's spawns created this thread
        "written": i32(0),
        "spawn_open": i32(-1),  # buffer index of the open <spawn>
        "return_open": i32(-1),  # buffer index of the last <return>
        "child_lo": i32(0),  # first slot of the current spawn's children
        "child_n": i32(0),
        "next_free": jnp.ones((R // S,), jnp.int32),
        "dropped_children": jnp.zeros((R // S,), jnp.int32),  # over max_children
        "dropped_pool": jnp.zeros((R // S,), jnp.int32),  # no free slot left
    }


def prefill(spec: LoopSpec, decode_fn: DecodeFn, params, s):
    """Feed every root prompt except its last token in one call."""
    T = spec.prefill_width
    t_1xT = jnp.arange(T)[None]
    pos_RxT = jnp.where(t_1xT < s["length"][:, None] - 1, t_1xT, -1)
    _, cache = decode_fn(params, s["buf"][:, :T], pos_RxT, s["cache"])
    return {**s, "cache": cache, "fed": jnp.maximum(s["length"] - 1, 0)}


def _feed_and_sample(spec, decode_fn, params, key, s, limits: Limits):
    """One model step for all rows; append sampled tokens; classify events."""
    ids, L = spec.ids, spec.max_context
    R = s["buf"].shape[0]
    rows_R = jnp.arange(R)
    running_R = s["status"] == RUNNING
    feed_tok_R = s["buf"][rows_R, jnp.minimum(s["fed"], L - 1)]
    feed_pos_R = jnp.where(running_R, s["fed"], -1)
    logits_Rx1xV, cache = decode_fn(params, feed_tok_R[:, None], feed_pos_R[:, None], s["cache"])
    fed_R = s["fed"] + running_R
    ready_R = running_R & (fed_R == s["length"])
    x_R = sample_tokens(jax.random.fold_in(key, s["step"]), logits_Rx1xV[:, 0], spec.sampling)
    full_R = ready_R & (s["length"] >= L)
    write_R = ready_R & ~full_R
    at_R = s["length"]  # where x goes
    dest_R = jnp.where(write_R, at_R, L)  # L: dropped
    buf = s["buf"].at[rows_R, dest_R].set(x_R, mode="drop")
    role = s["role"].at[rows_R, dest_R].set(ROLE_MODEL, mode="drop")
    logp = s["logp"].at[rows_R, dest_R].set(token_logprobs(logits_Rx1xV[:, 0], x_R, spec.sampling), mode="drop")
    length_R = s["length"] + write_R
    written_R = s["written"] + write_R
    is_child_R = s["depth"] > 0

    def wrote(token_id):
        return write_R & (x_R == token_id)

    close_R = wrote(ids.spawn_close) & (s["spawn_open"] >= 0) & (limits.max_depth > 0)
    depth_refused_R = close_R & (s["depth"] >= limits.max_depth)
    round_refused_R = close_R & ~depth_refused_R & (s["rounds"] >= limits.max_rounds)
    spawn_R = close_R & ~depth_refused_R & ~round_refused_R
    spawn_open_R = jnp.where(wrote(ids.spawn_open), at_R, s["spawn_open"])
    spawn_open_R = jnp.where(close_R, -1, spawn_open_R)
    return_open_R = jnp.where(wrote(ids.return_open) & is_child_R, at_R, s["return_open"])

    stop_R = jnp.select(
        [
            wrote(ids.eos),
            wrote(ids.return_close) & is_child_R,
            depth_refused_R,
            round_refused_R,
            spawn_R,
            write_R & (written_R >= limits.tokens_per_thread),
            full_R | (write_R & (length_R >= L)),
        ],
        [
            STOP["eos"],
            STOP["return"],
            STOP["depth_limit"],
            STOP["round_limit"],
            -1,
            STOP["token_limit"],
            STOP["context_limit"],
        ],
        default=-1,
    )
    ends_R = stop_R >= 0
    status_R = jnp.where(ends_R, DONE, jnp.where(spawn_R, WAITING, s["status"]))
    block_open_R = s["spawn_open"]  # the <spawn> that this step's </spawn> closes
    s = {
        **s,
        "cache": cache,
        "buf": buf,
        "role": role,
        "logp": logp,
        "fed": fed_R,
        "length": length_R,
        "written": written_R,
        "status": status_R,
        "stop": jnp.where(ends_R, stop_R, s["stop"]),
        "spawn_open": spawn_open_R,
        "return_open": return_open_R,
    }
    return s, spawn_R, block_open_R, at_R


def _spawn(spec: LoopSpec, s, spawn_R, block_open_R, block_close_R):
    """Create one child per message of each spawn block closed this step."""
    ids, S, K, L = spec.ids, spec.slots, spec.max_children, spec.max_context
    R = s["buf"].shape[0]
    G = R // S
    buf = s["buf"]
    j_1xL = jnp.arange(L)[None]
    in_block_RxL = spawn_R[:, None] & (j_1xL > block_open_R[:, None]) & (j_1xL < block_close_R[:, None])
    is_sep_RxL = in_block_RxL & (buf == ids.sep)
    msg_id_RxL = jnp.cumsum(is_sep_RxL, axis=1)
    n_msgs_R = jnp.where(spawn_R, 1 + is_sep_RxL.sum(axis=1), 0)
    req_R = jnp.minimum(n_msgs_R, K)

    # Allocate contiguous free slots per group, in slot order of the spawners.
    req_GxS = req_R.reshape(G, S)
    offset_GxS = jnp.cumsum(req_GxS, axis=1) - req_GxS
    free_G = S - s["next_free"]
    granted_GxS = jnp.clip(free_G[:, None] - offset_GxS, 0, req_GxS)
    child_lo_GxS = s["next_free"][:, None] + offset_GxS

    # Message k of row r: tokens [start, start + len) of its buffer.
    k_K = jnp.arange(K)
    in_msg_RxLxK = (msg_id_RxL[:, :, None] == k_K) & in_block_RxL[:, :, None]
    msg_len_RxK = jnp.sum(in_msg_RxLxK & ~is_sep_RxL[:, :, None], axis=1)
    sep_at_RxK = jnp.sum(jnp.where(in_msg_RxLxK & is_sep_RxL[:, :, None], j_1xL[:, :, None], 0), axis=1)
    msg_start_RxK = jnp.where(k_K == 0, block_open_R[:, None], sep_at_RxK) + 1

    # Which spawner (and which of its messages) each new slot belongs to.
    f_S = jnp.arange(S)
    owns_GxFxS = (child_lo_GxS[:, None, :] <= f_S[None, :, None]) & (
        f_S[None, :, None] < (child_lo_GxS + granted_GxS)[:, None, :]
    )
    new_R = owns_GxFxS.any(axis=-1).reshape(R)
    owner_GxF = jnp.argmax(owns_GxFxS, axis=-1)
    k_GxF = f_S[None] - jnp.take_along_axis(child_lo_GxS, owner_GxF, axis=1)
    owner_R = (owner_GxF + (jnp.arange(G) * S)[:, None]).reshape(R)
    k_R = jnp.clip(k_GxF.reshape(R), 0, K - 1)
    start_R = msg_start_RxK[owner_R, k_R]
    mlen_R = msg_len_RxK[owner_R, k_R]

    src_RxL = buf[owner_R[:, None], jnp.clip(start_R[:, None] + j_1xL - 2, 0, L - 1)]
    child_RxL = jnp.where(
        j_1xL == 0, ids.bos, jnp.where(j_1xL == 1, ids.child, jnp.where(j_1xL < 2 + mlen_R[:, None], src_RxL, ids.pad))
    )

    def for_new(new_value, old):
        return jnp.where(new_R, new_value, old)

    spawn_lo_R = child_lo_GxS.reshape(R)
    spawn_n_R = granted_GxS.reshape(R)
    return {
        **s,
        "buf": jnp.where(new_R[:, None], child_RxL, buf),
        "role": jnp.where(new_R[:, None], jnp.int8(ROLE_PROMPT), s["role"]),
        "logp": jnp.where(new_R[:, None], 0.0, s["logp"]),
        "length": for_new(jnp.minimum(2 + mlen_R, L), s["length"]),
        "fed": for_new(0, s["fed"]),
        "status": for_new(RUNNING, s["status"]),
        "stop": for_new(STOP["running"], s["stop"]),
        "parent": for_new(owner_R % S, s["parent"]),
        "depth": for_new(s["depth"][owner_R] + 1, s["depth"]),
        "spawn_round": for_new(s["rounds"][owner_R], s["spawn_round"]),
        "written": for_new(0, s["written"]),
        "spawn_open": for_new(-1, s["spawn_open"]),
        "return_open": for_new(-1, s["return_open"]),
        "rounds": s["rounds"] + spawn_R,
        "child_lo": jnp.where(spawn_R, spawn_lo_R, s["child_lo"]),
        "child_n": jnp.where(spawn_R, spawn_n_R, s["child_n"]),
        "next_free": s["next_free"] + granted_GxS.sum(axis=1),
        "dropped_children": s["dropped_children"] + (n_msgs_R - req_R).reshape(G, S).sum(axis=1),
        "dropped_pool": s["dropped_pool"] + (req_GxS - granted_GxS).sum(axis=1),
    }


def join_ready(spec: LoopSpec, s):
    """Waiting rows whose children of the current spawn are all done."""
    S = spec.slots
    G = s["buf"].shape[0] // S
    done_GxS = (s["status"] == DONE).reshape(G, S).astype(jnp.int32)
    cum_Gx1S = jnp.concatenate([jnp.zeros((G, 1), jnp.int32), jnp.cumsum(done_GxS, axis=1)], axis=1)
    lo_GxS = s["child_lo"].reshape(G, S)
    n_GxS = s["child_n"].reshape(G, S)
    done_count_GxS = jnp.take_along_axis(cum_Gx1S, jnp.clip(lo_GxS + n_GxS, 0, S), axis=1) - jnp.take_along_axis(
        cum_Gx1S, jnp.clip(lo_GxS, 0, S), axis=1
    )
    return (s["status"] == WAITING) & (done_count_GxS == n_GxS).reshape(-1)


def _join(spec: LoopSpec, s, ready_R, limits: Limits):
    """Append each ready parent's join block and let it run again."""
    ids, S, K, L = spec.ids, spec.slots, spec.max_children, spec.max_context
    R = s["buf"].shape[0]
    buf = s["buf"]
    k_K = jnp.arange(K)
    group_base_R = (jnp.arange(R) // S) * S
    child_RxK = group_base_R[:, None] + jnp.clip(s["child_lo"][:, None] + k_K, 0, S - 1)
    valid_RxK = k_K < s["child_n"][:, None]
    returned_RxK = s["stop"][child_RxK] == STOP["return"]
    c_len_RxK = s["length"][child_RxK]
    c_ret_RxK = s["return_open"][child_RxK]
    m_start_RxK = jnp.where(c_ret_RxK >= 0, c_ret_RxK + 1, c_len_RxK - 1)
    m_len_RxK = jnp.where(returned_RxK, c_len_RxK - 1 - m_start_RxK, 1)
    piece_RxK = jnp.where(valid_RxK, 1 + m_len_RxK, jnp.where(k_K == 0, 1, 0))
    off_RxK = jnp.cumsum(piece_RxK, axis=1) - piece_RxK
    total_R = piece_RxK.sum(axis=1) + 1

    t_RxL = jnp.arange(L)[None] - s["length"][:, None]  # position inside the join block
    starts_RxLxK = (off_RxK[:, None, :] <= t_RxL[:, :, None]) & (piece_RxK[:, None, :] > 0)
    kt_RxL = jnp.clip(starts_RxLxK.sum(axis=-1) - 1, 0, K - 1)
    within_RxL = t_RxL - jnp.take_along_axis(off_RxK, kt_RxL, axis=1)
    src_row_RxL = jnp.take_along_axis(child_RxK, kt_RxL, axis=1)
    src_col_RxL = jnp.take_along_axis(m_start_RxK, kt_RxL, axis=1) + within_RxL - 1
    src_RxL = buf[src_row_RxL, jnp.clip(src_col_RxL, 0, L - 1)]
    body_RxL = jnp.where(jnp.take_along_axis(returned_RxK, kt_RxL, axis=1), src_RxL, ids.trunc)
    delim_RxL = jnp.where(kt_RxL == 0, ids.join_open, ids.sep)
    tok_RxL = jnp.where(t_RxL == total_R[:, None] - 1, ids.join_close, jnp.where(within_RxL == 0, delim_RxL, body_RxL))
    in_join_RxL = ready_R[:, None] & (t_RxL >= 0) & (t_RxL < total_R[:, None])

    truncated_R = ready_R & (s["length"] + total_R > L)
    over_R = ready_R & ~truncated_R & (s["written"] >= limits.tokens_per_thread)
    stop_R = jnp.where(truncated_R, STOP["context_limit"], jnp.where(over_R, STOP["token_limit"], s["stop"]))
    status_R = jnp.where(truncated_R | over_R, DONE, jnp.where(ready_R, RUNNING, s["status"]))
    return {
        **s,
        "buf": jnp.where(in_join_RxL, tok_RxL, buf),
        "role": jnp.where(in_join_RxL, jnp.int8(ROLE_JOIN), s["role"]),
        "logp": jnp.where(in_join_RxL, 0.0, s["logp"]),
        "length": jnp.where(ready_R, jnp.minimum(s["length"] + total_R, L), s["length"]),
        "status": status_R,
        "stop": stop_R,
    }


def step(spec: LoopSpec, decode_fn: DecodeFn, params, key, limits: Limits, s):
    """One loop iteration: feed/sample every row, then spawn, then join."""
    s, spawn_R, block_open_R, block_close_R = _feed_and_sample(spec, decode_fn, params, key, s, limits)
    s = jax.lax.cond(
        jnp.any(spawn_R), lambda st: _spawn(spec, st, spawn_R, block_open_R, block_close_R), lambda st: st, s
    )
    ready_R = join_ready(spec, s)
    s = jax.lax.cond(jnp.any(ready_R), lambda st: _join(spec, st, ready_R, limits), lambda st: st, s)
    return {**s, "step": s["step"] + 1}


def roots_running(spec: LoopSpec, s) -> jax.Array:
    return jnp.any(s["status"][:: spec.slots] != DONE)


@functools.partial(jax.jit, static_argnames=("spec", "decode_fn"), donate_argnames=("cache",))
def run_loop(
    params, prompt_buf_RxL, prompt_len_R, active_G, cache, key, limits: Limits, *, spec: LoopSpec, decode_fn: DecodeFn
):
    """Prefill the roots, then decode until every root is done or the step cap.
    Returns the final state (the cache included, so its donated buffer is reused)."""
    s = init_state(spec, prompt_buf_RxL, prompt_len_R, active_G, cache)
    s = prefill(spec, decode_fn, params, s)
    return jax.lax.while_loop(
        lambda st: (st["step"] < limits.max_steps) & roots_running(spec, st),
        lambda st: step(spec, decode_fn, params, key, limits, st),
        s,
    )
