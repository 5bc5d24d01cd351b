"""Decode problems with the spawn/join engine and score them with the task's
verifier: one row per problem (answer, tokens, threads, children, rounds,
depth, difficulty, the thread tree) and a summary (accuracy, pass@K, cons@K,
tokens, width against difficulty)."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Sequence

import jax
import numpy as np

from apr_jax.config.sections import RunConfig
from apr_jax.decode.engine import Engine, EngineConfig, to_thread_trees
from apr_jax.decode.metrics import cons_at_k, pass_at_k, spawn_measures
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.sampler import SamplingConfig
from apr_jax.evaluation.width_stats import width_summary
from apr_jax.tasks.base import answer_key_value
from apr_jax.tasks.registry import get_task


def engine_config(
    config: RunConfig,
    *,
    samples: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    tokens_per_thread: int | None = None,
    max_context: int | None = None,
) -> EngineConfig:
    """The engine's limits and sampling from a config's ``eval`` section, with
    this evaluation's overrides. ``max_context`` caps every thread's context
    (prompt, written and join tokens; default the model's ``max_len``): a
    thread that reaches it stops with ``context_limit``."""
    limit = config.model.max_len if max_context is None else max_context
    if not 4 <= limit <= config.model.max_len:
        raise ValueError(
            f"context limit {limit} must be between 4 and the model's config.model.max_len={config.model.max_len}"
        )
    e = config.eval
    return EngineConfig.from_eval_config(
        e,
        limit,
        context=config.data.context,
        join=config.data.join,
        samples_per_problem=samples,
        sampling=SamplingConfig(
            e.temperature if temperature is None else temperature, e.top_p if top_p is None else top_p
        ),
        tokens_per_thread=tokens_per_thread or e.tokens_per_thread,
    )


def problem_difficulty(task: Any, problem: Any) -> float | None:
    """The task's difficulty of ``problem`` (``Task.difficulty``), None when the
    task has no such method or does not know it."""
    method = getattr(task, "difficulty", None)
    if method is None:
        return None
    value = method(problem)
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def input_count(problem: dict[str, Any]) -> int | None:
    """How many input numbers a problem (its dict form) gives: len(numbers)."""
    numbers = problem.get("numbers")
    return len(numbers) if isinstance(numbers, (list, tuple)) else None


def evaluate_problems(
    model: Any,
    tokenizer: Any,
    config: RunConfig,
    problems: Sequence[Any],
    *,
    samples: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    prefix: str = "",
    tokens_per_thread: int | None = None,
    max_context: int | None = None,
    seed: int = 0,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Decode ``samples`` per problem with ``model`` (an NNX module or a
    ``DecodeModel``); returns (per-problem rows, summary). ``max_context``
    limits each thread's context (``engine_config``). Under ``mesh`` the
    engine's cache is laid out by the model's sharding rules.

    Each row (and each of its ``samples``) carries ``children`` (threads
    spawned), ``spawn_rounds`` and ``depth`` (``metrics.spawn_measures``);
    rows carry the problem's ``num_inputs`` and ``difficulty`` (None when
    unknown). The summary adds their means and, when any difficulty is known,
    ``width_stats.width_summary``'s ``width_*`` keys (each problem's children
    averaged over its samples): every value is a number, NaN when undefined."""
    if not problems:
        raise ValueError("no problems to evaluate")
    cfg = engine_config(
        config,
        samples=samples,
        temperature=temperature,
        top_p=top_p,
        tokens_per_thread=tokens_per_thread,
        max_context=max_context,
    )
    task = get_task(config)
    engine = Engine(model, cfg, ProtocolIds.from_tokenizer(tokenizer))
    prompts = [tokenizer.encode(task.prompt(p, prefix)) for p in problems]
    start = time.time()
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        output = engine.run(prompts, jax.random.key(seed))
    wall = time.time() - start - output.compile_s
    trees = to_thread_trees(output, tokenizer, [p.to_dict() for p in problems])

    rows = []
    for n, problem in enumerate(problems):
        per_sample = []
        for k, result in enumerate(output.samples[n]):
            tree = trees[n * samples + k]
            score = task.score(tree.threads[0].written_text, problem)
            shape = spawn_measures([t.parent for t in result.threads], [t.rounds for t in result.threads])
            per_sample.append(
                {
                    "solved": score.ok,
                    "reason": score.reason,
                    task.answer_key: score.answer if score.answer is not None else [],
                    "well_formed": result.threads[0].stop == "eos" and score.answer is not None,
                    "total_tokens": result.written_tokens,
                    "sequential_tokens": result.sequential_tokens,
                    "num_threads": result.num_threads,
                    "max_context": result.max_context_used,
                    "kv_slots": result.kv_slots,
                    "kv_slots_unshared": result.kv_slots_unshared,
                    "children_per_spawn": result.children_per_spawn,
                    **shape,
                    "limits_hit": {k2: v for k2, v in result.limits_hit.items() if v},
                    "tree": tree.to_dict(),
                }
            )
        correct = [s["solved"] for s in per_sample]
        first = per_sample[0]
        as_dict = problem.to_dict()
        rows.append(
            {
                **as_dict,
                "solved": first["solved"],
                task.answer_key: first[task.answer_key],
                "reason": first["reason"],
                "total_tokens": first["total_tokens"],
                "sequential_tokens": first["sequential_tokens"],
                "num_threads": first["num_threads"],
                "max_context": first["max_context"],
                "kv_slots": first["kv_slots"],
                "limits_hit": first["limits_hit"],
                "children": first["children"],
                "spawn_rounds": first["spawn_rounds"],
                "depth": first["depth"],
                "num_inputs": input_count(as_dict),
                "difficulty": problem_difficulty(task, problem),
                "solve_rate": float(np.mean(correct)),
                "pass_at_k": pass_at_k(samples, sum(correct), samples),
                "cons_at_k": cons_at_k([answer_key_value(s[task.answer_key]) for s in per_sample], correct),
                "tree": first["tree"],
                "samples": per_sample[1:],
                "_all": per_sample,
            }
        )
    flat = [s for r in rows for s in r["_all"]]
    spawns = [c for s in flat for c in s["children_per_spawn"]]
    total = sum(s["total_tokens"] for s in flat)
    summary = {
        "problems": len(problems),
        "samples": samples,
        "accuracy": float(np.mean([s["solved"] for s in flat])),
        f"pass@{samples}": float(np.mean([r["pass_at_k"] for r in rows])),
        f"cons@{samples}": float(np.mean([r["cons_at_k"] for r in rows])),
        "well_formed": float(np.mean([s["well_formed"] for s in flat])),
        "mean_total_tokens": total / len(flat),
        "max_total_tokens": max(s["total_tokens"] for s in flat),
        "mean_sequential_tokens": float(np.mean([s["sequential_tokens"] for s in flat])),
        "mean_children_per_spawn": float(np.mean(spawns)) if spawns else 0.0,
        "spawned": float(np.mean([s["num_threads"] > 1 for s in flat])),
        "context_limited": float(np.mean([s["limits_hit"].get("context_limit", 0) > 0 for s in flat])),
        "max_context": max(s["max_context"] for s in flat),
        "mean_kv_slots": float(np.mean([s["kv_slots"] for s in flat])),
        "mean_kv_slots_unshared": float(np.mean([s["kv_slots_unshared"] for s in flat])),
        "wall_s": wall,
        "tokens_per_s": total / max(wall, 1e-9),
        "compile_s": output.compile_s,
        "mean_children": float(np.mean([s["children"] for s in flat])),
        "mean_spawn_rounds": float(np.mean([s["spawn_rounds"] for s in flat])),
        "max_depth": max(s["depth"] for s in flat),
    }
    summary.update(
        width_summary(
            [r["difficulty"] for r in rows],
            [float(np.mean([s["children"] for s in r["_all"]])) for r in rows],
            [r["num_inputs"] for r in rows],
            [float(np.mean([s["children"] > 0 for s in r["_all"]])) for r in rows],
        )
    )
    for r in rows:
        r.pop("_all")
    return rows, summary
