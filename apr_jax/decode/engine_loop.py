"""The on-device multi-thread decoding loop: spawn and join inside one
``lax.while_loop``, fixed shapes, no host round trips, and a step that costs
what is alive rather than what was allocated. Array names end in their shape
(the legend is in ``apr_jax.decode``'s docstring).

Threads. Every sample of every problem (a *group*: one of the ``N`` rollouts)
owns ``S`` thread rows (slots) of one flat batch of ``R = N * S`` rows; this is
the output layout.
Slot 0 is the root; children take the next free slots in spawn order and keep
them (slots are never reused, so every thread's tokens survive to the output).
A spawn that finds too few free slots gets fewer children (the rest are
dropped and counted in ``dropped_pool``).

Per row a token buffer ``buf_RxL`` holds the thread's whole context. Tokens at
``[fed, length)`` are the *forced queue*: written by the engine (prompt, child
prompt, join block) or just sampled, and not yet fed to the model.

KV lanes. The cache is a pool of ``C`` lanes, separate from the thread rows. A
thread holds one lane from the moment it starts until it is done (a waiting
parent keeps its lane); the lane then returns to the pool and the next thread
writes over it from slot 0 (queries never look past their own position, so
stale slots do not matter). Groups are admitted in order while the pool has
room for one more group's worst case (``lanes_per_group`` lanes: the live
threads of a full spawn tree, capped at ``S``), so a spawn always finds lanes,
and a finished group's lanes take the next group at once (continuous batching).

A step. Running threads with exactly one queued token (the one just sampled)
are gathered into a *decode* call of width 1; those with more (prompts, join
blocks) into a *prefill* call that feeds up to ``prefill_chunk`` tokens;
with ``long_prefill_chunks`` (ascending wider widths) a thread goes to the
narrowest call whose width is at least half its queue, or the widest one (a
queue takes one or two steps where the widths allow, and no row waits in a
call more than twice as wide as what it feeds).
Each call's rows are compacted into the smallest of a few row buckets and the
cache is read only up to the smallest KV-length bucket that holds every
selected row's positions (one compiled model call per bucket pair, each a
while loop of at most one trip, ``_run_if``, inside its row bucket's, so a step
enters only the chosen row bucket's KV loops; the model writes the new keys
and values into the pool in place and reads its rows' lanes layer by layer,
where a ``lax.switch`` branch would copy the pool); free, waiting and finished
threads cost nothing. With ``split_by_kv_length`` each call is made once per
KV-length bucket, over the rows whose own length falls in it (same buckets,
fewer slots read, one weight read per non-empty bucket). With a ``page_size``
(``eval.decode_attention``) the width-1 call instead reads each row's pages
below its own length with the model's paged kernel (in the inherit family,
the pages its KV table lists): row buckets only, no KV-length buckets. When a feed
empties a thread's queue the logits at its last token are sampled and the token
appended (role ``model``), with a key that depends only on the thread and the
position, so the result does not depend on batching, chunking or lanes.

What each sampled token does (``x`` written by a running thread):
- ``<eos>``: the thread ends, stop ``eos`` (a child ending so is joined as
  ``<trunc>``).
- ``<return>``: remembered (the last one opens the return message); in the root
  it is plain text.
- ``</return>`` in a child: the child ends, stop ``return``; its message is the
  tokens after its last ``<return>`` (empty if none). In the root: plain text.
- ``<spawn>``: opens a spawn block (a later ``<spawn>`` restarts it).
- ``</spawn>`` with an open block, when spawning is enabled (``max_depth > 0``):
  at depth >= ``max_depth`` the thread stops with ``depth_limit``; after
  ``max_rounds`` spawns it stops with ``round_limit``; otherwise the block is
  split at ``<sep>`` into messages, one child per message up to
  ``max_children`` (extra messages dropped and counted), each child's context
  is ``<bos> <child> m_i``, and the parent waits. Without an open block, or
  with ``max_depth == 0``, ``</spawn>`` is plain text.
- anything else (``<join>``, ``</join>``, ``<sep>``, ``<trunc>``, ``<child>``,
  ``<bos>``, ``<pad>``, ...) is plain text.
- A thread that has written ``tokens_per_thread`` tokens stops with
  ``token_limit`` (an unterminated spawn block included); one whose buffer is
  full stops with ``context_limit``.
When every child of a waiting parent is done, the engine appends
``<join> r_1 <sep> r_2 ... </join>`` (``<trunc>`` for a child that did not
return; ``<join></join>`` when the spawn got no child) and the parent runs
again; a join block that does not fit is truncated and the parent stops with
``context_limit``; a parent already at its token limit stops with
``token_limit`` after the join.

Log-probabilities: ``logp[r, j]`` is the log-probability of the token the
model wrote at ``buf[r, j]`` under the distribution it was sampled from
(``token_logprobs``); 0 for prompt, join and padding tokens.

Termination: a group in flight always has a running thread (a waiting parent's
children are running or were joined this step), every running thread feeds at
least one token per step, and a group feeds at most ``S * L`` tokens, so the
loop ends when every group's root is done, or at ``max_steps`` (threads still
unfinished then keep stop ``running``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from apr_jax import threads as threads_lib
from apr_jax.decode.model_api import DecodeFn
from apr_jax.decode.protocol_ids import CHILD_PREFIX, ProtocolIds
from apr_jax.decode.sampler import SamplingConfig, sample_tokens, top_p_mask
from apr_jax.model.attention import KVTable, table_pages_BxE

FREE, RUNNING, WAITING, DONE = 0, 1, 2, 3
# ROLE_INHERIT: a child's copy of its parent's context (inherit family); ROLE_STITCH:
# the positions a stitched parent skips for its children's paths. Neither is the thread's own text.
ROLE_PROMPT, ROLE_MODEL, ROLE_JOIN, ROLE_INHERIT, ROLE_STITCH = 0, 1, 2, 3, 4
STOP = {name: i for i, name in enumerate(threads_lib.STOPS)}
COUNTERS = ("forwards_computed", "tokens_fed", "kv_slots_read", "kv_slots_live", "model_calls")


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """Static shape/behaviour of one compiled loop."""

    ids: ProtocolIds
    slots: int  # S: thread rows per group (rollout)
    max_children: int  # K
    max_context: int  # L
    cache_slots: int  # slots per KV-cache lane: L (inherit family: whole pages, >= L)
    lanes: int  # C: KV-cache lanes
    lanes_per_group: int  # lanes reserved for each group in flight
    prefill_chunk: int  # forced tokens fed per thread per step
    row_buckets: tuple[int, ...]  # ascending; the last is C
    kv_buckets: tuple[int, ...]  # ascending; the last is L (inherit family: E whole-page lanes)
    sampling: SamplingConfig
    cache_axes: tuple[int, ...]  # lane axis of each cache leaf (``cache_axes``)
    split_by_kv_length: bool = False  # one model call per KV-length bucket
    long_prefill_chunks: tuple[int, ...] = ()  # ascending widths > prefill_chunk for longer queues
    page_size: int = 0  # > 0: decode calls read the pool through the model's paged kernel
    context: str = "message"  # protocol.CONTEXTS: what a child sees
    join: str = "stitch"  # inherit family: protocol.JOINS
    entries: int = 1  # E: KV-table entries per row (inherit family)
    table_page: int = 16  # inherit family: slots per page of a KV-table read

    @property
    def inherit(self) -> bool:
        return self.context == "inherit"

    @property
    def stitch(self) -> bool:
        return self.context == "inherit" and self.join == "stitch"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Limits:
    """Limits passed as traced scalars, so changing them does not recompile."""

    max_rounds: jax.Array
    max_depth: jax.Array
    tokens_per_thread: jax.Array
    max_steps: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoopState:
    """The while-loop carry. ``_R`` fields are per thread row, ``_C`` per KV
    lane, ``_N`` per group (rollout); ``counters`` are float32 totals
    (``COUNTERS``)."""

    step: jax.Array
    cache: Any
    buf_RxL: jax.Array  # int32 tokens
    role_RxL: jax.Array  # int8 ROLE_*
    logp_RxL: jax.Array  # float32 sampling-time log-prob of model tokens
    length_R: jax.Array
    fed_R: jax.Array  # tokens already in the thread's lane
    status_R: jax.Array
    stop_R: jax.Array
    parent_R: jax.Array  # parent slot, -1 for the root
    depth_R: jax.Array
    rounds_R: jax.Array  # spawns this thread made
    spawn_round_R: jax.Array  # which of its parent's spawns created it
    written_R: jax.Array
    spawn_open_R: jax.Array  # buffer index of the open <spawn>, -1 if none
    return_open_R: jax.Array  # buffer index of the last <return>, -1 if none
    child_lo_R: jax.Array  # first slot of the current spawn's children
    child_n_R: jax.Array
    # Inherit family: a thread feeds its last written token before it spawns (``</spawn>``:
    # ``fork_*_R`` hold its block) or, a stitched child, before it ends (``pending_stop_R``).
    fork_open_R: jax.Array  # buffer index of the pending spawn's <spawn>, -1 if none
    fork_close_R: jax.Array  # and of its </spawn>
    pending_stop_R: jax.Array  # the stop a stitched child takes once its last token is fed, -1 if none
    own_start_R: jax.Array  # first buffer index of the thread's own tokens (after an inherited prefix)
    table_lane_RxE: jax.Array  # the KV table each thread reads (attention.KVTable); inherit family
    table_lo_RxE: jax.Array
    table_hi_RxE: jax.Array
    table_count_R: jax.Array  # entries in use
    inherited_R: jax.Array  # entries a child took from its parent (its own start after them)
    lane_R: jax.Array  # the lane the thread holds (or last held); -1 never had one
    lane_row_C: jax.Array  # the row holding (or that last held) the lane; -1 never used
    lane_busy_C: jax.Array  # bool
    next_free_N: jax.Array
    dropped_children_N: jax.Array  # messages over max_children
    dropped_pool_N: jax.Array  # messages that found no free slot
    admitted: jax.Array  # groups admitted so far (in order)
    num_groups: jax.Array  # groups to decode; the trailing rest stay idle
    counters: jax.Array  # float32 [len(COUNTERS)]

    def replace(self, **changes) -> "LoopState":
        return dataclasses.replace(self, **changes)


def token_logprobs(logits_BxV: jax.Array, tokens_B: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Log-probability of ``tokens_B`` under the distribution ``sample_tokens``
    draws from (temperature-scaled, top-p truncated; plain softmax if greedy)."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    if not cfg.greedy:
        logits_BxV = logits_BxV / cfg.temperature
        if cfg.top_p < 1.0:
            logits_BxV = top_p_mask(logits_BxV, cfg.top_p)
    logp_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
    return jnp.take_along_axis(logp_BxV, tokens_B[:, None], axis=-1)[:, 0]


def _drop_index(valid: jax.Array, index: jax.Array, size: int) -> jax.Array:
    """``index`` where valid, else ``size`` (out of range: a dropped scatter)."""
    return jnp.where(valid, index, size)


def compact(member_X: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """Indices of the members of ``member_X`` in order, padded with 0 to
    ``size`` entries (at most ``size`` members are kept), and their count."""
    rank_X = jnp.cumsum(member_X) - 1
    # Where every entry is a member (e.g. all lanes free at the start) the
    # destinations fold to the same iota as the values, and the TPU compiler
    # (libtpu 0.0.42) aborts on a scatter whose indices and updates are one
    # instruction; the barrier keeps them apart. Remove when a newer libtpu
    # compiles the engine without it: drop the barrier (keep the arange) and
    # run tests/test_aot.py::test_engine_compiles_for_a_tpu_slice with that
    # libtpu installed; if it passes, delete the barrier and this comment.
    entries_X = jax.lax.optimization_barrier(jnp.arange(member_X.shape[0], dtype=jnp.int32))
    index_M = jnp.zeros((size,), jnp.int32).at[_drop_index(member_X, rank_X, size)].set(entries_X, mode="drop")
    return index_M, jnp.minimum(jnp.sum(member_X), size).astype(jnp.int32)


def _take_lanes(s: LoopState, want_X: jax.Array, rows_X: jax.Array) -> LoopState:
    """Give free lanes, lowest first, to the wanting entries' thread rows in
    order (an entry finds none when the pool is empty; admission reserves
    enough that it never is)."""
    C = s.lane_busy_C.shape[0]
    free_list_C, free_count = compact(~s.lane_busy_C, C)
    rank_X = jnp.cumsum(want_X) - 1
    got_X = want_X & (rank_X < free_count)
    lane_X = jnp.where(got_X, free_list_C[jnp.clip(rank_X, 0, C - 1)], -1)
    at_X = _drop_index(got_X, lane_X, C)
    R = s.lane_R.shape[0]
    return s.replace(
        lane_row_C=s.lane_row_C.at[at_X].set(rows_X, mode="drop"),
        lane_busy_C=s.lane_busy_C.at[at_X].set(True, mode="drop"),
        lane_R=s.lane_R.at[_drop_index(got_X, rows_X, R)].set(lane_X, mode="drop"),
    )


def init_state(
    spec: LoopSpec, prompt_buf_RxL: jax.Array, prompt_len_R: jax.Array, num_groups: jax.Array, cache: Any
) -> LoopState:
    """Roots hold their prompts as forced tokens; no group is admitted yet."""
    R, L = prompt_buf_RxL.shape
    N, C = R // spec.slots, spec.lanes
    is_root_R = (jnp.arange(R) % spec.slots) == 0
    i32 = functools.partial(jnp.full, (R,), dtype=jnp.int32)
    return LoopState(
        step=jnp.int32(0),
        cache=cache,
        buf_RxL=prompt_buf_RxL.astype(jnp.int32),
        role_RxL=jnp.zeros((R, L), jnp.int8),
        logp_RxL=jnp.zeros((R, L), jnp.float32),
        length_R=jnp.where(is_root_R, prompt_len_R, 0).astype(jnp.int32),
        fed_R=i32(0),
        status_R=i32(FREE),
        stop_R=i32(STOP["running"]),
        parent_R=i32(-1),
        depth_R=i32(0),
        rounds_R=i32(0),
        spawn_round_R=i32(-1),
        written_R=i32(0),
        spawn_open_R=i32(-1),
        return_open_R=i32(-1),
        child_lo_R=i32(0),
        child_n_R=i32(0),
        fork_open_R=i32(-1),
        fork_close_R=i32(-1),
        pending_stop_R=i32(-1),
        own_start_R=i32(0),
        table_lane_RxE=jnp.zeros((R, spec.entries), jnp.int32),
        table_lo_RxE=jnp.zeros((R, spec.entries), jnp.int32),
        table_hi_RxE=jnp.zeros((R, spec.entries), jnp.int32),
        table_count_R=i32(0),
        inherited_R=i32(0),
        lane_R=i32(-1),
        lane_row_C=jnp.full((C,), -1, jnp.int32),
        lane_busy_C=jnp.zeros((C,), bool),
        next_free_N=jnp.ones((N,), jnp.int32),
        dropped_children_N=jnp.zeros((N,), jnp.int32),
        dropped_pool_N=jnp.zeros((N,), jnp.int32),
        admitted=jnp.int32(0),
        num_groups=jnp.minimum(num_groups, N).astype(jnp.int32),
        counters=jnp.zeros((len(COUNTERS),), jnp.float32),
    )


def admit(spec: LoopSpec, s: LoopState) -> LoopState:
    """Start the next groups' roots while the pool can hold their worst case
    (in the inherit family a root's KV table lists its own lane)."""
    S = spec.slots
    N = s.next_free_N.shape[0]
    g_N = jnp.arange(N)
    in_flight = jnp.sum((g_N < s.admitted) & (s.status_R[::S] != DONE))
    room = spec.lanes // spec.lanes_per_group - in_flight
    count = jnp.clip(room, 0, s.num_groups - s.admitted)
    new_N = (g_N >= s.admitted) & (g_N < s.admitted + count)
    new_R = jnp.zeros_like(s.status_R, bool).at[g_N * S].set(new_N)
    s = _take_lanes(s, new_R, jnp.arange(new_R.shape[0], dtype=jnp.int32))
    if spec.inherit:  # a root reads its own lane
        s = s.replace(
            table_lane_RxE=s.table_lane_RxE.at[:, 0].set(jnp.where(new_R, s.lane_R, s.table_lane_RxE[:, 0])),
            table_lo_RxE=s.table_lo_RxE.at[:, 0].set(jnp.where(new_R, 0, s.table_lo_RxE[:, 0])),
            table_hi_RxE=s.table_hi_RxE.at[:, 0].set(jnp.where(new_R, spec.max_context, s.table_hi_RxE[:, 0])),
            table_count_R=jnp.where(new_R, 1, s.table_count_R),
        )
    return s.replace(status_R=jnp.where(new_R, RUNNING, s.status_R), admitted=s.admitted + count)


def free_lanes(spec: LoopSpec, s: LoopState) -> LoopState:
    """Return the lanes of finished threads to the pool; a stitched thread's
    lane only once its group's root is done (its parent reads it in place)."""
    row_C = jnp.maximum(s.lane_row_C, 0)
    done_C = s.lane_busy_C & (s.status_R[row_C] == DONE)
    if spec.stitch:
        done_C = done_C & (s.status_R[row_C // spec.slots * spec.slots] == DONE)
    return s.replace(lane_busy_C=s.lane_busy_C & ~done_C)


def sample_rows(
    key: jax.Array, thread_B: jax.Array, at_B: jax.Array, logits_BxV: jax.Array, cfg: SamplingConfig
) -> tuple[jax.Array, jax.Array]:
    """One token per row and its log-prob; row b's key depends only on its
    thread id and the buffer index the token goes to."""
    if cfg.greedy:
        x_B = sample_tokens(key, logits_BxV, cfg)
    else:

        def one(t, at, logits_V):
            k = jax.random.fold_in(jax.random.fold_in(key, t), at)
            return sample_tokens(k, logits_V[None], cfg)[0]

        x_B = jax.vmap(one)(thread_B, at_B, logits_BxV)
    return x_B, token_logprobs(logits_BxV, x_B, cfg)


def _bucket(sizes: tuple[int, ...], need: jax.Array) -> jax.Array:
    """Index of the smallest of ``sizes`` (ascending) that is >= ``need``
    (elementwise; the last index where none is)."""
    return jnp.minimum(jnp.sum(jnp.asarray(need)[..., None] > jnp.asarray(sizes), axis=-1), len(sizes) - 1)


def cache_axes(init_cache: Callable[[int, int], Any]) -> tuple[int, ...]:
    """The lane axis of every cache leaf (its slot axis is the next one), found
    by building abstract caches of different sizes."""
    a, b, c = (jax.eval_shape(functools.partial(init_cache, n, length)) for n, length in ((3, 17), (5, 17), (3, 19)))
    axes = []
    for x, y, z in zip(*(jax.tree.leaves(v) for v in (a, b, c))):
        lane = [i for i, (p, q) in enumerate(zip(x.shape, y.shape)) if p != q]
        slot = [i for i, (p, q) in enumerate(zip(x.shape, z.shape)) if p != q]
        if len(lane) != 1 or slot != [lane[0] + 1]:
            raise ValueError(f"cache leaf of shape {x.shape} has no [lanes, slots] axis pair")
        axes.append(lane[0])
    return tuple(axes)


def _vocab_size(spec: LoopSpec, decode_fn: DecodeFn, params, cache) -> int:
    logits_shape = jax.eval_shape(
        lambda c: decode_fn(
            params,
            jnp.zeros((1, 1), jnp.int32),
            jnp.full((1, 1), -1, jnp.int32),
            c,
            jnp.zeros((1,), jnp.int32),
            spec.max_context,  # any valid read length: only the logits' shape is asked
        )[0],
        cache,
    )
    return logits_shape.shape[-1]


def _run_if(pred: jax.Array, fn: Callable[[Any], Any], carry: Any) -> Any:
    """``fn(carry)`` when ``pred``, else ``carry``, as a while loop of at most
    one trip: buffers ``fn`` updates stay in place (a ``lax.cond`` or
    ``lax.switch`` branch that updates the cache pool makes XLA copy it whole)."""

    def body(c):
        return jnp.bool_(True), fn(c[1])

    return jax.lax.while_loop(lambda c: pred & ~c[0], body, (jnp.bool_(False), carry))[1]


def _kv_need(spec: LoopSpec, s: LoopState, row_X: jax.Array, end_X: jax.Array) -> jax.Array:
    """Slots each of ``row_X``'s reads must span once its tokens up to
    ``end_X`` are fed: ``end_X`` itself (a lane read from slot 0), or, in the
    inherit family, the pages its KV table's ranges cover below ``end_X``."""
    if not spec.inherit:
        return end_X
    table = KVTable(s.table_lane_RxE[row_X], s.table_lo_RxE[row_X], s.table_hi_RxE[row_X], spec.table_page)
    return spec.table_page * jnp.sum(table_pages_BxE(table, end_X), axis=1)


def _model_call(
    spec: LoopSpec, decode_fn: DecodeFn, params, s: LoopState, member_C: jax.Array, width: int, page_size: int = 0
):
    """Feed up to ``width`` queued tokens of each member lane's thread in one
    bucketed model call; returns (cache, fed_C, logits_CxV at each member's
    last fed token, counters).

    The rows are compacted into the smallest row bucket that holds them. They
    read the cache up to the smallest KV-length bucket that holds their slots,
    or, with ``page_size`` (width-1 calls only), each row's own pages through
    the model's paged kernel (one KV length: the whole lane, which the kernel
    reads only below each row's length). Each (row, KV) bucket pair is a
    ``_run_if`` whose model call writes the new K/V into the pool in place
    and reads its rows' lanes layer by layer: no gathered copy of the pool (a
    ``lax.switch`` branch that wrote the pool would make XLA copy all of it;
    one that gathered the largest bucket would copy it too)."""
    if page_size and width != 1:
        raise ValueError(f"the paged decode feeds one token per row, not {width}")
    C, L, T = spec.lanes, spec.max_context, width
    # A paged call's rows read only their own pages: one KV length, which bounds every row's pages.
    kv_buckets = ((spec.kv_buckets[-1] if spec.inherit else L),) if page_size else spec.kv_buckets
    paged = {"page_size": page_size} if page_size else {}
    row_C = jnp.maximum(s.lane_row_C, 0)
    fed_C = s.fed_R[row_C]
    n_feed_C = jnp.where(member_C, jnp.minimum(s.length_R[row_C] - fed_C, width), 0)
    lanes_M, count = compact(member_C, C)
    row_bucket = _bucket(spec.row_buckets, count)
    kv_bucket = _bucket(kv_buckets, jnp.max(jnp.where(member_C, _kv_need(spec, s, row_C, fed_C + n_feed_C), 0)))
    t_1xT = jnp.arange(T)[None]
    V = _vocab_size(spec, decode_fn, params, s.cache)

    def run(B: int, kv_len: int):
        def call(carry):
            lanes_B = lanes_M[:B]
            valid_B = jnp.arange(B) < count
            n_B = jnp.where(valid_B, n_feed_C[lanes_B], 0)
            fed_B = fed_C[lanes_B]
            at_BxT = fed_B[:, None] + t_1xT
            pos_BxT = jnp.where(t_1xT < n_B[:, None], at_BxT, -1)
            rows_B = row_C[lanes_B]
            tok_BxT = s.buf_RxL[rows_B[:, None], jnp.minimum(at_BxT, L - 1)]
            extra = dict(paged)
            if spec.inherit:
                extra["table"] = KVTable(
                    *(x[rows_B] for x in (s.table_lane_RxE, s.table_lo_RxE, s.table_hi_RxE)), spec.table_page
                )
            logits_BxTxV, cache = decode_fn(params, tok_BxT, pos_BxT, carry[0], lanes_B, kv_len, **extra)
            last_BxV = logits_BxTxV[jnp.arange(B), jnp.maximum(n_B - 1, 0)].astype(jnp.float32)
            logits_CxV = jnp.zeros((C, V), jnp.float32).at[_drop_index(valid_B, lanes_B, C)].set(last_BxV, mode="drop")
            live_B = jnp.where(valid_B, fed_B + n_B, 0)
            # The paged kernels read whole pages (inherit: the pages the row's table lists);
            # the others their KV bucket (inherit: of table pages).
            if not page_size:
                read = B * kv_len
            elif spec.inherit:
                read = page_size * jnp.sum(table_pages_BxE(extra["table"], live_B))
            else:
                read = jnp.sum(-(-live_B // page_size) * page_size)
            if spec.inherit:  # the slots a row's table lists below its position
                top_BxE = jnp.minimum(s.table_hi_RxE[rows_B], live_B[:, None])
                live_B = jnp.sum(jnp.maximum(top_BxE - s.table_lo_RxE[rows_B], 0), axis=1)
            counters = jnp.stack(
                [
                    jnp.float32(B * width),
                    jnp.sum(n_B).astype(jnp.float32),
                    jnp.asarray(read, jnp.float32),
                    jnp.sum(live_B).astype(jnp.float32),
                    jnp.float32(1),
                ]
            )
            return cache, logits_CxV, counters

        return call

    def row(B: int):
        def kv_pairs(carry):  # only the chosen row bucket's KV loops are reached
            for j, kv_len in enumerate(kv_buckets):
                carry = _run_if(kv_bucket == j, run(B, kv_len), carry)
            return carry

        return kv_pairs

    carry = (s.cache, jnp.zeros((C, V), jnp.float32), jnp.zeros((len(COUNTERS),), jnp.float32))
    for i, B in enumerate(spec.row_buckets):
        carry = _run_if((count > 0) & (row_bucket == i), row(B), carry)
    cache, logits_CxV, counters = carry
    return cache, n_feed_C, logits_CxV, counters


def prefill_widths(spec: LoopSpec) -> tuple[int, ...]:
    """The feed widths of a step's model calls, ascending: 1 (decode), the
    prefill chunk and the long ones. A thread whose queue holds ``q > 1``
    tokens goes to the narrowest width above 1 that is at least ``q / 2``, or
    to the widest."""
    return tuple(sorted({1, spec.prefill_chunk, *spec.long_prefill_chunks}))


class ModelCall(NamedTuple):
    """One model call of a step (``_model_call``)."""

    member_C: jax.Array  # bool: the lanes whose threads it feeds
    width: int  # queued tokens it feeds per thread at most
    spec: LoopSpec  # the loop spec it runs under (its KV-length buckets)
    page_size: int  # > 0: a width-1 call through the model's paged kernel


class Routing(NamedTuple):
    """Which lanes' threads feed in which model call this step."""

    row_C: jax.Array  # the thread row each lane holds (or last held; 0 if never used)
    run_C: jax.Array  # bool: that thread is running, so it feeds this step
    queue_C: jax.Array  # its queued tokens (``[fed, length)`` of its buffer)
    calls: tuple[ModelCall, ...]  # the step's model calls, in the order they run


def _route(spec: LoopSpec, s: LoopState) -> Routing:
    """Send every running thread to one model call: width 1 for the one token
    it just sampled, else the narrowest prefill width at least half its queue
    (or the widest, ``prefill_widths``), each width split by KV-length bucket
    where the spec asks (``_split_by_kv_length``)."""
    row_C = jnp.maximum(s.lane_row_C, 0)
    run_C = s.lane_busy_C & (s.status_R[row_C] == RUNNING)
    queue_C = s.length_R[row_C] - s.fed_R[row_C]
    widths = prefill_widths(spec)
    half_C = jnp.where(queue_C > 1, jnp.maximum((queue_C + 1) // 2, 2), 1)
    width_class_C = jnp.minimum(jnp.searchsorted(jnp.asarray(widths), half_C), len(widths) - 1)
    by_width = [(run_C & (width_class_C == c), width) for c, width in enumerate(widths)]
    calls = tuple(
        call for member_C, width in by_width for call in _split_by_kv_length(spec, s, row_C, queue_C, member_C, width)
    )
    return Routing(row_C=row_C, run_C=run_C, queue_C=queue_C, calls=calls)


def _split_by_kv_length(
    spec: LoopSpec, s: LoopState, row_C: jax.Array, queue_C: jax.Array, member_C: jax.Array, width: int
) -> list[ModelCall]:
    """The model calls that feed ``member_C`` at ``width``: one, or one per
    KV-length bucket with ``split_by_kv_length``; a paged width-1 call reads
    each row's own pages and is never split."""
    page_size = spec.page_size if width == 1 else 0
    if page_size or not spec.split_by_kv_length:
        return [ModelCall(member_C=member_C, width=width, spec=spec, page_size=page_size)]
    kv_class_C = _bucket(spec.kv_buckets, _kv_need(spec, s, row_C, s.fed_R[row_C] + jnp.minimum(queue_C, width)))
    return [
        ModelCall(
            member_C=member_C & (kv_class_C == c),
            width=width,
            spec=dataclasses.replace(spec, kv_buckets=(kv,)),
            page_size=0,
        )
        for c, kv in enumerate(spec.kv_buckets)
    ]


def _feed(decode_fn: DecodeFn, params: Any, s: LoopState, routing: Routing) -> tuple[LoopState, jax.Array, jax.Array]:
    """Run the step's model calls in order. Returns the state (the cache with
    the fed tokens' keys and values, the counters added), the tokens fed per
    lane, and the float32 logits at each lane's last fed token."""
    fed_C = jnp.zeros_like(routing.queue_C)
    logits_CxV = None
    for call in routing.calls:
        cache, fed_call_C, logits_call_CxV, counters = _model_call(
            call.spec, decode_fn, params, s, call.member_C, call.width, call.page_size
        )
        s = s.replace(cache=cache, counters=s.counters + counters)
        fed_C = jnp.where(call.member_C, fed_call_C, fed_C)
        logits_CxV = (
            logits_call_CxV if logits_CxV is None else jnp.where(call.member_C[:, None], logits_call_CxV, logits_CxV)
        )
    return s, fed_C, logits_CxV


def _sample(
    spec: LoopSpec,
    key: jax.Array,
    first_thread: jax.Array,
    s: LoopState,
    routing: Routing,
    fed_C: jax.Array,
    logits_CxV: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sample a token for every lane's thread (``sample_rows``) and move the
    step's lane results onto thread rows: ``fed_R`` advanced by the tokens
    fed, and the token ``x_R`` and its log-prob ``lp_R`` (0 on rows that did
    not run; only rows whose queue emptied use them)."""
    R = s.buf_RxL.shape[0]
    row_C = routing.row_C
    x_C, lp_C = sample_rows(key, first_thread + row_C, s.length_R[row_C], logits_CxV, spec.sampling)
    at_C = _drop_index(routing.run_C, row_C, R)
    fed_R = s.fed_R.at[at_C].add(fed_C, mode="drop")
    x_R = jnp.zeros((R,), jnp.int32).at[at_C].set(x_C, mode="drop")
    lp_R = jnp.zeros((R,), jnp.float32).at[at_C].set(lp_C, mode="drop")
    return fed_R, x_R, lp_R


def _classify(
    spec: LoopSpec, s: LoopState, limits: Limits, fed_R: jax.Array, x_R: jax.Array, lp_R: jax.Array
) -> tuple[LoopState, jax.Array, jax.Array, jax.Array]:
    """Append ``x_R`` to each running thread whose queue emptied (role
    ``model``, log-prob ``lp_R``) and apply what it does (module docstring):
    stop the thread, open or close a spawn block, remember a ``<return>``; a
    thread whose forced tokens filled its buffer stops with ``context_limit``.
    Returns the state, the threads that spawn, and the buffer indices of
    their block's ``<spawn>`` and ``</spawn>``."""
    ids, L = spec.ids, spec.max_context
    R = s.buf_RxL.shape[0]
    rows_R = jnp.arange(R)
    running_R = s.status_R == RUNNING
    ready_R = running_R & (fed_R == s.length_R)
    # Inherit family: a thread whose last token was held back to be fed now
    # spawns (``</spawn>``) or ends (a stitched child) instead of writing.
    closing_R = ready_R & (s.pending_stop_R >= 0)
    full_R = ready_R & (s.length_R >= L) & ~closing_R
    forking_R = ready_R & (s.fork_close_R >= 0) & ~full_R
    write_R = ready_R & ~full_R & ~closing_R & ~forking_R
    at_R = s.length_R  # where x goes
    dest_R = jnp.where(write_R, at_R, L)  # L: dropped
    length_R = s.length_R + write_R
    written_R = s.written_R + write_R
    is_child_R = s.depth_R > 0

    def wrote(token_id):
        return write_R & (x_R == token_id)

    close_R = wrote(ids.spawn_close) & (s.spawn_open_R >= 0) & (limits.max_depth > 0)
    depth_refused_R = close_R & (s.depth_R >= limits.max_depth)
    round_refused_R = close_R & ~depth_refused_R & (s.rounds_R >= limits.max_rounds)
    spawn_R = close_R & ~depth_refused_R & ~round_refused_R
    spawn_open_R = jnp.where(wrote(ids.spawn_open), at_R, s.spawn_open_R)
    spawn_open_R = jnp.where(close_R, -1, spawn_open_R)
    return_open_R = jnp.where(wrote(ids.return_open) & is_child_R, at_R, s.return_open_R)

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
    block_open_R = s.spawn_open_R  # the <spawn> that this step's </spawn> closes
    status_R = jnp.where(ends_R, DONE, jnp.where(spawn_R, WAITING, s.status_R))
    if spec.inherit:
        # The spawn waits one step: the thread feeds </spawn> (its children read its KV).
        # A stitched child's last token is fed before it ends (its parent reads its KV).
        held_R = ends_R & write_R & is_child_R if spec.stitch else jnp.zeros_like(ends_R)
        pending_stop_R = jnp.where(held_R, stop_R, jnp.where(closing_R, -1, s.pending_stop_R))
        stop_R = jnp.where(closing_R, s.pending_stop_R, jnp.where(held_R, -1, stop_R))
        ends_R = stop_R >= 0
        status_R = jnp.where(
            ends_R, DONE, jnp.where(forking_R, WAITING, jnp.where(held_R | spawn_R, RUNNING, s.status_R))
        )
        fork_block_R, fork_close_R = s.fork_open_R, s.fork_close_R
        clear_R = forking_R | ends_R
        s = s.replace(
            fork_open_R=jnp.where(spawn_R, block_open_R, jnp.where(clear_R, -1, s.fork_open_R)),
            fork_close_R=jnp.where(spawn_R, at_R, jnp.where(clear_R, -1, s.fork_close_R)),
            pending_stop_R=pending_stop_R,
        )
    s = s.replace(
        buf_RxL=s.buf_RxL.at[rows_R, dest_R].set(x_R, mode="drop"),
        role_RxL=s.role_RxL.at[rows_R, dest_R].set(ROLE_MODEL, mode="drop"),
        logp_RxL=s.logp_RxL.at[rows_R, dest_R].set(lp_R, mode="drop"),
        fed_R=fed_R,
        length_R=length_R,
        written_R=written_R,
        status_R=status_R,
        stop_R=jnp.where(ends_R, stop_R, s.stop_R),
        spawn_open_R=spawn_open_R,
        return_open_R=return_open_R,
    )
    if spec.inherit:
        return s, forking_R, fork_block_R, fork_close_R
    return s, spawn_R, block_open_R, at_R


def _feed_and_sample(
    spec: LoopSpec,
    decode_fn: DecodeFn,
    params: Any,
    key: jax.Array,
    first_thread: jax.Array,
    s: LoopState,
    limits: Limits,
) -> tuple[LoopState, jax.Array, jax.Array, jax.Array]:
    """Feed every running thread (decode and prefill calls); append sampled
    tokens where a queue emptied; classify what they do (``_classify``'s
    results)."""
    routing = _route(spec, s)
    s, fed_C, logits_CxV = _feed(decode_fn, params, s, routing)
    fed_R, x_R, lp_R = _sample(spec, key, first_thread, s, routing, fed_C, logits_CxV)
    return _classify(spec, s, limits, fed_R, x_R, lp_R)


def _spawn(spec: LoopSpec, s: LoopState, spawn_R, block_open_R, block_close_R) -> LoopState:
    """Create one child per message of each spawn block closed this step. The
    spawners (at most one per lane) are handled in row order, ``C`` at a time."""
    ids, S, K, L, C = spec.ids, spec.slots, spec.max_children, spec.max_context, spec.lanes
    R = s.buf_RxL.shape[0]
    sp_C, count = compact(spawn_R, C)
    valid_C = jnp.arange(C) < count
    buf_CxL = s.buf_RxL[sp_C]
    j_1xL = jnp.arange(L)[None]
    in_block_CxL = valid_C[:, None] & (j_1xL > block_open_R[sp_C][:, None]) & (j_1xL < block_close_R[sp_C][:, None])
    is_sep_CxL = in_block_CxL & (buf_CxL == ids.sep)
    msg_id_CxL = jnp.cumsum(is_sep_CxL, axis=1)
    n_msgs_C = jnp.where(valid_C, 1 + is_sep_CxL.sum(axis=1), 0)
    req_C = jnp.minimum(n_msgs_C, K)

    # Contiguous free slots per group, in row order of its spawners.
    group_C = sp_C // S
    excl_C = jnp.cumsum(req_C) - req_C
    first_C = valid_C & ((jnp.arange(C) == 0) | (group_C != jnp.roll(group_C, 1)))
    offset_C = excl_C - jax.lax.cummax(jnp.where(first_C, excl_C, 0))
    next_free_C = s.next_free_N[group_C]
    granted_C = jnp.where(valid_C, jnp.clip(S - next_free_C - offset_C, 0, req_C), 0)
    child_lo_C = next_free_C + offset_C

    # Message k of spawner n: tokens [start, start + len) of its buffer.
    k_K = jnp.arange(K)
    in_msg_CxLxK = (msg_id_CxL[:, :, None] == k_K) & in_block_CxL[:, :, None]
    msg_len_CxK = jnp.sum(in_msg_CxLxK & ~is_sep_CxL[:, :, None], axis=1)
    sep_at_CxK = jnp.sum(jnp.where(in_msg_CxLxK & is_sep_CxL[:, :, None], j_1xL[:, :, None], 0), axis=1)
    msg_start_CxK = jnp.where(k_K == 0, block_open_R[sp_C][:, None], sep_at_CxK) + 1

    # The new children (never more than the free lanes, so C entries), in order.
    is_new_CxK = k_K[None] < granted_C[:, None]
    new_M, _ = compact(is_new_CxK.reshape(-1), C)
    new_valid_M = jnp.arange(C) < jnp.minimum(granted_C.sum(), C)
    owner_M, k_M = new_M // K, new_M % K
    row_M = group_C[owner_M] * S + child_lo_C[owner_M] + k_M
    mlen_M = msg_len_CxK[owner_M, k_M]
    src_MxL = buf_CxL[owner_M[:, None], jnp.clip(msg_start_CxK[owner_M, k_M][:, None] + j_1xL - CHILD_PREFIX, 0, L - 1)]
    child_MxL = jnp.where(
        j_1xL == 0,
        ids.bos,
        jnp.where(j_1xL == 1, ids.child, jnp.where(j_1xL < CHILD_PREFIX + mlen_M[:, None], src_MxL, ids.pad)),
    )
    # The TPU compiler (libtpu 0.0.42) nests the producer of a scatter's
    # updates into the scatter and aborts when that producer is this
    # element-wise gather over 128-slot rows (``fusion_emitter.cc``: not a
    # sublane gather); the barrier keeps it a separate fusion. Remove when a
    # newer libtpu compiles the engine without it: delete the barrier line and
    # run tests/test_aot.py::test_engine_compiles_for_a_tpu_slice (128-slot
    # rows) with that libtpu installed; if it passes, delete this comment too.
    child_MxL = jax.lax.optimization_barrier(child_MxL)
    at_M = _drop_index(new_valid_M, row_M, R)
    s = _take_lanes(s, new_valid_M, row_M)
    spawner_M = sp_C[owner_M]
    length_M = jnp.minimum(CHILD_PREFIX + mlen_M, L)
    if spec.inherit:
        s, child_MxL, length_M = _inherit_children(spec, s, spawner_M, block_close_R, at_M, row_M, src_MxL, mlen_M)
    at_C = _drop_index(valid_C, sp_C, R)
    N = s.next_free_N.shape[0]
    at_group_C = _drop_index(valid_C, group_C, N)
    return s.replace(
        buf_RxL=s.buf_RxL.at[at_M].set(child_MxL, mode="drop"),
        length_R=s.length_R.at[at_M].set(length_M, mode="drop"),
        status_R=s.status_R.at[at_M].set(RUNNING, mode="drop"),
        parent_R=s.parent_R.at[at_M].set(spawner_M % S, mode="drop"),
        depth_R=s.depth_R.at[at_M].set(s.depth_R[spawner_M] + 1, mode="drop"),
        spawn_round_R=s.spawn_round_R.at[at_M].set(s.rounds_R[spawner_M], mode="drop"),
        rounds_R=s.rounds_R.at[at_C].add(1, mode="drop"),
        child_lo_R=s.child_lo_R.at[at_C].set(child_lo_C, mode="drop"),
        child_n_R=s.child_n_R.at[at_C].set(granted_C, mode="drop"),
        next_free_N=s.next_free_N.at[at_group_C].add(granted_C, mode="drop"),
        dropped_children_N=s.dropped_children_N.at[at_group_C].add(n_msgs_C - req_C, mode="drop"),
        dropped_pool_N=s.dropped_pool_N.at[at_group_C].add(req_C - granted_C, mode="drop"),
    )


def _inherit_children(
    spec: LoopSpec,
    s: LoopState,
    spawner_M: jax.Array,
    block_close_R: jax.Array,
    at_M: jax.Array,
    row_M: jax.Array,
    src_MxL: jax.Array,
    mlen_M: jax.Array,
) -> tuple[LoopState, jax.Array, jax.Array]:
    """The inherit family's children of ``_spawn``: each one's buffer is its
    parent's context through ``</spawn>`` (role ``ROLE_INHERIT``, already in
    the parent's lane, so not fed again) then ``<child> m_i``; its KV table
    is its parent's, cut at the fork, plus its own lane from the fork on.
    Returns the state (roles, fed, own start, tables), the child buffers and
    their lengths. ``src_MxL[m, j]`` is message token ``j - CHILD_PREFIX``."""
    ids, L, E = spec.ids, spec.max_context, spec.entries
    j_1xL = jnp.arange(L)[None]
    fork_M = block_close_R[spawner_M] + 1
    rel_MxL = j_1xL - fork_M[:, None]  # 0 at the child's <child>
    msg_MxL = jnp.take_along_axis(src_MxL, jnp.clip(rel_MxL - 1 + CHILD_PREFIX, 0, L - 1), axis=1)
    child_MxL = jnp.where(
        rel_MxL < 0,
        s.buf_RxL[spawner_M],
        jnp.where(rel_MxL == 0, spec.ids.child, jnp.where(rel_MxL <= mlen_M[:, None], msg_MxL, ids.pad)),
    )
    role_MxL = jnp.where(rel_MxL < 0, ROLE_INHERIT, ROLE_PROMPT).astype(s.role_RxL.dtype)
    count_M = s.table_count_R[spawner_M]
    e_1xE = jnp.arange(E)[None]
    own_MxE = e_1xE == count_M[:, None]
    lane_MxE = jnp.where(own_MxE, s.lane_R[row_M][:, None], s.table_lane_RxE[spawner_M])
    lo_MxE = jnp.where(own_MxE, fork_M[:, None], s.table_lo_RxE[spawner_M])
    hi_MxE = jnp.where(own_MxE, L, jnp.minimum(s.table_hi_RxE[spawner_M], fork_M[:, None]))
    s = s.replace(
        role_RxL=s.role_RxL.at[at_M].set(role_MxL, mode="drop"),
        fed_R=s.fed_R.at[at_M].set(fork_M, mode="drop"),
        own_start_R=s.own_start_R.at[at_M].set(fork_M, mode="drop"),
        table_lane_RxE=s.table_lane_RxE.at[at_M].set(lane_MxE, mode="drop"),
        table_lo_RxE=s.table_lo_RxE.at[at_M].set(lo_MxE, mode="drop"),
        table_hi_RxE=s.table_hi_RxE.at[at_M].set(hi_MxE, mode="drop"),
        table_count_R=s.table_count_R.at[at_M].set(jnp.minimum(count_M + 1, E), mode="drop"),
        inherited_R=s.inherited_R.at[at_M].set(count_M, mode="drop"),
    )
    return s, child_MxL, jnp.minimum(fork_M + 1 + mlen_M, L)


def join_ready(spec: LoopSpec, s: LoopState) -> jax.Array:
    """Waiting rows whose children of the current spawn are all done."""
    S = spec.slots
    N = s.buf_RxL.shape[0] // S
    done_NxS = (s.status_R == DONE).reshape(N, S).astype(jnp.int32)
    cum_Nx1S = jnp.concatenate([jnp.zeros((N, 1), jnp.int32), jnp.cumsum(done_NxS, axis=1)], axis=1)
    lo_NxS = s.child_lo_R.reshape(N, S)
    n_NxS = s.child_n_R.reshape(N, S)
    done_count_NxS = jnp.take_along_axis(cum_Nx1S, jnp.clip(lo_NxS + n_NxS, 0, S), axis=1) - jnp.take_along_axis(
        cum_Nx1S, jnp.clip(lo_NxS, 0, S), axis=1
    )
    return (s.status_R == WAITING) & (done_count_NxS == n_NxS).reshape(-1)


def _join(spec: LoopSpec, s: LoopState, ready_R, limits: Limits) -> LoopState:
    """Append each ready parent's join block and let it run again. The parents
    (each holds a lane) are handled ``C`` at a time."""
    ids, S, K, L, C = spec.ids, spec.slots, spec.max_children, spec.max_context, spec.lanes
    R = s.buf_RxL.shape[0]
    p_C, count = compact(ready_R, C)
    valid_C = jnp.arange(C) < count
    k_K = jnp.arange(K)
    child_CxK = (p_C // S * S)[:, None] + jnp.clip(s.child_lo_R[p_C][:, None] + k_K, 0, S - 1)
    n_C = s.child_n_R[p_C]
    has_CxK = k_K < n_C[:, None]
    if spec.stitch:
        return _stitch(spec, s, ready_R, limits, p_C, valid_C, child_CxK, has_CxK)
    c_len_CxK = s.length_R[child_CxK]
    if spec.inherit:  # linear: each child's whole path, <child> m_i on, whatever its stop
        returned_CxK = jnp.ones_like(has_CxK)
        m_start_CxK = s.own_start_R[child_CxK]
        m_len_CxK = c_len_CxK - m_start_CxK
    else:
        returned_CxK = s.stop_R[child_CxK] == STOP["return"]
        c_ret_CxK = s.return_open_R[child_CxK]
        m_start_CxK = jnp.where(c_ret_CxK >= 0, c_ret_CxK + 1, c_len_CxK - 1)
        m_len_CxK = jnp.where(returned_CxK, c_len_CxK - 1 - m_start_CxK, 1)
    piece_CxK = jnp.where(has_CxK, 1 + m_len_CxK, jnp.where(k_K == 0, 1, 0))
    off_CxK = jnp.cumsum(piece_CxK, axis=1) - piece_CxK
    total_C = piece_CxK.sum(axis=1) + 1

    t_1xL = jnp.arange(L)[None]  # position inside the join block
    starts_CxLxK = (off_CxK[:, None, :] <= t_1xL[:, :, None]) & (piece_CxK[:, None, :] > 0)
    kt_CxL = jnp.clip(starts_CxLxK.sum(axis=-1) - 1, 0, K - 1)
    within_CxL = t_1xL - jnp.take_along_axis(off_CxK, kt_CxL, axis=1)
    src_row_CxL = jnp.take_along_axis(child_CxK, kt_CxL, axis=1)
    src_col_CxL = jnp.take_along_axis(m_start_CxK, kt_CxL, axis=1) + within_CxL - 1
    src_CxL = s.buf_RxL[src_row_CxL, jnp.clip(src_col_CxL, 0, L - 1)]
    body_CxL = jnp.where(jnp.take_along_axis(returned_CxK, kt_CxL, axis=1), src_CxL, ids.trunc)
    delim_CxL = jnp.where(kt_CxL == 0, ids.join_open, ids.sep)
    tok_CxL = jnp.where(t_1xL == total_C[:, None] - 1, ids.join_close, jnp.where(within_CxL == 0, delim_CxL, body_CxL))
    length_C = s.length_R[p_C]
    col_CxL = length_C[:, None] + t_1xL
    write_CxL = valid_C[:, None] & (t_1xL < total_C[:, None]) & (col_CxL < L)
    row_CxL = jnp.where(write_CxL, p_C[:, None], R)

    total_R = jnp.zeros((R,), jnp.int32).at[_drop_index(valid_C, p_C, R)].set(total_C, mode="drop")
    truncated_R = ready_R & (s.length_R + total_R > L)
    over_R = ready_R & ~truncated_R & (s.written_R >= limits.tokens_per_thread)
    return s.replace(
        buf_RxL=s.buf_RxL.at[row_CxL, col_CxL].set(tok_CxL, mode="drop"),
        role_RxL=s.role_RxL.at[row_CxL, col_CxL].set(ROLE_JOIN, mode="drop"),
        length_R=jnp.where(ready_R, jnp.minimum(s.length_R + total_R, L), s.length_R),
        status_R=jnp.where(truncated_R | over_R, DONE, jnp.where(ready_R, RUNNING, s.status_R)),
        stop_R=jnp.where(truncated_R, STOP["context_limit"], jnp.where(over_R, STOP["token_limit"], s.stop_R)),
    )


def _stitch(
    spec: LoopSpec,
    s: LoopState,
    ready_R: jax.Array,
    limits: Limits,
    p_C: jax.Array,
    valid_C: jax.Array,
    child_CxK: jax.Array,
    has_CxK: jax.Array,
) -> LoopState:
    """The stitched join of ``_join``'s ready parents ``p_C``: each skips the
    positions of its longest path (role ``ROLE_STITCH``, nothing fed) and
    queues ``<join>`` after them; its KV table gains every child's own
    entries (its lane from the fork to its end, and what it stitched in
    itself) and its own lane from the ``<join>`` on. A parent whose context
    or table cannot hold that stops with ``context_limit``."""
    ids, K, L, C, E = spec.ids, spec.max_children, spec.max_context, spec.lanes, spec.entries
    R = s.buf_RxL.shape[0]
    length_C = s.length_R[p_C]
    c_len_CxK = s.length_R[child_CxK]
    gap_C = jnp.max(jnp.where(has_CxK, c_len_CxK - s.own_start_R[child_CxK], 0), axis=1)
    join_at_C = length_C + gap_C
    t_1xL = jnp.arange(L)[None]
    col_CxL = length_C[:, None] + t_1xL
    # The parent's table takes each child's entries after those it inherited, in order.
    e_1x1xE = jnp.arange(E)[None, None]
    c_count_CxK, c_from_CxK = s.table_count_R[child_CxK], s.inherited_R[child_CxK]
    take_CxKxE = has_CxK[:, :, None] & (e_1x1xE >= c_from_CxK[:, :, None]) & (e_1x1xE < c_count_CxK[:, :, None])
    take_CxM = take_CxKxE.reshape(C, K * E)
    count_C = s.table_count_R[p_C]
    added_C = take_CxM.sum(axis=1)
    fits_C = (join_at_C + 1 <= L) & (count_C + added_C + 1 <= E)
    write_CxL = (valid_C & fits_C)[:, None] & (t_1xL <= gap_C[:, None])
    row_CxL = jnp.where(write_CxL, p_C[:, None], R)
    tok_CxL = jnp.where(t_1xL == gap_C[:, None], ids.join_open, ids.pad)
    role_CxL = jnp.where(t_1xL == gap_C[:, None], ROLE_JOIN, ROLE_STITCH).astype(s.role_RxL.dtype)

    # Tables: the parent's own entry ends at the fork; then the children's taken entries.
    rank_CxM = jnp.cumsum(take_CxM, axis=1) - 1
    dest_CxM = jnp.where(take_CxM & (valid_C & fits_C)[:, None], count_C[:, None] + rank_CxM, E)
    lane_CxM = s.table_lane_RxE[child_CxK].reshape(C, K * E)
    lo_CxM = s.table_lo_RxE[child_CxK].reshape(C, K * E)
    hi_CxM = jnp.minimum(s.table_hi_RxE[child_CxK], c_len_CxK[:, :, None]).reshape(C, K * E)
    own_C = jnp.where(valid_C & fits_C, count_C + added_C, E)
    last_C = jnp.where(valid_C & fits_C, count_C - 1, E)
    at_C = jnp.where(valid_C, p_C, R)
    rows_CxM = jnp.broadcast_to(at_C[:, None], dest_CxM.shape)
    lane_RxE = s.table_lane_RxE.at[rows_CxM, dest_CxM].set(lane_CxM, mode="drop")
    lane_RxE = lane_RxE.at[at_C, own_C].set(s.lane_R[p_C], mode="drop")
    lo_RxE = s.table_lo_RxE.at[rows_CxM, dest_CxM].set(lo_CxM, mode="drop")
    lo_RxE = lo_RxE.at[at_C, own_C].set(join_at_C, mode="drop")
    hi_RxE = s.table_hi_RxE.at[at_C, last_C].set(length_C, mode="drop")
    hi_RxE = hi_RxE.at[rows_CxM, dest_CxM].set(hi_CxM, mode="drop")
    hi_RxE = hi_RxE.at[at_C, own_C].set(L, mode="drop")

    fits_R = jnp.zeros((R,), bool).at[at_C].set(fits_C, mode="drop")
    new_count_R = s.table_count_R.at[at_C].set(count_C + added_C + 1, mode="drop")
    join_at_R = s.length_R.at[at_C].set(join_at_C, mode="drop")
    truncated_R = ready_R & ~fits_R
    resumed_R = ready_R & fits_R
    over_R = resumed_R & (s.written_R >= limits.tokens_per_thread)
    return s.replace(
        buf_RxL=s.buf_RxL.at[row_CxL, col_CxL].set(tok_CxL, mode="drop"),
        role_RxL=s.role_RxL.at[row_CxL, col_CxL].set(role_CxL, mode="drop"),
        length_R=jnp.where(resumed_R, join_at_R + 1, s.length_R),
        fed_R=jnp.where(resumed_R, join_at_R, s.fed_R),
        table_lane_RxE=lane_RxE,
        table_lo_RxE=lo_RxE,
        table_hi_RxE=hi_RxE,
        table_count_R=jnp.where(resumed_R, new_count_R, s.table_count_R),
        status_R=jnp.where(truncated_R | over_R, DONE, jnp.where(ready_R, RUNNING, s.status_R)),
        stop_R=jnp.where(truncated_R, STOP["context_limit"], jnp.where(over_R, STOP["token_limit"], s.stop_R)),
    )


def step(spec: LoopSpec, decode_fn: DecodeFn, params, key, first_thread, limits: Limits, s: LoopState) -> LoopState:
    """One loop iteration: feed/sample the running threads, spawn, join, free
    finished threads' lanes, admit waiting groups."""
    s, spawn_R, block_open_R, block_close_R = _feed_and_sample(spec, decode_fn, params, key, first_thread, s, limits)
    s = jax.lax.cond(
        jnp.any(spawn_R), lambda st: _spawn(spec, st, spawn_R, block_open_R, block_close_R), lambda st: st, s
    )
    ready_R = join_ready(spec, s)
    s = jax.lax.cond(jnp.any(ready_R), lambda st: _join(spec, st, ready_R, limits), lambda st: st, s)
    s = admit(spec, free_lanes(spec, s))
    return s.replace(step=s.step + 1)


def groups_running(spec: LoopSpec, s: LoopState) -> jax.Array:
    """Some group is not yet admitted, or an admitted group's root is not done."""
    g_N = jnp.arange(s.next_free_N.shape[0])
    return (s.admitted < s.num_groups) | jnp.any((g_N < s.admitted) & (s.status_R[:: spec.slots] != DONE))


def initial_rows(
    ids: ProtocolIds, prompt_PxT: jax.Array, prompt_len_P: jax.Array, samples: int, slots: int, max_context: int
) -> tuple[jax.Array, jax.Array]:
    """Thread rows ``[P * samples * slots, L]``: ``<bos> prompt`` at slot 0 of
    every sample (prompts without BOS, right-padded), other slots empty."""
    P, T = prompt_PxT.shape
    L = max_context
    j_1xL = jnp.arange(L)[None]
    body_PxL = jnp.pad(prompt_PxT.astype(jnp.int32), ((0, 0), (1, max(0, L - 1 - T))))[:, :L]
    root_PxL = jnp.where(j_1xL == 0, ids.bos, jnp.where(j_1xL <= prompt_len_P[:, None], body_PxL, ids.pad))
    rows_per_prompt = samples * slots
    is_root_R = (jnp.arange(P * rows_per_prompt) % slots) == 0
    buf_RxL = jnp.where(is_root_R[:, None], jnp.repeat(root_PxL, rows_per_prompt, axis=0), ids.pad)
    length_R = jnp.where(is_root_R, jnp.repeat(1 + prompt_len_P, rows_per_prompt), 0)
    return buf_RxL.astype(jnp.int32), length_R.astype(jnp.int32)


def run_loop(
    params,
    prompt_PxT: jax.Array,
    prompt_len_P: jax.Array,
    num_prompts: jax.Array,
    key: jax.Array,
    limits: Limits,
    first_thread: jax.Array,
    *,
    spec: LoopSpec,
    samples: int,
    decode_fn: DecodeFn,
    init_cache: Callable[[int, int], Any],
) -> LoopState:
    """Decode ``samples`` samples of the first ``num_prompts`` prompts (the rest
    are padding, left idle) until every root is done or ``max_steps``.

    Pure and traceable (the caller jits it): the cache is made inside, so under
    a mesh it is laid out by the model's sharding rules. ``first_thread`` is
    the global id of this call's first thread row; sampling keys depend on it,
    so splitting a batch into several calls does not change the samples."""
    buf_RxL, length_R = initial_rows(spec.ids, prompt_PxT, prompt_len_P, samples, spec.slots, spec.max_context)
    cache = init_cache(spec.lanes, spec.cache_slots)
    s = admit(spec, init_state(spec, buf_RxL, length_R, num_prompts * samples, cache))
    return jax.lax.while_loop(
        lambda st: (st.step < limits.max_steps) & groups_running(spec, st),
        lambda st: step(spec, decode_fn, params, key, first_thread, limits, st),
        s,
    )
