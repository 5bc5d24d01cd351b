"""APR in either context family against SoS+, trained alike: training (or
reusing) the runs, and the measurements ``python -m apr_jax.compare``
reports: accuracy against the context window, against total and sequential
tokens per child count (APR) or budget (SoS+), majority vote, and how often
a conditioned model obeys its prefix (``apr_jax.evaluation.compare_report``
writes the report)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

from apr_jax.config.checks import ConfigError
from apr_jax.config.identity import identity_diff
from apr_jax.config.loading import load_run_config
from apr_jax.config.sections import RunConfig
from apr_jax.protocol import approx_tokens, conditioning_prefix
from apr_jax.tasks.registry import get_task
from apr_jax.threads import ThreadTree
from apr_jax.training.loop import TrainingError
from apr_jax.training.run import run_training


@dataclasses.dataclass
class Point:
    """One evaluated setting of one model."""

    model: str  # an Arm label: "APR" | "APR inherit" | "SoS+"
    sweep: str  # context | children | adaptive | budget | vote
    value: int  # the sweep's setting (context, children, children cap, budget or samples)
    summary: dict[str, Any]  # evaluate_problems' summary
    obeyed: float | None = None  # share of samples meeting a conditioned request
    solve_rates: dict[Any, float] = dataclasses.field(default_factory=dict, repr=False)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list, repr=False)  # per problem
    votes: list[dict[str, float]] = dataclasses.field(default_factory=list)  # cons@j/pass@j, j = 1..k

    @property
    def wall_per_problem(self) -> float:
        return self.summary["wall_s"] / self.summary["problems"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "sweep": self.sweep,
            "value": self.value,
            "summary": self.summary,
            "obeyed": self.obeyed,
            "wall_per_problem_s": self.wall_per_problem,
            "votes": self.votes,
        }


def int_list(flags: dict[str, str], name: str, default: str) -> list[int]:
    raw = flags.get(name, default)
    try:
        values = [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{name}={raw!r}: expected integers such as 1,2,4") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"--{name}={raw!r}: expected positive integers such as 1,2,4")
    return values


def training_tokens(config: RunConfig) -> int:
    """Token slots the run trains on: steps x batch x packed row length."""
    return int(config.train.steps * config.train.batch_size * config.data.seq_len)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One side of the comparison: its run folder under the workdir, its
    label in the report, and the SFT config it must be."""

    key: str  # run folder and --arms name
    label: str  # Point.model
    kind: str  # trace.kind
    context: str  # data.context


ARMS = (
    Arm("apr", "APR", "apr", "message"),
    Arm("inherit", "APR inherit", "apr", "inherit"),
    Arm("sosp", "SoS+", "sosp", "message"),
)
PARALLEL_LABELS = tuple(a.label for a in ARMS if a.kind == "apr")


def arms_named(raw: str) -> list[Arm]:
    """The arms of ``--arms`` (comma-separated keys), in ``ARMS`` order:
    SoS+ and at least one APR arm."""
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    known = {a.key: a for a in ARMS}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ConfigError(f"--arms={raw!r}: {unknown[0]!r} is not one of {', '.join(known)}")
    if "sosp" not in keys or not {"apr", "inherit"} & set(keys):
        raise ConfigError(f"--arms={raw!r}: the comparison needs sosp and at least one of apr, inherit")
    return [a for a in ARMS if a.key in keys]


def load_arms(paths: dict[str, str], overrides: Sequence[str]) -> dict[str, RunConfig]:
    """Each arm's config (``paths`` maps an arm key to its file) with the
    shared overrides; every arm must be the SFT config its ``Arm`` names, and
    all must train the same task on the same token budget."""
    configs = {}
    for arm in ARMS:
        if arm.key not in paths:
            continue
        path = paths[arm.key]
        config = load_run_config(path, overrides)
        if config.mode != "sft" or config.trace.kind != arm.kind or config.data.context != arm.context:
            raise ConfigError(
                f"{path}: expected an SFT config with trace.kind={arm.kind} data.context={arm.context}, got "
                f"mode={config.mode} trace.kind={config.trace.kind} data.context={config.data.context}"
            )
        configs[arm.key] = config
    (first_key, first), *rest = configs.items()
    for key, config in rest:
        if config.task.as_dict() != first.task.as_dict():
            raise ConfigError(
                f"{paths[first_key]} and {paths[key]} train different tasks; the comparison needs the same problems"
            )
        if training_tokens(config) != training_tokens(first):
            raise ConfigError(
                f"unequal training budgets: {first_key} {training_tokens(first):,} tokens, {key} "
                f"{training_tokens(config):,} (config.train.steps x batch_size x data.seq_len)"
            )
    return configs


def finished(run_dir: str, config: RunConfig) -> bool:
    """Whether ``run_dir`` holds a run that trained all its steps (or stopped
    at its time limit and wrote its held-out results)."""
    if os.path.exists(os.path.join(run_dir, "results_test.jsonl")):
        return True
    if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
        return False
    from apr_jax.runtime.checkpoint import Checkpointer

    steps = Checkpointer(run_dir, read_only=True, async_save=False).steps()
    return bool(steps) and steps[-1] >= config.train.steps


def train_or_reuse(config: RunConfig, run_dir: str) -> None:
    """Train ``run_dir`` unless it holds this config's finished run; resumes
    an interrupted one."""
    saved_path = os.path.join(run_dir, "config.json")
    if os.path.exists(saved_path) and finished(run_dir, config):
        with open(saved_path) as f:
            diffs = identity_diff(json.load(f), config)
        if diffs:
            raise TrainingError(
                f"{run_dir} holds a run of a different config: {'; '.join(diffs[:3])}; use another --workdir"
            )
        print(f"reusing the finished run in {run_dir}", flush=True)
        return
    print(f"training {config.name} in {run_dir}", flush=True)
    run_training(config, run_dir)


