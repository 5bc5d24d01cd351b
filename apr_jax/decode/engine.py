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

Thread pool: each sample owns ``max_threads`` rows (root + children), never
reused. The default is the full tree ``sum_d (max_rounds*max_children)^d`` for
``d <= max_depth``, capped at ``max(64, 1 + max_rounds*max_children)``;
messages that find no free row are dropped and counted (``dropped_pool``).
``max_depth = 0`` is sequential decoding: ``</spawn>`` is ordinary text.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from apr_jax import threads as threads_lib
from apr_jax.decode import engine_loop, metrics
from apr_jax.decode.model_api import as_decode_model
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.sampler import SamplingConfig, bucket_length, check_prompts

ROLE_NAMES = ("prompt", "model", "join")
LIMIT_STOPS = ("token_limit", "context_limit", "depth_limit", "round_limit", "running")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    max_children: int = 4  # children per spawn
    max_rounds: int = 2  # spawns per thread
    max_depth: int = 1  # nesting depth; 0 = no spawning
    tokens_per_thread: int = 256  # model-written tokens per thread
    max_context: int = 512  # tokens per thread buffer (prompt + written + joins)
    sampling: SamplingConfig = SamplingConfig()
    samples_per_problem: int = 1
    max_threads: int = 0  # rows per sample; 0 = derived (module docstring)
    batch_problems: int = 0  # problems per compiled call; 0 = all at once

    def __post_init__(self):
        for name, low in (("max_children", 1), ("max_rounds", 0), ("max_depth", 0),
                          ("tokens_per_thread", 1), ("max_context", 4),
                          ("samples_per_problem", 1), ("max_threads", 0), ("batch_problems", 0)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"EngineConfig.{name} must be an int >= {low}, got {value!r}")
        if not isinstance(self.sampling, SamplingConfig):
            raise ValueError(f"EngineConfig.sampling must be a SamplingConfig, got {self.sampling!r}")

    @classmethod
    def from_eval_config(cls, eval_cfg: Any, max_context: int) -> "EngineConfig":
        """From a config's ``eval`` section (``samples``, ``temperature``,
        ``top_p``, ``max_children``, ``max_rounds``, ``max_depth``,
        ``tokens_per_thread``, ``batch_problems``)."""
        get = eval_cfg.get if hasattr(eval_cfg, "get") else lambda k, d=None: getattr(eval_cfg, k, d)
        return cls(
            max_children=int(get("max_children", 4)), max_rounds=int(get("max_rounds", 2)),
            max_depth=int(get("max_depth", 1)), tokens_per_thread=int(get("tokens_per_thread", 256)),
            max_context=int(max_context),
            sampling=SamplingConfig(float(get("temperature", 0.0)), float(get("top_p", 1.0))),
            samples_per_problem=int(get("samples", 1)), batch_problems=int(get("batch_problems", 0)))

    @property
    def threads_per_sample(self) -> int:
        if self.max_threads:
            return self.max_threads
        if self.max_depth == 0 or self.max_rounds == 0:
            return 1
        fan = self.max_rounds * self.max_children
        full = sum(fan ** d for d in range(self.max_depth + 1))
        return int(min(full, max(64, 1 + fan)))


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

    @property
    def root(self) -> ThreadResult:
        return self.threads[0]


@dataclasses.dataclass
class EngineOutput:
    samples: list[list[SampleResult]]  # [problem][sample]
    steps: list[int]  # loop iterations of each batch

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
        }


