"""Host-side API of the multi-thread spawn/join engine.

    engine = Engine(model, EngineConfig(max_children=4, max_rounds=2, max_depth=1,
                                        tokens_per_thread=256, max_context=512),
                    ProtocolIds.from_tokenizer(tok))
    out = engine.run([tok.encode(p) for p in prompts], jax.random.key(0))
    trees = to_thread_trees(out, tok, problems)

Prompts are token ids without BOS (the engine adds it). Problems are decoded
in batches of ``batch_problems`` (the last batch padded with idle groups, so
one shape compiles once); all threads of a batch advance together in one
compiled ``lax.while_loop`` (see ``engine_loop``), spawn and join included.

Thread rows: each sample owns ``max_threads`` rows (root + children), never
reused. The default is the full tree ``sum_d (max_rounds*max_children)^d`` for
``d <= max_depth``, capped at ``max(64, 1 + max_rounds*max_children)``;
messages that find no free row are dropped and counted (``dropped_pool``).
``max_depth = 0`` is sequential decoding: ``</spawn>`` is ordinary text.

KV lanes: the cache holds ``lanes`` rows of ``max_context`` slots (default:
every sample of the batch at once). A sample in flight reserves
``lanes_per_group`` lanes (the live threads of a full spawn tree: one per
depth level's ``max_children``, capped at ``max_threads``); samples start in
order as lanes free up, so a large batch streams through a small pool.
Forced tokens (prompts, join blocks) are fed ``prefill_chunk`` per step;
``long_prefill_chunks`` adds wider calls (ascending widths), and a thread's
queue goes to the narrowest call whose width is at least half its length,
or the widest (so
long prompts and joins take one or two steps while short queues compute
little padding); each
step's live rows are bucketed into ``row_buckets`` halvings of the pool and
its cache reads into ``kv_buckets`` halvings of ``max_context`` (one compiled
branch per pair). With ``split_by_kv_length`` each KV-length bucket gets its
own call, so a short thread never reads a long thread's slot count: the same
branches, fewer KV reads, one more weight read per extra non-empty bucket.
``decode_attention`` picks how width-1 decode calls read the cache: ``xla``
(gather the rows' lanes up to a KV-length bucket), ``paged`` (the model's
paged kernel reads each row's ``page_size``-slot pages below its own length
in place; a one-line error where it cannot run) or ``auto`` (paged on GPU and
TPU when the shapes suit the kernel, else xla). Array names end in their
shape (legend: ``apr_jax.decode``'s docstring).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from apr_jax import protocol
from apr_jax import threads as threads_lib
from apr_jax.decode import engine_loop, metrics
from apr_jax.decode.limits import EngineLimits, check_int_fields
from apr_jax.decode.model_api import DecodeFn, as_decode_model
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.sampler import SamplingConfig, bucket_length, check_prompts
from apr_jax.runtime import sharding

# Per engine_loop.ROLE_*; "inherit" and "stitch" are not a thread's own text (to_thread_trees drops them).
ROLE_NAMES = ("prompt", "model", "join", "inherit", "stitch")
LIMIT_STOPS = ("token_limit", "context_limit", "depth_limit", "round_limit", "running")


@dataclasses.dataclass(frozen=True)
class EngineConfig(EngineLimits):
    """The limits (``EngineLimits``: a config's ``eval`` section) and what one
    engine call adds: the context buffer, sampling, samples and thread slots."""

    max_context: int = 512  # tokens per thread buffer (prompt + written + joins)
    sampling: SamplingConfig = SamplingConfig()
    samples_per_problem: int = 1
    max_threads: int = 0  # rows per sample; 0 = derived (module docstring)
    context: str = "message"  # what a child sees (protocol.CONTEXTS; a run's data.context)
    join: str = "stitch"  # inherit family: how a parent reads its children back (protocol.JOINS)

    def __post_init__(self):
        super().__post_init__()
        check_int_fields(self, "EngineConfig.", (("max_context", 4), ("samples_per_problem", 1), ("max_threads", 0)))
        if self.context not in protocol.CONTEXTS or self.join not in protocol.JOINS:
            raise ValueError(
                f"EngineConfig.context={self.context!r} / join={self.join!r} must be one of "
                f"{protocol.CONTEXTS} / {protocol.JOINS}"
            )
        if not isinstance(self.sampling, SamplingConfig):
            raise ValueError(f"EngineConfig.sampling must be a SamplingConfig, got {self.sampling!r}")
        if self.lanes and self.lanes < self.lanes_per_group:
            why = (
                f"every one of its max_threads={self.threads_per_sample} threads holds its lane until the root ends "
                "(stitched joins read them in place)"
                if self.context == "inherit" and self.join == "stitch"
                else f"root + max_children={self.max_children} per level up to max_depth={self.max_depth}, "
                f"capped at max_threads={self.threads_per_sample}"
            )
            raise ValueError(
                f"EngineConfig.lanes={self.lanes} cannot hold one problem: a sample needs "
                f"{self.lanes_per_group} lanes ({why})"
            )

    @property
    def cache_slots(self) -> int:
        """Slots per KV-cache lane: ``max_context``, in the inherit family
        rounded up to whole pages (KV tables are read page by page)."""
        if self.context != "inherit":
            return self.max_context
        return -(-self.max_context // self.page_size) * self.page_size

    @classmethod
    def from_eval_config(cls, eval_cfg: Any, max_context: int, **overrides: Any) -> "EngineConfig":
        """From a run config's ``eval`` section (an ``EngineLimits`` with the
        evaluation's sampling and samples per problem), then ``overrides``
        (any field, e.g. ``samples_per_problem=4`` or ``max_threads=9``)."""
        limits = {f.name: getattr(eval_cfg, f.name) for f in dataclasses.fields(EngineLimits)}
        limits["long_prefill_chunks"] = tuple(limits["long_prefill_chunks"])
        return cls(
            **{
                **limits,
                "max_context": int(max_context),
                "sampling": SamplingConfig(float(eval_cfg.temperature), float(eval_cfg.top_p)),
                "samples_per_problem": eval_cfg.samples,
                **overrides,
            }
        )

    @property
    def full_tree(self) -> int:
        """Threads of a sample that spawns every round, every child, every level."""
        if self.max_depth == 0 or self.max_rounds == 0:
            return 1
        fan = self.max_rounds * self.max_children
        return int(sum(fan**d for d in range(self.max_depth + 1)))

    @property
    def threads_per_sample(self) -> int:
        if self.max_threads:
            return self.max_threads
        return int(min(self.full_tree, max(64, 1 + self.max_rounds * self.max_children)))

    @property
    def lanes_per_group(self) -> int:
        """Most threads of one sample alive at once: a waiting parent's children
        all run or wait, one spawn round at a time. Stitched threads keep their
        lanes until the root is done (their parents read them in place)."""
        if self.context == "inherit" and self.join == "stitch":
            return self.threads_per_sample
        live = 1 if self.max_rounds == 0 else sum(self.max_children**d for d in range(self.max_depth + 1))
        return int(min(live, self.threads_per_sample))

    @property
    def table_entries(self) -> int:
        """KV-table entries per thread in the inherit family. Linear: one lane
        range per ancestor and its own. Stitched: every thread's own ranges,
        one plus one per join it made (threads above ``max_depth`` spawn, at
        most ``max_rounds`` times; the rest are leaves)."""
        if self.context != "inherit":
            return 1
        if self.join == "linear":
            return self.max_depth + 1
        fan = self.max_rounds * self.max_children
        internal = min(self.threads_per_sample, sum(fan**d for d in range(self.max_depth)))
        return internal * (1 + self.max_rounds) + (self.threads_per_sample - internal)

    def lanes_for(self, num_groups: int) -> int:
        """The pool size for a batch of ``num_groups`` samples."""
        need = num_groups * self.lanes_per_group
        return int(min(self.lanes, need) if self.lanes else need)


@dataclasses.dataclass
class ThreadResult:
    tokens: list[int]  # the thread's whole context, BOS first
    roles: list[str]  # one of ROLE_NAMES per token
    parent: int  # -1 for the root
    children: list[int]
    stop: str  # one of threads.STOPS
    depth: int
    spawn_round: int  # which of the parent's spawns created it (-1 for the root)
    rounds: int  # spawns this thread made
    written: int  # model-written tokens


@dataclasses.dataclass
class SampleResult:
    problem_index: int
    sample_index: int
    threads: list[ThreadResult]
    written_tokens: int  # all model-written tokens, every thread
    sequential_tokens: int  # critical path (metrics.sequential_tokens)
    num_threads: int
    children_per_spawn: list[int]
    max_context_used: int  # longest thread context
    limits_hit: dict[str, int]  # stop reasons that are limits, plus dropped messages
    # KV-cache slots: the sample's tokens' K/V, each written once in its thread's lane (the
    # inherit family reads a parent's slots in place; stitched lanes stay held until the
    # root ends), and what an engine that copies every thread's whole context would hold.
    kv_slots: int = 0
    kv_slots_unshared: int = 0

    @property
    def root(self) -> ThreadResult:
        return self.threads[0]


@dataclasses.dataclass
class EngineOutput:
    samples: list[list[SampleResult]]  # [problem][sample]
    steps: list[int]  # loop iterations of each batch
    counters: dict[str, float] = dataclasses.field(default_factory=dict)  # engine_loop.COUNTERS, summed
    compile_s: float = 0.0  # seconds this run spent compiling decoders (not decoding)

    def flat(self) -> list[SampleResult]:
        return [s for per_problem in self.samples for s in per_problem]

    def summary(self) -> dict[str, float]:
        flat = self.flat()
        spawns = [c for s in flat for c in s.children_per_spawn]
        return {
            "samples": len(flat),
            "mean_written_tokens": float(np.mean([s.written_tokens for s in flat])),
            "mean_sequential_tokens": float(np.mean([s.sequential_tokens for s in flat])),
            "mean_threads": float(np.mean([s.num_threads for s in flat])),
            "mean_children_per_spawn": float(np.mean(spawns)) if spawns else 0.0,
            "max_context_used": int(max(s.max_context_used for s in flat)),
            "steps": int(sum(self.steps)),
            **efficiency(self.counters),
        }


def efficiency(counters: dict[str, float]) -> dict[str, float]:
    """Token-forwards computed per token fed, and KV slots read per live slot."""
    if not counters or not counters.get("tokens_fed"):
        return {}
    return {
        "forwards_per_token": counters["forwards_computed"] / counters["tokens_fed"],
        "kv_read_per_live": counters["kv_slots_read"] / max(counters["kv_slots_live"], 1.0),
    }


class Engine:
    """Decodes prompts into thread trees with on-device spawn/join."""

    def __init__(self, model: Any, cfg: EngineConfig, ids: ProtocolIds | None = None):
        self.model = as_decode_model(model)
        self.cfg = cfg
        self.ids = ids if ids is not None else ProtocolIds()
        self._compiled: dict[tuple[int, int, Any], Any] = {}  # (problems, prompt width, mesh) -> executable
        self.compile_s = 0.0  # total seconds spent compiling, over this engine's runs

    def run_arrays(
        self, prompts: Sequence[Sequence[int]], key: jax.Array, num_active: int | None = None
    ) -> dict[str, np.ndarray]:
        """Decode one batch (problems from ``num_active`` on are padding, left
        idle); the final loop state as numpy arrays with rows reshaped to
        [problem, sample, thread, ...] (see ``state_arrays``)."""
        width = bucket_length(max(len(p) for p in prompts))
        tokens = np.full((len(prompts), width), self.ids.pad, np.int32)
        for n, prompt in enumerate(prompts):
            tokens[n, : len(prompt)] = prompt
        width = min(width, self.cfg.max_context - 2)
        args = (
            self.model.params,
            jnp.asarray(tokens[:, :width]),
            jnp.asarray([len(p) for p in prompts], jnp.int32),
            jnp.int32(len(prompts) if num_active is None else num_active),
            key,
            jnp.int32(0),
        )
        state = self._decoder(len(prompts), width, args)(*args)
        return state_arrays(state, len(prompts))

    def _decoder(self, num_prompts: int, width: int, args: tuple) -> Any:
        """The compiled decoder for this batch shape under the current mesh:
        compiled ahead of time on first use (timed into ``compile_s``), reused
        by later batches and runs."""
        key = (num_prompts, width, jax.sharding.get_abstract_mesh())
        if key not in self._compiled:
            decode = make_decoder(
                self.model.decode_fn,
                self.model.init_cache,
                self.cfg,
                self.ids,
                num_prompts,
                width,
                page_size=decode_page_size(self.cfg, self.model.page_size_for),
            )
            start = time.perf_counter()
            compiled = decode.lower(*args).compile()
            self._compiled[key] = functools.partial(compiled, limits=decode.limits)
            self.compile_s += time.perf_counter() - start
        return self._compiled[key]

    def run(self, prompts: Sequence[Sequence[int]], key: jax.Array | None = None) -> EngineOutput:
        """Decode ``samples_per_problem`` samples of every prompt."""
        prompts = check_prompts(prompts)
        room = self.cfg.max_context - 2
        for i, p in enumerate(prompts):
            if len(p) > room:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens; max_context {self.cfg.max_context} leaves room for {room}"
                )
        key = jax.random.key(0) if key is None else key
        compiled_before = self.compile_s
        batch = self.cfg.batch_problems or len(prompts)
        samples: list[list[SampleResult]] = []
        steps = []
        counters = dict.fromkeys(engine_loop.COUNTERS, 0.0)
        for b, start in enumerate(range(0, len(prompts), batch)):
            chunk = prompts[start : start + batch]
            padded = chunk + [[self.ids.pad]] * (batch - len(chunk))
            arrays = self.run_arrays(padded, jax.random.fold_in(key, b), num_active=len(chunk))
            steps.append(int(arrays["step"]))
            for name, value in zip(engine_loop.COUNTERS, arrays["counters"]):
                counters[name] += float(value)
            samples.extend(sample_results(arrays, len(chunk), first_problem=start))
        return EngineOutput(samples=samples, steps=steps, counters=counters, compile_s=self.compile_s - compiled_before)


def decode_page_size(cfg: EngineConfig, page_size_for: Callable[..., int] | None) -> int:
    """The page size the engine's width-1 decode calls read the cache in (0:
    the xla gather) for ``cfg.decode_attention`` and a model's
    ``page_size_for`` (``DecodeModel``; None: the model has no paged decode);
    in the inherit family the paged calls read KV tables."""
    if page_size_for is None:
        if cfg.decode_attention == "paged":
            raise ValueError(
                "eval.decode_attention='paged' needs a model with a paged decode (the Transformer); this model has none"
            )
        return 0
    return page_size_for(cfg.decode_attention, cfg.page_size, cfg.cache_slots, tables=cfg.context == "inherit")


def loop_spec(
    cfg: EngineConfig, ids: ProtocolIds, num_groups: int, init_cache: Callable[[int, int], Any], page_size: int = 0
) -> engine_loop.LoopSpec:
    """The static loop shape for a batch of ``num_groups`` samples."""
    lanes = cfg.lanes_for(num_groups)
    return engine_loop.LoopSpec(
        ids=ids,
        slots=cfg.threads_per_sample,
        max_children=cfg.max_children,
        max_context=cfg.max_context,
        cache_slots=cfg.cache_slots,
        lanes=lanes,
        lanes_per_group=cfg.lanes_per_group,
        prefill_chunk=min(cfg.prefill_chunk, cfg.max_context),
        long_prefill_chunks=tuple(
            sorted(
                {min(w, cfg.max_context) for w in cfg.long_prefill_chunks} - {min(cfg.prefill_chunk, cfg.max_context)}
            )
        ),
        row_buckets=halvings(lanes, cfg.row_buckets, minimum=1),
        kv_buckets=kv_read_buckets(cfg),
        sampling=cfg.sampling,
        cache_axes=engine_loop.cache_axes(init_cache),
        split_by_kv_length=cfg.split_by_kv_length,
        page_size=page_size,
        context=cfg.context,
        join=cfg.join,
        entries=cfg.table_entries,
        table_page=cfg.page_size,
    )


def kv_read_buckets(cfg: EngineConfig) -> tuple[int, ...]:
    """The slots a model call's rows may read: ``kv_buckets`` halvings of
    the context; in the inherit family whole pages of them, and also twice
    the context and every KV-table entry's whole lane (a stitched parent
    reads its children's ranges beside its own, more slots than it has
    positions)."""
    buckets = halvings(cfg.max_context, cfg.kv_buckets, minimum=8)
    if cfg.context != "inherit":
        return buckets
    if cfg.table_entries > 1:
        buckets = (*buckets, 2 * cfg.max_context, cfg.table_entries * cfg.max_context)
    return tuple(sorted({-(-b // cfg.page_size) * cfg.page_size for b in buckets}))


def halvings(size: int, count: int, minimum: int) -> tuple[int, ...]:
    """``size``, ``size/2``, ... (rounded up, at least ``minimum``), ``count``
    of them at most, ascending and distinct."""
    return tuple(sorted({max(min(minimum, size), -(-size // 2**i)) for i in range(count)}))


def loop_limits(cfg: EngineConfig, num_groups: int) -> engine_loop.Limits:
    """The loop's traced limits (changing them does not recompile). The step
    cap is the waves of groups the pool runs, times a group's most tokens."""
    in_flight = cfg.lanes_for(num_groups) // cfg.lanes_per_group
    waves = -(-num_groups // in_flight)
    return engine_loop.Limits(
        max_rounds=jnp.int32(cfg.max_rounds),
        max_depth=jnp.int32(cfg.max_depth),
        tokens_per_thread=jnp.int32(cfg.tokens_per_thread),
        max_steps=jnp.int32(min(waves * cfg.threads_per_sample * cfg.max_context, 2**31 - 1)),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Decoder:
    """The engine's decoding function for one batch shape (``make_decoder``):
    ``decoder(params, prompt_PxT, prompt_len_P, num_active, key, first_thread)
    -> LoopState``. ``lower`` and ``trace`` take the same arguments and give
    its ahead-of-time stages; an executable compiled from them takes
    ``limits`` (the loop's traced limits) as a keyword."""

    spec: engine_loop.LoopSpec
    limits: engine_loop.Limits
    samples: int  # samples per prompt
    decode_fn: DecodeFn
    init_cache: Callable[[int, int], Any]

    def __call__(
        self,
        params: Any,
        prompt_PxT: jax.Array,
        prompt_len_P: jax.Array,
        num_active: jax.Array,
        key: jax.Array,
        first_thread: jax.Array,
    ) -> engine_loop.LoopState:
        """Decode (jitted; compiled on first use of a shape)."""
        return _decode_jit(params, prompt_PxT, prompt_len_P, num_active, key, first_thread, **self._keywords())

    def lower(
        self, params: Any, prompt_PxT: Any, prompt_len_P: Any, num_active: Any, key: Any, first_thread: Any
    ) -> jax.stages.Lowered:
        """The decoder lowered for these arguments (arrays or ``ShapeDtypeStruct``s)."""
        return _decode_jit.lower(params, prompt_PxT, prompt_len_P, num_active, key, first_thread, **self._keywords())

    def trace(
        self, params: Any, prompt_PxT: Any, prompt_len_P: Any, num_active: Any, key: Any, first_thread: Any
    ) -> jax.stages.Traced:
        """The decoder traced for these arguments (``.lower(lowering_platforms=...)``
        lowers it for another platform)."""
        return _decode_jit.trace(params, prompt_PxT, prompt_len_P, num_active, key, first_thread, **self._keywords())

    def _keywords(self) -> dict[str, Any]:
        """``_decode_jit``'s keyword arguments: the limits and the static settings."""
        return {
            "limits": self.limits,
            "spec": self.spec,
            "samples": self.samples,
            "decode_fn": self.decode_fn,
            "init_cache": self.init_cache,
        }


def make_decoder(
    decode_fn: DecodeFn,
    init_cache: Callable[[int, int], Any],
    cfg: EngineConfig,
    ids: ProtocolIds,
    num_prompts: int,
    prompt_width: int,
    page_size: int = 0,
) -> Decoder:
    """The one decoding function of evaluation and RL rollouts (``Decoder``)
    for ``num_prompts`` prompts of (static) width ``prompt_width`` (without
    BOS), ``samples_per_problem`` samples each. Pure; jitted once per shape
    (the cache is built inside, under the caller's mesh if any).
    ``page_size`` (``decode_page_size``; 0: xla) is passed to ``decode_fn``
    in width-1 calls."""
    if prompt_width + 2 > cfg.max_context:
        raise ValueError(f"prompt width {prompt_width} leaves no room in max_context {cfg.max_context}")
    rollouts = num_prompts * cfg.samples_per_problem
    return Decoder(
        spec=loop_spec(cfg, ids, rollouts, init_cache, page_size),
        limits=loop_limits(cfg, rollouts),
        samples=cfg.samples_per_problem,
        decode_fn=decode_fn,
        init_cache=init_cache,
    )


def decode_axes(mesh: Any, num_prompts: int) -> tuple[str, ...]:
    """The mesh axes the engine splits ``num_prompts`` prompts over: the batch
    axes (size > 1), and ``tensor`` too when the prompts divide over all of
    them. Every axis is manual inside the loop and each device holds the whole
    model, so a tensor shard decodes prompts of its own rather than repeating
    its neighbours' rows."""
    if mesh.empty:
        return ()
    axes = tuple(a for a in sharding.BATCH_AXES if mesh.shape.get(a, 1) > 1)
    wider = axes + (("tensor",) if mesh.shape.get("tensor", 1) > 1 else ())
    if num_prompts % int(np.prod([mesh.shape[a] for a in wider])) == 0:
        return wider
    return axes


@functools.partial(jax.jit, static_argnames=("spec", "samples", "decode_fn", "init_cache"))
def _decode_jit(
    params, prompt_PxT, prompt_len_P, num_active, key, first_thread, limits, *, spec, samples, decode_fn, init_cache
) -> engine_loop.LoopState:
    """``run_loop``, shard-local under a mesh: each shard (``decode_axes``)
    decodes its slice of the prompts with its own lanes (no gathers across
    devices in the loop). Scalars come back with one entry per shard."""
    P, mesh = prompt_PxT.shape[0], jax.sharding.get_abstract_mesh()
    axes = decode_axes(mesh, P)
    shards = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if shards == 1 or P % shards:
        return _per_shard(
            engine_loop.run_loop(
                params,
                prompt_PxT,
                prompt_len_P,
                num_active,
                key,
                limits,
                first_thread,
                spec=spec,
                samples=samples,
                decode_fn=decode_fn,
                init_cache=init_cache,
            )
        )
    per = P // shards
    lanes = max(spec.lanes // shards, spec.lanes_per_group)
    local_spec = dataclasses.replace(spec, lanes=lanes, row_buckets=halvings(lanes, len(spec.row_buckets), minimum=1))
    local_limits = dataclasses.replace(limits, max_steps=limits.max_steps * shards)

    def local(params, prompt_PxT, prompt_len_P, num_active, key, first_thread):
        i = jax.lax.axis_index(axes)
        s = engine_loop.run_loop(
            params,
            prompt_PxT,
            prompt_len_P,
            jnp.clip(num_active - i * per, 0, per),
            key,
            local_limits,
            first_thread + i * per * samples * spec.slots,
            spec=local_spec,
            samples=samples,
            decode_fn=decode_fn,
            init_cache=init_cache,
        )
        return _per_shard(s)

    rows = PartitionSpec(axes)
    out_specs = engine_loop.LoopState(
        **{f.name: rows for f in dataclasses.fields(engine_loop.LoopState) if f.name != "cache"},
        cache=jax.tree.unflatten(
            jax.tree.structure(jax.eval_shape(functools.partial(init_cache, 1, 1))),
            [PartitionSpec(*(None,) * a, axes) for a in spec.cache_axes],
        ),
    )
    replicated = PartitionSpec()
    return jax.shard_map(
        local,
        in_specs=(replicated, rows, rows, replicated, replicated, replicated),
        out_specs=out_specs,
        check_vma=False,
    )(params, prompt_PxT, prompt_len_P, num_active, key, first_thread)


def _per_shard(s: engine_loop.LoopState) -> engine_loop.LoopState:
    """The loop's scalars with a leading shard axis of 1."""
    return s.replace(
        step=s.step[None], admitted=s.admitted[None], num_groups=s.num_groups[None], counters=s.counters[None]
    )


def state_arrays(state: engine_loop.LoopState, num_prompts: int) -> dict[str, np.ndarray]:
    """A loop state on the host as ``sample_major`` arrays (the cache and lane
    fields left out), ``step`` and ``counters`` combined over shards."""
    host = jax.device_get(dataclasses.replace(state, cache=None))
    fields = {
        f.name: getattr(host, f.name)
        for f in dataclasses.fields(host)
        if f.name != "cache" and shape_suffix(f.name) != "C"
    }
    out = sample_major(fields, num_prompts)
    out["step"] = out["step"].max()  # one entry per shard
    out["counters"] = out["counters"].sum(axis=0)
    return out


def shape_suffix(name: str) -> str:
    """The shape suffix of an array's name (``buf_RxL`` -> ``RxL``; ``""`` for
    a name without one, such as ``step`` or ``num_groups``)."""
    base, _, suffix = name.rpartition("_")
    return suffix if base and suffix[:1].isupper() else ""


def sample_major(fields: Mapping[str, Any], num_prompts: int) -> dict[str, np.ndarray]:
    """The host-side reshaper of engine state (``state_arrays``,
    ``rl.rollout.engine_arrays``): arrays keyed by their field names, as numpy
    arrays keyed by the name without its shape suffix, per-row (``_R``,
    ``_RxL``) ones shaped [problem, sample, thread, ...] and per-rollout
    (``_N``) ones [problem, sample]; unsuffixed ones kept whole under their
    own name. The layout ``sample_results`` reads."""
    arrays = {name: np.asarray(value) for name, value in fields.items()}
    rollouts = next(a.shape[0] for name, a in arrays.items() if shape_suffix(name) == "N")
    rows = next(a.shape[0] for name, a in arrays.items() if shape_suffix(name) in ("R", "RxL"))
    samples, slots = rollouts // num_prompts, rows // rollouts
    out = {}
    for name, a in arrays.items():
        suffix = shape_suffix(name)
        if suffix.split("x")[0] == "R":  # per row: R, RxL, RxE
            out[name.removesuffix("_" + suffix)] = a.reshape((num_prompts, samples, slots) + a.shape[1:])
        elif suffix == "N":
            out[name.removesuffix("_N")] = a.reshape(num_prompts, samples)
        elif suffix:
            raise ValueError(f"{name}: no per-sample layout for shape suffix {suffix!r}")
        else:
            out[name] = a
    return out


def sample_results(
    arrays: dict[str, np.ndarray], num_problems: int, first_problem: int = 0
) -> list[list[SampleResult]]:
    """``[problem][sample]`` results of the first ``num_problems`` problems of
    loop-state arrays shaped as ``Engine.run_arrays`` returns them."""
    samples = arrays["next_free"].shape[1]
    return [[_sample_result(arrays, n, k, first_problem + n) for k in range(samples)] for n in range(num_problems)]


def _sample_result(a: dict[str, np.ndarray], n: int, k: int, problem_index: int) -> SampleResult:
    """Unpack one sample's rows into thread results and counts."""
    used = int(a["next_free"][n, k])
    parent = [int(x) for x in a["parent"][n, k, :used]]
    spawn_round = [int(x) for x in a["spawn_round"][n, k, :used]]
    threads = []
    for i in range(used):
        length = int(a["length"][n, k, i])
        threads.append(
            ThreadResult(
                tokens=[int(x) for x in a["buf"][n, k, i, :length]],
                roles=[ROLE_NAMES[int(r)] for r in a["role"][n, k, i, :length]],
                parent=parent[i],
                children=[c for c in range(used) if parent[c] == i and c != i],
                stop=threads_lib.STOPS[int(a["stop"][n, k, i])],
                depth=int(a["depth"][n, k, i]),
                spawn_round=spawn_round[i],
                rounds=int(a["rounds"][n, k, i]),
                written=int(a["written"][n, k, i]),
            )
        )
    spawns = metrics.spawns_from_parents(parent, spawn_round)
    children_per_spawn = []
    for i, t in enumerate(threads):
        rounds = spawns[i] + [[]] * (t.rounds - len(spawns[i]))
        children_per_spawn.extend(len(r) for r in rounds)
    own = [sum(role not in ("inherit", "stitch") for role in t.roles) for t in threads]
    table = a.get("table_count")
    if table is not None and int(table[n, k, 0]):  # inherit family: what each thread's KV table lists
        lo, hi = a["table_lo"][n, k, :used], a["table_hi"][n, k, :used]
        top = np.minimum(hi, a["length"][n, k, :used, None])
        listed = np.where(np.arange(lo.shape[1]) < a["table_count"][n, k, :used, None], np.maximum(top - lo, 0), 0)
        unshared = int(listed.sum())
    else:
        unshared = sum(own)
    limits = {name: sum(t.stop == name for t in threads) for name in LIMIT_STOPS}
    limits["dropped_children"] = int(a["dropped_children"][n, k])
    limits["dropped_pool"] = int(a["dropped_pool"][n, k])
    return SampleResult(
        problem_index=problem_index,
        sample_index=k,
        threads=threads,
        written_tokens=sum(t.written for t in threads),
        sequential_tokens=metrics.sequential_tokens([t.written for t in threads], spawns),
        num_threads=used,
        children_per_spawn=children_per_spawn,
        max_context_used=max(len(t.tokens) for t in threads),
        limits_hit=limits,
        kv_slots=sum(own),
        kv_slots_unshared=unshared,
    )


def to_thread_trees(output: EngineOutput, tokenizer: Any, problems: Sequence[dict]) -> list[threads_lib.ThreadTree]:
    """One ThreadTree per (problem, sample), problem-major. Segments are runs of
    tokens with one role decoded by ``tokenizer.decode``; BOS is left out, and
    so is a final EOS (``ThreadTree.to_sequences`` adds it back for stop 'eos').
    In the inherit family a child's copy of its parent's context and a
    stitched parent's skipped positions are left out too: each thread keeps
    its own text, as ``ThreadTree.with_context`` writes it."""
    if len(problems) != len(output.samples):
        raise ValueError(f"{len(problems)} problems for {len(output.samples)} decoded problems")
    trees = []
    for problem, per_problem in zip(problems, output.samples):
        for sample in per_problem:
            threads = []
            for t in sample.threads:
                own = [i for i, role in enumerate(t.roles) if i > 0 and role not in ("inherit", "stitch")]  # 0: BOS
                tokens, roles = [t.tokens[i] for i in own], [t.roles[i] for i in own]
                if t.stop == "eos" and tokens:
                    tokens, roles = tokens[:-1], roles[:-1]
                segments = []
                start = 0
                for i in range(1, len(tokens) + 1):
                    if i == len(tokens) or roles[i] != roles[start]:
                        segments.append(threads_lib.Segment(roles[start], tokenizer.decode(tokens[start:i])))
                        start = i
                threads.append(
                    threads_lib.Thread(parent=t.parent, segments=segments, children=list(t.children), stop=t.stop)
                )
            trees.append(
                threads_lib.ThreadTree(
                    problem=dict(problem),
                    threads=threads,
                    meta={
                        "sample": sample.sample_index,
                        "spawn_round": [t.spawn_round for t in sample.threads],
                        "written_tokens": [t.written for t in sample.threads],
                        "sequential_tokens": sample.sequential_tokens,
                        "limits_hit": dict(sample.limits_hit),
                    },
                )
            )
    return trees
