"""`python -m apr_jax.evaluate`: decode held-out problems with the spawn/join
engine and score them with the task's verifier (``config.task.name``).

    python -m apr_jax.evaluate --workdir=runs/default --split=test --num=200
    python -m apr_jax.evaluate --workdir=runs/default,runs/default_rl \\
        --split=test,validation,unseen --num=1000
    python -m apr_jax.evaluate --checkpoint=runs/default/checkpoints/1500 \\
        --problems=problems.jsonl --samples=4 --temperature=0.7 --out=results.jsonl
    python -m apr_jax.evaluate --workdir=runs/apr,runs/sosp --sweep=tokens=64,128,256

It prints one table row per setting: accuracy, pass@K, cons@K, tokens (total,
sequential = critical path), children per spawn, share of problems that
spawned, largest context, decoding wall time and tokens/s, and the seconds
spent compiling (apart from the wall time). When the task knows each
problem's difficulty (``Task.difficulty``; Countdown does) it prints how the
width follows it, one line per setting (``apr_jax.width_stats``): the
Spearman correlation of children spawned with difficulty (overall and per
count of input numbers) and the spawn rate and mean children per difficulty
quartile, and draws children per problem per quartile as boxes
(``--width_plot``). ``--out`` writes one JSON line per problem (and setting)
with the thread tree, the children spawned, spawn rounds, nesting depth,
input count and difficulty; sweeps write PNG plots of accuracy against total
and against sequential tokens, one point per setting (``children=adaptive``:
a conditioned model asked with no prefix, deciding its width itself). A sweep
of a kind another run's trace cannot take (children for SoS+, budget for APR)
evaluates that run once at its default setting: one reference point in the
plot. ``--split`` takes
comma-separated splits (``--num`` problems from each); ``unseen`` is the
solvable problems in the task's ranges that are in no split (never trained on,
RL included): more held-out problems than the test split where the space allows.
A model trained with ``config.trace.condition`` is asked with a prefix: APR
``c<eval.max_children>``, SoS+ the largest budget bucket that fits its thread's
tokens (``b128`` for 128 to 255); ``--sweep=children|budget`` sets it instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from apr_jax import config as config_lib
from apr_jax.checkpoint import Checkpointer, CheckpointError, decode_bytes, split_checkpoint_path
from apr_jax.cli import Command, Flag, run_command
from apr_jax.countdown.render import budget_within, conditioning_prefix
from apr_jax.decode.engine import Engine, EngineConfig, to_thread_trees
from apr_jax.decode.metrics import cons_at_k, pass_at_k, sign_test_p, spawn_measures
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.sampler import SamplingConfig
from apr_jax.jsonl_io import read_jsonl
from apr_jax.run_config import RunConfig
from apr_jax.tasks.base import answer_key_value
from apr_jax.tasks.registry import get_task
from apr_jax.width_stats import difficulty_quartiles, width_line, width_summary

ACCELERATOR_HINT = ("for real accuracy train on an accelerator: configs/countdown4_apr_h200.py "
                    "(one GPU) or configs/countdown4_apr_228m.py (TPU pod slice)")
SWEEP_KINDS = ("children", "budget", "tokens")
ADAPTIVE = "adaptive"  # --sweep=children=adaptive,...: asked with no prefix, the model picks its width
WIDTH_PLOT = "width_vs_difficulty.png"


@dataclasses.dataclass
class Loaded:
    config: RunConfig
    tokenizer: Any
    model: nnx.Module
    step: int
    source: str


def load_for_inference(path: str) -> Loaded:
    """Load the model, config and tokenizer from a workdir (newest readable
    checkpoint) or from one checkpoint folder ``WORKDIR/checkpoints/STEP``."""
    from apr_jax.data.tokenizer import load_tokenizer
    from apr_jax.model.transformer import Transformer

    path = os.path.abspath(path)
    workdir, wanted = split_checkpoint_path(path)
    if not os.path.exists(workdir):
        raise CheckpointError(f"checkpoint or workdir not found: {workdir}")
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise CheckpointError(f"{path} holds no checkpoints (expected {workdir}/checkpoints/STEP)")
    checkpointer = Checkpointer(workdir, read_only=True, async_save=False)
    steps = checkpointer.steps()
    if wanted is not None and wanted not in steps:
        raise CheckpointError(f"checkpoint step {wanted} not found in {workdir}/checkpoints "
                              f"(have {steps})")
    candidates = [wanted] if wanted is not None else list(reversed(steps))
    if not candidates:
        raise CheckpointError(f"no checkpoint in {workdir}/checkpoints")
    import orbax.checkpoint as ocp
    for step in candidates:
        try:
            meta = checkpointer.restore_meta(step)
            config = RunConfig.from_config(meta["config"])
            tokenizer = load_tokenizer(data=decode_bytes(meta["tokenizer_b64"]))
            model_cfg = config.model_for(tokenizer.vocab_size)
            abstract = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))
            graphdef, state = nnx.split(abstract)
            # An explicit target sharding lets orbax read checkpoints written
            # by any topology (e.g. a multi-host slice) into this process.
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                  nnx.to_pure_dict(state))
            params = checkpointer.manager.restore(
                step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
            nnx.replace_by_pure_dict(state, params)
            return Loaded(config, tokenizer, nnx.merge(graphdef, state), step,
                          os.path.join(checkpointer.directory, str(step)))
        except Exception as e:
            if wanted is not None or step == candidates[-1]:
                raise CheckpointError(
                    f"checkpoint {os.path.join(checkpointer.directory, str(step))} cannot be loaded "
                    f"with its own config and tokenizer ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
            print(f"warning: checkpoint step {step} is unreadable ({type(e).__name__}); "
                  f"trying the previous one", file=sys.stderr)
    raise CheckpointError(f"no readable checkpoint in {workdir}")


def engine_config(config: RunConfig, *, samples: int = 1,
                  temperature: float | None = None, top_p: float | None = None,
                  tokens_per_thread: int | None = None, max_context: int | None = None
                  ) -> EngineConfig:
    """The engine's limits and sampling from a config's ``eval`` section, with
    this evaluation's overrides. ``max_context`` caps every thread's context
    (prompt, written and join tokens; default the model's ``max_len``): a
    thread that reaches it stops with ``context_limit``."""
    limit = config.model.max_len if max_context is None else max_context
    if not 4 <= limit <= config.model.max_len:
        raise ValueError(f"context limit {limit} must be between 4 and the model's "
                         f"config.model.max_len={config.model.max_len}")
    base = EngineConfig.from_eval_config(config.eval, limit)
    sampling = SamplingConfig(base.sampling.temperature if temperature is None else temperature,
                              base.sampling.top_p if top_p is None else top_p)
    return dataclasses.replace(base, samples_per_problem=samples, sampling=sampling,
                               tokens_per_thread=tokens_per_thread or base.tokens_per_thread)


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


def evaluate_problems(model: Any, tokenizer: Any, config: RunConfig,
                      problems: Sequence[Any], *, samples: int = 1,
                      temperature: float | None = None, top_p: float | None = None,
                      prefix: str = "", tokens_per_thread: int | None = None,
                      max_context: int | None = None, seed: int = 0, mesh: jax.sharding.Mesh | None = None
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
    cfg = engine_config(config, samples=samples, temperature=temperature, top_p=top_p,
                        tokens_per_thread=tokens_per_thread, max_context=max_context)
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
            shape = spawn_measures([t.parent for t in result.threads],
                                   [t.rounds for t in result.threads])
            per_sample.append({
                "solved": score.ok, "reason": score.reason,
                task.answer_key: score.answer if score.answer is not None else [],
                "well_formed": result.threads[0].stop == "eos" and score.answer is not None,
                "total_tokens": result.written_tokens,
                "sequential_tokens": result.sequential_tokens,
                "num_threads": result.num_threads, "max_context": result.max_context_used,
                "children_per_spawn": result.children_per_spawn, **shape,
                "limits_hit": {k2: v for k2, v in result.limits_hit.items() if v},
                "tree": tree.to_dict()})
        correct = [s["solved"] for s in per_sample]
        first = per_sample[0]
        as_dict = problem.to_dict()
        rows.append({
            **as_dict,
            "solved": first["solved"], task.answer_key: first[task.answer_key],
            "reason": first["reason"], "total_tokens": first["total_tokens"],
            "sequential_tokens": first["sequential_tokens"], "num_threads": first["num_threads"],
            "max_context": first["max_context"], "limits_hit": first["limits_hit"],
            "children": first["children"], "spawn_rounds": first["spawn_rounds"],
            "depth": first["depth"], "num_inputs": input_count(as_dict),
            "difficulty": problem_difficulty(task, problem),
            "solve_rate": float(np.mean(correct)),
            "pass_at_k": pass_at_k(samples, sum(correct), samples),
            "cons_at_k": cons_at_k([answer_key_value(s[task.answer_key]) for s in per_sample],
                                   correct),
            "tree": first["tree"],
            "samples": per_sample[1:],
            "_all": per_sample})
    flat = [s for r in rows for s in r["_all"]]
    spawns = [c for s in flat for c in s["children_per_spawn"]]
    total = sum(s["total_tokens"] for s in flat)
    summary = {
        "problems": len(problems), "samples": samples,
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
        "wall_s": wall, "tokens_per_s": total / max(wall, 1e-9), "compile_s": output.compile_s,
        "mean_children": float(np.mean([s["children"] for s in flat])),
        "mean_spawn_rounds": float(np.mean([s["spawn_rounds"] for s in flat])),
        "max_depth": max(s["depth"] for s in flat),
    }
    summary.update(width_summary(
        [r["difficulty"] for r in rows],
        [float(np.mean([s["children"] for s in r["_all"]])) for r in rows],
        [r["num_inputs"] for r in rows],
        [float(np.mean([s["children"] > 0 for s in r["_all"]])) for r in rows]))
    for r in rows:
        r.pop("_all")
    return rows, summary


TABLE_COLUMNS = (("setting", "{}"), ("accuracy", "{:.1%}"), ("pass@K", "{:.1%}"),
                 ("cons@K", "{:.1%}"), ("well_formed", "{:.1%}"), ("tokens", "{:.0f}"),
                 ("max_tokens", "{:d}"), ("sequential", "{:.0f}"), ("children", "{:.2f}"),
                 ("spawned", "{:.0%}"), ("max_context", "{:d}"), ("wall_s", "{:.1f}"),
                 ("tokens/s", "{:.0f}"), ("compile_s", "{:.1f}"))


def format_table(results: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A fixed-width table, one row per (setting, summary), then the
    ``width_lines`` of the settings whose difficulty is known."""
    lines = []
    header = [name for name, _ in TABLE_COLUMNS]
    rows = []
    for setting, s in results:
        k = s["samples"]
        values = [setting, s["accuracy"], s[f"pass@{k}"], s[f"cons@{k}"], s["well_formed"],
                  s["mean_total_tokens"], s["max_total_tokens"], s["mean_sequential_tokens"],
                  s["mean_children_per_spawn"], s["spawned"], s["max_context"], s["wall_s"],
                  s["tokens_per_s"], s["compile_s"]]
        rows.append([fmt.format(v) for (_, fmt), v in zip(TABLE_COLUMNS, values)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        lines.append("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    lines += width_lines(results)
    return "\n".join(lines)


def width_lines(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """``SETTING: width vs difficulty: spearman ...`` (``width_stats.width_line``)
    for each (setting, summary) whose problems' difficulty is known."""
    return [f"{setting}: {line}" for setting, s in results if (line := width_line(s))]


def children_by_quartile(rows: Sequence[dict[str, Any]]) -> tuple[list[list[float]], list[str]]:
    """Children spawned per problem (mean over its samples) grouped by
    difficulty quartile (``width_stats.difficulty_quartiles``), and a label
    per quartile with its difficulty range and size; rows of unknown
    difficulty left out."""
    known = [r for r in rows if r.get("difficulty") is not None]
    difficulty = [r["difficulty"] for r in known]
    children = [float(np.mean([s["children"] for s in [r, *r.get("samples", [])]])) for r in known]
    quartile = difficulty_quartiles(difficulty)
    groups, labels = [], []
    for q in range(4):
        inside = [i for i, k in enumerate(quartile) if k == q]
        groups.append([children[i] for i in inside])
        span = (f"{min(difficulty[i] for i in inside):.2f}-{max(difficulty[i] for i in inside):.2f}"
                if inside else "empty")
        labels.append(f"Q{q + 1}\n{span}\nn={len(inside)}")
    return groups, labels


def plot_width(panels: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: str) -> bool:
    """Children per problem against difficulty, as boxes per difficulty
    quartile, one panel per (setting, result rows); panels whose problems'
    difficulty is unknown are left out. Writes ``path`` and returns True,
    or writes nothing and returns False when no panel is left."""
    kept = [(label, rows) for label, rows in panels
            if any(r.get("difficulty") is not None for r in rows)]
    if not kept:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(kept))
    nrows = -(-len(kept) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.8 * nrows), squeeze=False,
                             sharey=True)
    for ax, (label, rows) in zip(axes.flat, kept):
        groups, labels = children_by_quartile(rows)
        filled = [q for q, g in enumerate(groups) if g]
        ax.boxplot([groups[q] for q in filled], positions=[q + 1 for q in filled], widths=0.6)
        ax.set_xticks(range(1, 5), labels, fontsize=7)
        ax.set_xlim(0.4, 4.6)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("difficulty quartile (easy to hard)", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[:, 0]:
        ax.set_ylabel("children spawned per problem")
    for ax in list(axes.flat)[len(kept):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def paired_comparisons(solve_rates: dict[str, dict[Any, float]]) -> list[str]:
    """One line per later run against the first, on the problems both were
    evaluated on: how many each solved more often (with one sample: solved
    and the other did not), and the sign test's p. ``solve_rates[label]``
    maps a problem to the share of its samples that run solved."""
    labels = list(solve_rates)
    lines = []
    for other in labels[1:]:
        first, second = solve_rates[labels[0]], solve_rates[other]
        shared = [key for key in first if key in second]
        if not shared:
            lines.append(f"{other} vs {labels[0]}: no problems in common, not compared")
            continue
        more_other = sum(second[k] > first[k] for k in shared)
        more_first = sum(first[k] > second[k] for k in shared)
        single = all(r in (0.0, 1.0) for k in shared for r in (first[k], second[k]))
        what = ("solved only by", "only by") if single else ("solved more often by", "more often by")
        lines.append(f"{other} vs {labels[0]}: {more_other} problems {what[0]} {other}, "
                     f"{more_first} {what[1]} {labels[0]} (sign test p = "
                     f"{sign_test_p(more_other, more_first):.2f})")
    return lines


def parse_sweep(spec: str) -> tuple[str, list[int | str]]:
    """``KIND=V1,V2,...``: positive integers, and for ``children`` also
    ``adaptive`` (no prefix: the model chooses its width)."""
    kind, _, values = spec.partition("=")
    if kind not in SWEEP_KINDS or not values:
        raise ValueError(f"--sweep={spec!r}: expected KIND=V1,V2,... with KIND one of {SWEEP_KINDS}")
    parsed: list[int | str] = []
    for v in values.split(","):
        if kind == "children" and v == ADAPTIVE:
            parsed.append(ADAPTIVE)
            continue
        try:
            parsed.append(int(v))
        except ValueError:
            raise ValueError(f"--sweep={spec!r}: values must be integers"
                             + (f" or {ADAPTIVE}" if kind == "children" else "")) from None
    if any(isinstance(v, int) and v <= 0 for v in parsed):
        raise ValueError(f"--sweep={spec!r}: values must be positive")
    return kind, parsed


def default_prefix(config: RunConfig, tokens_per_thread: int) -> str:
    """What a conditioned model is asked when no sweep chooses: APR its
    ``eval.max_children``, SoS+ the largest budget its thread's tokens hold."""
    if not config.trace.condition:
        return ""
    if config.trace.kind == "apr":
        return conditioning_prefix("apr", config.eval.max_children)
    return conditioning_prefix("sosp", budget_within(tokens_per_thread))


def sweep_settings(kind: str | None, values: Sequence[int | str], config: RunConfig
                   ) -> list[tuple[str, dict[str, Any]]]:
    """(label, evaluate_problems kwargs) per sweep point. A run of the other
    trace kind (children for SoS+, budget for APR) gets its default setting
    alone: a reference point beside the swept run."""
    default = [("default", {"prefix": default_prefix(config, config.eval.tokens_per_thread)})]
    if kind is None:
        return default
    if kind == "tokens":
        return [(f"tokens={v}", {"tokens_per_thread": v, "prefix": default_prefix(config, v)})
                for v in values]
    wanted = {"children": "apr", "budget": "sosp"}[kind]
    if config.trace.kind != wanted:
        return default
    if not config.trace.condition:
        raise ValueError(f"--sweep={kind}=... needs a model trained with config.trace.kind={wanted} "
                         f"and config.trace.condition=true")
    return [(f"{kind}={v}", {"prefix": "" if v == ADAPTIVE else conditioning_prefix(wanted, v)})
            for v in values]


def setting_mark(setting: str) -> str:
    """A sweep point's short name in plots: ``c2``, ``b128``, ``t64``,
    ``adaptive``, ``default``."""
    kind, _, value = setting.partition("=")
    if not value or value == ADAPTIVE:
        return value or kind
    return {"children": "c", "budget": "b", "tokens": "t"}.get(kind, kind) + value


def plot_sweep(series: dict[str, list[tuple[str, dict[str, Any]]]], path: str) -> None:
    """Accuracy against total and against sequential tokens, one point per
    evaluated setting, named by ``setting_mark``: one line per model through
    its fixed settings; a model's ``adaptive`` setting (no prefix) and a lone
    point are drawn as stars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for n, (label, points) in enumerate(series.items()):
        color = f"C{n % 10}"
        fixed = [(st, p) for st, p in points if not st.endswith("=" + ADAPTIVE)]
        stars = [(st, p) for st, p in points if st.endswith("=" + ADAPTIVE)]
        if len(fixed) == 1:
            stars, fixed = fixed + stars, []
        for ax, key in zip(axes, ("mean_total_tokens", "mean_sequential_tokens")):
            if fixed:
                ax.plot([p[key] for _, p in fixed], [100 * p["accuracy"] for _, p in fixed], "o-",
                        color=color, label=label)
            for st, p in stars:
                ax.plot([p[key]], [100 * p["accuracy"]], "*", markersize=12, color=color,
                        label=f"{label} {setting_mark(st)}")
            for st, p in points:
                ax.annotate(setting_mark(st), (p[key], 100 * p["accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    for ax, name in zip(axes, ("total tokens per problem", "sequential tokens (critical path)")):
        ax.set_xlabel(name)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SPLIT_CHOICES = ("train", "validation", "test", "unseen")  # unseen: in no split of the dataset
COMMAND = Command(
    "python -m apr_jax.evaluate",
    "Decode held-out problems with the spawn/join engine and score them with the task's verifier.",
    flags=(
        Flag("workdir", "trained runs, comma-separated: the newest checkpoint of each", value="DIRS"),
        Flag("checkpoint", "one checkpoint (DIR/checkpoints/STEP), besides or instead of --workdir",
             value="DIR"),
        Flag("problems", "a JSONL of problems to decode instead of --split", value="FILE"),
        Flag("split", f"comma-separated splits: {', '.join(SPLIT_CHOICES)} (default test)",
             value="SPLITS"),
        Flag("num", "problems from each split, or the first N of --problems (default 100)", value="N"),
        Flag("samples", "samples per problem, for pass@K and cons@K (default 1)", value="K"),
        Flag("temperature", "sampling temperature (default config.eval.temperature)", value="T"),
        Flag("top_p", "nucleus sampling threshold (default config.eval.top_p)", value="P"),
        Flag("out", "write one JSON line per problem and setting, thread tree included", value="FILE"),
        Flag("sweep", f"KIND=V1,V2,... with KIND one of {', '.join(SWEEP_KINDS)}: one setting "
             "per value", value="SPEC"),
        Flag("plot", "the sweep's PNG (default OUT.png with --out, else sweep.png)", value="PNG"),
        Flag("width_plot", "children per problem by difficulty quartile, when the task knows "
             f"difficulty (default OUT_width.png with --out, else WORKDIR/{WIDTH_PLOT})",
             value="PNG"),
        Flag("show", "print the thread trees of the first N problems (default 0)", value="N"),
        Flag("seed", "sampling seed (default 0)", value="N"),
    ),
    overrides="set one config.eval.* key (the rest comes from the checkpoint), "
              "e.g. --config.eval.max_children=2",
    examples=("python -m apr_jax.evaluate --workdir=runs/default --split=test --num=200",
              "python -m apr_jax.evaluate --workdir=runs/apr,runs/sosp --sweep=tokens=64,128,256",
              "python -m apr_jax.evaluate --workdir=runs/apr_c,runs/sosp "
              "--sweep=children=adaptive,1,2,3,4"),
)


def with_eval_overrides(config: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """``config`` with ``config.eval.*=value`` overrides applied (the rest of a
    checkpoint's config is what it was trained with). An ``eval`` key that
    the checkpoint's config predates takes its default and can be set too."""
    if not overrides:
        return config
    written = config.to_dict()
    written["eval"] = {**dataclasses.asdict(config.eval), **(written.get("eval") or {})}
    written = ml_collections.ConfigDict(written)
    for item in overrides:
        key, raw = item.split("=", 1)
        key = key.removeprefix("config.")
        if not key.startswith("eval."):
            raise ValueError(f"--config.{key}: only config.eval.* can change at evaluation; "
                             f"the rest comes from the checkpoint")
        config_lib.apply_override(written, key, raw)
    return RunConfig.from_config(written)


def problems_for(flags: dict[str, str], config: RunConfig, num: int) -> list[Any]:
    """``--problems`` (every problem, or its first ``--num``), or the first ``num``
    of each split named in ``--split`` (comma-separated, concatenated in that order)."""
    task = get_task(config)
    if "problems" in flags:
        problems = read_jsonl(flags["problems"], task.problem_type.from_dict)
        return problems[:num] if "num" in flags else problems
    from apr_jax.data.build import build_dataset, make_problem_source
    splits = flags.get("split", "test").split(",")
    for split in splits:
        if split not in SPLIT_CHOICES:
            raise ValueError(f"--split={split!r} is not one of {', '.join(SPLIT_CHOICES)}")
    info = build_dataset(config, log=None)
    problems = []
    for split in splits:
        if split != "unseen":
            problems += make_problem_source(info, split)[:num]
            continue
        seen = {p.key for s in info.problem_paths for p in make_problem_source(info, s)}
        if not hasattr(task, "unseen"):
            raise ValueError(f"--split=unseen: the {task.name} task cannot draw problems outside "
                             f"its files")
        unseen = task.unseen(num, seen)
        if not unseen:
            raise ValueError("--split=unseen: every solvable problem in the task's ranges "
                             "is in a split already")
        problems += unseen
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int | None:
        flags, overrides = config_lib.parse_command_line(argv, COMMAND)
        sources = [s for s in flags.get("workdir", "").split(",") if s]
        if "checkpoint" in flags:
            sources.append(flags["checkpoint"])
        if not sources:
            raise ValueError("give --workdir=DIR or --checkpoint=DIR/checkpoints/STEP")
        num = config_lib.int_flag(flags, "num", 100, zero_ok=False)
        samples = config_lib.int_flag(flags, "samples", 1, zero_ok=False)
        show, seed = config_lib.int_flag(flags, "show", 0), config_lib.int_flag(flags, "seed", 0)
        temperature = config_lib.float_flag(flags, "temperature")
        top_p = config_lib.float_flag(flags, "top_p")
        sweep_kind, sweep_values = parse_sweep(flags["sweep"]) if "sweep" in flags else (None, [])
        out = open(flags["out"], "w") if "out" in flags else None
        table, series, solve_rates, panels = [], {}, {}, []
        width_plot = flags.get("width_plot") or (
            os.path.splitext(flags["out"])[0] + "_width.png" if "out" in flags else None)
        for source in sources:
            loaded = load_for_inference(source)
            config = with_eval_overrides(loaded.config, overrides)
            problems = problems_for(flags, config, num)
            run_name = os.path.basename(os.path.dirname(os.path.dirname(loaded.source)))
            label = f"{run_name}@{loaded.step}"  # the workdir's name: runs of one config differ
            print(f"evaluating {loaded.source} ({config.trace.kind}) on {len(problems)} problems",
                  flush=True)
            width_plot = width_plot or os.path.join(
                os.path.dirname(os.path.dirname(loaded.source)), WIDTH_PLOT)
            settings = sweep_settings(sweep_kind, sweep_values, config)
            if sweep_kind is not None and settings[0][0] == "default":
                print(f"  {label} is {config.trace.kind}: --sweep={sweep_kind} does not apply, "
                      f"evaluated once at its default setting", flush=True)
            for setting, kwargs in settings:
                rows, summary = evaluate_problems(
                    loaded.model, loaded.tokenizer, config, problems, samples=samples,
                    temperature=temperature, top_p=top_p, seed=seed, **kwargs)
                table.append((f"{label} {setting}", summary))
                if sweep_kind is None:
                    solve_rates[label] = {p: r["solve_rate"] for p, r in zip(problems, rows)}
                series.setdefault(label, []).append((setting, summary))
                panels.append((f"{label} {setting}", rows))
                if out:
                    for row in rows:
                        out.write(json.dumps({"model": label, "setting": setting, **row}) + "\n")
                for row in rows[:show]:
                    from apr_jax.threads import ThreadTree
                    print(ThreadTree.from_dict(row["tree"]).render())
                    print()
        print(format_table(table))
        for line in paired_comparisons(solve_rates):
            print(line)
        if out:
            out.close()
        if sweep_kind is not None:
            plot = flags.get("plot") or (os.path.splitext(flags["out"])[0] + ".png" if "out" in flags
                                         else "sweep.png")
            plot_sweep(series, plot)
            print(f"plot: {plot}")
        if plot_width(panels, width_plot):
            print(f"width plot: {width_plot}")

    return run_command(body, usage=(ValueError, CheckpointError, OSError))


if __name__ == "__main__":
    sys.exit(main())