class Engine:
    """Decodes prompts into thread trees with on-device spawn/join."""

    def __init__(self, model: Any, cfg: EngineConfig, ids: ProtocolIds | None = None):
        self.model = as_decode_model(model)
        self.cfg = cfg
        self.ids = ids if ids is not None else ProtocolIds()

    def _spec(self, longest_prompt: int) -> engine_loop.LoopSpec:
        return loop_spec(self.cfg, self.ids, longest_prompt)

    def _limits(self) -> engine_loop.Limits:
        return loop_limits(self.cfg)

    def run_arrays(self, prompts: Sequence[Sequence[int]], key: jax.Array,
                   active: Sequence[bool] | None = None) -> dict[str, np.ndarray]:
        """Decode one batch (``active[n]`` False: problem n is padding, left
        idle); the final loop state as numpy arrays with rows reshaped to
        [problem, sample, thread, ...]."""
        S, L, K = self.cfg.threads_per_sample, self.cfg.max_context, self.cfg.samples_per_problem
        groups = len(prompts) * K
        buf = np.full((groups * S, L), self.ids.pad, np.int32)
        length = np.zeros((groups * S,), np.int32)
        for n, prompt in enumerate(prompts):
            for k in range(K):
                row = (n * K + k) * S
                buf[row, 0] = self.ids.bos
                buf[row, 1:1 + len(prompt)] = prompt
                length[row] = 1 + len(prompt)
        active = np.repeat(np.ones(len(prompts), bool) if active is None else np.asarray(active, bool), K)
        spec = self._spec(max(len(p) for p in prompts) + 1)
        cache = self.model.init_cache(groups * S, L)
        state = engine_loop.run_loop(
            self.model.params, jnp.asarray(buf), jnp.asarray(length), jnp.asarray(active), cache, key,
            self._limits(), spec=spec, decode_fn=self.model.decode_fn)
        state.pop("cache")
        out = {name: np.asarray(v) for name, v in state.items()}
        for name, v in out.items():
            if name == "step":
                continue
            per_group = name in engine_loop.PER_GROUP
            out[name] = v.reshape((len(prompts), K) + ((() if per_group else (S,)) + v.shape[1:]))
        return out

    def run(self, prompts: Sequence[Sequence[int]], key: jax.Array | None = None) -> EngineOutput:
        """Decode ``samples_per_problem`` samples of every prompt."""
        prompts = check_prompts(prompts)
        room = self.cfg.max_context - 2
        for i, p in enumerate(prompts):
            if len(p) > room:
                raise ValueError(f"prompt {i} has {len(p)} tokens; max_context {self.cfg.max_context} "
                                 f"leaves room for {room}")
        key = jax.random.key(0) if key is None else key
        batch = self.cfg.batch_problems or len(prompts)
        samples: list[list[SampleResult]] = []
        steps = []
        for b, start in enumerate(range(0, len(prompts), batch)):
            chunk = prompts[start:start + batch]
            padded = chunk + [[]] * (batch - len(chunk))
            arrays = self.run_arrays(padded, jax.random.fold_in(key, b),
                                     active=[i < len(chunk) for i in range(batch)])
            steps.append(int(arrays["step"]))
            samples.extend(sample_results(arrays, len(chunk), first_problem=start))
        return EngineOutput(samples=samples, steps=steps)


def loop_spec(cfg: EngineConfig, ids: ProtocolIds, longest_prompt: int) -> engine_loop.LoopSpec:
    """The static loop shape for prompts of up to ``longest_prompt`` tokens (BOS included)."""
    return engine_loop.LoopSpec(
        ids=ids, slots=cfg.threads_per_sample, max_children=cfg.max_children,
        max_context=cfg.max_context,
        prefill_width=min(bucket_length(longest_prompt), cfg.max_context),
        sampling=cfg.sampling)


def loop_limits(cfg: EngineConfig) -> engine_loop.Limits:
    """The loop's traced limits (changing them does not recompile)."""
    return engine_loop.Limits(
        max_rounds=jnp.int32(cfg.max_rounds), max_depth=jnp.int32(cfg.max_depth),
        tokens_per_thread=jnp.int32(cfg.tokens_per_thread),
        max_steps=jnp.int32(cfg.threads_per_sample * cfg.max_context))