def obedience(sweep: str, value: int, rows: Sequence[dict[str, Any]]) -> float:
    """Share of samples that did what a conditioned prompt asked: exactly
    ``value`` child threads (children), or at most ``value`` tokens written as
    the generators count them (``approx_tokens``; budget)."""
    samples = [s for r in rows for s in [r, *r["samples"]]]
    if sweep == "children":
        ok = [s["num_threads"] - 1 == value for s in samples]
    else:
        ok = [approx_tokens(ThreadTree.from_dict(s["tree"]).threads[0].written_text) <= value for s in samples]
    return sum(ok) / len(ok)


def vote_curve(rows: Sequence[dict[str, Any]], k: int) -> list[dict[str, float]]:
    """cons@j and pass@j for j = 1..k from the first j samples of each problem."""
    from apr_jax.decode.metrics import cons_at_k, pass_at_k

    curve = []
    for j in range(1, k + 1):
        cons, passed = [], []
        for r in rows:
            samples = [r, *r["samples"]][:j]
            correct = [bool(s["solved"]) for s in samples]
            cons.append(cons_at_k([tuple(s["operations"]) if s["operations"] else None for s in samples], correct))
            passed.append(pass_at_k(j, sum(correct), j))
        curve.append({"k": j, "cons": sum(cons) / len(rows), "pass": sum(passed) / len(rows)})
    return curve


class Measurer:
    """Evaluates one loaded run under many settings. Wall-clock figures are
    the engine's decoding time: compilation is timed apart (``compile_s``)."""

    def __init__(self, label: str, loaded: Any, problems: Sequence[Any], seed: int):
        self.label, self.loaded, self.problems, self.seed = label, loaded, list(problems), seed
        self.config = loaded.config

    def measure(
        self,
        sweep: str,
        value: int,
        *,
        eval_overrides: dict[str, int] | None = None,
        prefix: str | None = None,
        obey: bool = False,
        **kwargs: Any,
    ) -> Point:
        from apr_jax.evaluation.scoring import evaluate_problems
        from apr_jax.evaluation.sweeps import default_prefix

        config = self.config.replace(eval=dataclasses.replace(self.config.eval, **(eval_overrides or {})))
        if prefix is None:
            prefix = default_prefix(config, kwargs.get("tokens_per_thread") or config.eval.tokens_per_thread)
        args = dict(prefix=prefix, seed=self.seed, **kwargs)
        rows, summary = evaluate_problems(self.loaded.model, self.loaded.tokenizer, config, self.problems, **args)
        point = Point(
            self.label,
            sweep,
            value,
            summary,
            obeyed=obedience(sweep, value, rows) if obey else None,
            solve_rates={p: r["solve_rate"] for p, r in zip(self.problems, rows)},
            rows=rows,
        )
        if kwargs.get("samples", 1) > 1:
            point.votes = vote_curve(rows, kwargs["samples"])
        print(
            f"  {self.label} {sweep}={value}: accuracy {summary['accuracy']:.1%}, "
            f"{summary['mean_total_tokens']:.0f} tokens, {point.wall_per_problem * 1e3:.0f} ms/problem"
            + (f", obeyed {point.obeyed:.0%}" if point.obeyed is not None else ""),
            flush=True,
        )
        return point


def context_sweep(m: Measurer, contexts: Sequence[int]) -> list[Point]:
    """Every thread limited to ``W`` tokens of context (and at most ``W`` written)."""
    return [m.measure("context", w, max_context=w, tokens_per_thread=w) for w in contexts]


def children_sweep(m: Measurer, children: Sequence[int]) -> list[Point]:
    """APR at each child count: asked by prefix when trained conditioned,
    otherwise capped by the engine's ``max_children``."""
    points = []
    for n in children:
        if m.config.trace.condition:
            most = max(n, m.config.eval.max_children)
            points.append(
                m.measure(
                    "children",
                    n,
                    eval_overrides={"max_children": most},
                    prefix=conditioning_prefix("apr", n),
                    obey=True,
                )
            )
        else:
            points.append(m.measure("children", n, eval_overrides={"max_children": n}))
    return points


def adaptive_point(m: Measurer) -> Point:
    """APR asked with no prefix: the model decides how many children to spawn
    (the engine allows up to ``eval.max_children``, the point's value)."""
    return m.measure("adaptive", m.config.eval.max_children, prefix="")


def budget_sweep(m: Measurer, budgets: Sequence[int]) -> list[Point]:
    """SoS+ at each token budget: asked by prefix when trained conditioned
    (the thread may write up to its context), otherwise cut at the budget."""
    if m.config.trace.condition:
        room = m.config.model.max_len
        return [
            m.measure("budget", b, prefix=conditioning_prefix("sosp", b), obey=True, tokens_per_thread=room)
            for b in budgets
        ]
    return [m.measure("budget", b, tokens_per_thread=b) for b in budgets]


def trace_lengths(config: RunConfig, tokenizer: Any, problems: Sequence[Any]) -> list[int]:
    """The longest thread context (tokens) of each problem's training trace:
    its longest sequence in the message family, its deepest position in the
    inherit family (a child's context holds its parent's prefix)."""
    from apr_jax.data.tree_sequence import tree_sequence

    trees, _ = get_task(config).generate_trees(list(problems), num_workers=1)
    if config.data.context == "inherit":
        join = config.data.join
        return [
            int(tree_sequence(t.with_context("inherit", join), tokenizer, join).positions_T.max()) + 1 for t in trees
        ]
    return [max(len(s.tokens) for s in tree.to_sequences(tokenizer)) for tree in trees]