def sample_results(arrays: dict[str, np.ndarray], num_problems: int, first_problem: int = 0
                   ) -> list[list[SampleResult]]:
    """``[problem][sample]`` results of the first ``num_problems`` problems of
    loop-state arrays shaped as ``Engine.run_arrays`` returns them."""
    samples = arrays["next_free"].shape[1]
    return [[_sample_result(arrays, n, k, first_problem + n) for k in range(samples)]
            for n in range(num_problems)]


def _sample_result(a: dict[str, np.ndarray], n: int, k: int, problem_index: int) -> SampleResult:
    """Unpack one sample's rows into thread results and counts."""
    used = int(a["next_free"][n, k])
    parent = [int(x) for x in a["parent"][n, k, :used]]
    spawn_round = [int(x) for x in a["spawn_round"][n, k, :used]]
    threads = []
    for i in range(used):
        length = int(a["length"][n, k, i])
        threads.append(ThreadResult(
            tokens=[int(x) for x in a["buf"][n, k, i, :length]],
            roles=[ROLE_NAMES[int(r)] for r in a["role"][n, k, i, :length]],
            parent=parent[i], children=[c for c in range(used) if parent[c] == i and c != i],
            stop=threads_lib.STOPS[int(a["stop"][n, k, i])], depth=int(a["depth"][n, k, i]),
            spawn_round=spawn_round[i], rounds=int(a["rounds"][n, k, i]),
            written=int(a["written"][n, k, i])))
    spawns = metrics.spawns_from_parents(parent, spawn_round)
    children_per_spawn = []
    for i, t in enumerate(threads):
        rounds = spawns[i] + [[]] * (t.rounds - len(spawns[i]))
        children_per_spawn.extend(len(r) for r in rounds)
    limits = {name: sum(t.stop == name for t in threads) for name in LIMIT_STOPS}
    limits["dropped_children"] = int(a["dropped_children"][n, k])
    limits["dropped_pool"] = int(a["dropped_pool"][n, k])
    return SampleResult(
        problem_index=problem_index, sample_index=k, threads=threads,
        written_tokens=sum(t.written for t in threads),
        sequential_tokens=metrics.sequential_tokens([t.written for t in threads], spawns),
        num_threads=used, children_per_spawn=children_per_spawn,
        max_context_used=max(len(t.tokens) for t in threads), limits_hit=limits)


def to_thread_trees(output: EngineOutput, tokenizer: Any, problems: Sequence[dict]) -> list[threads_lib.ThreadTree]:
    """One ThreadTree per (problem, sample), problem-major. Segments are runs of
    tokens with one role decoded by ``tokenizer.decode``; BOS is left out, and
    so is a final EOS (``ThreadTree.to_sequences`` adds it back for stop 'eos')."""
    if len(problems) != len(output.samples):
        raise ValueError(f"{len(problems)} problems for {len(output.samples)} decoded problems")
    trees = []
    for problem, per_problem in zip(problems, output.samples):
        for sample in per_problem:
            threads = []
            for t in sample.threads:
                tokens, roles = t.tokens[1:], t.roles[1:]
                if t.stop == "eos" and tokens:
                    tokens, roles = tokens[:-1], roles[:-1]
                segments = []
                start = 0
                for i in range(1, len(tokens) + 1):
                    if i == len(tokens) or roles[i] != roles[start]:
                        segments.append(threads_lib.Segment(roles[start], tokenizer.decode(tokens[start:i])))
                        start = i
                threads.append(threads_lib.Thread(parent=t.parent, segments=segments,
                                                  children=list(t.children), stop=t.stop))
            trees.append(threads_lib.ThreadTree(
                problem=dict(problem), threads=threads,
                meta={"sample": sample.sample_index,
                      "spawn_round": [t.spawn_round for t in sample.threads],
                      "written_tokens": [t.written for t in sample.threads],
                      "sequential_tokens": sample.sequential_tokens,
                      "limits_hit": dict(sample.limits_hit)}))
    return trees
