"""`python -m apr_jax.compare`: APR against SoS+ (one sequential search thread)
trained on the same problems with the same model and training tokens, then
decoded on the same held-out problems at equal context, compute and latency.

    python -m apr_jax.compare --workdir=runs/compare
    python -m apr_jax.compare --workdir=runs/compare --apr_config=configs/countdown4_apr_h200.py \\
        --sosp_config=configs/countdown4_sosp_h200.py --contexts=256,512,1024 --num=1000
    python -m apr_jax.compare --workdir=runs/compare --config.train.steps=400   # both runs

It trains ``WORKDIR/apr`` and ``WORKDIR/sosp`` with ``python -m apr_jax.train``'s
machinery (a finished run is reused; an interrupted one resumes; ``--config.*``
overrides apply to both), then measures on the APR config's first ``--num``
test problems:

- accuracy against the per-thread context window (``--contexts``): every
  thread of either model stops with ``context_limit`` at that many tokens (a
  conditioned SoS+ run is asked for the largest budget that fits the window,
  APR for ``eval.max_children`` children);
- accuracy against total tokens, sequential (critical-path) tokens and
  wall-clock per problem: APR at each child count (``--children``), SoS+ at
  each token budget (``--budgets``) and SoS+ with majority vote and pass@k over
  ``--samples`` samples at ``--temperature``. Models trained with
  ``config.trace.condition`` are asked with prefixes (``c<n>`` / ``b<n>``) and
  the table reports how often they obey; others are held to the count or
  budget by the engine's limits. APR is also asked with no prefix
  (``adaptive``: it decides how many children to spawn, up to
  ``eval.max_children``), one starred point in those figures;
- how APR's width follows the problems' difficulty (``Task.difficulty``):
  the Spearman correlation of children spawned with difficulty and the spawn
  rate and children per difficulty quartile of every APR setting
  (``apr_jax.width_stats``), in ``compare.md`` and as boxes in
  ``width_vs_difficulty.png``.

Writes ``context.png``, ``total_tokens.png``, ``sequential_tokens.png``,
``wall_clock.png``, ``width_vs_difficulty.png`` (when the task knows
difficulty), ``compare.md`` (table, paired sign tests, the share of SoS+
traces longer than each context, width against difficulty),
``compare.json`` and one JSON line per problem and setting (thread trees
included) in ``results.jsonl`` under the workdir.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Sequence

from apr_jax import config as config_lib
from apr_jax.checkpoint import CheckpointError
from apr_jax.cli import Command, Flag, run_command
from apr_jax.countdown.problems import Problem
from apr_jax.countdown.render import approx_tokens, conditioning_prefix
from apr_jax.countdown.traces import make_trace
from apr_jax.loop import TrainingError
from apr_jax.run_config import RunConfig, load_run_config
from apr_jax.threads import ThreadTree

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
COMMAND = Command(
    "python -m apr_jax.compare",
    "Train APR and SoS+ on the same problems and budget, then compare them at equal context, "
    "compute and latency.",
    flags=(
        Flag("workdir", "holds the apr/ and sosp/ runs and the report (default runs/compare)",
             value="DIR"),
        Flag("apr_config", "the APR config (default configs/compare_apr.py)", value="FILE"),
        Flag("sosp_config", "the SoS+ config (default configs/compare_sosp.py)", value="FILE"),
        Flag("num", "held-out test problems (default the APR config's eval.num_problems)", value="N"),
        Flag("contexts", "per-thread context windows, comma-separated (default 1/2, 3/4 and all "
             "of model.max_len)", value="N,N,..."),
        Flag("children", "APR child counts, comma-separated (default 1 to eval.max_children)",
             value="N,N,..."),
        Flag("budgets", "SoS+ token budgets, comma-separated (default 64 to 1024, up to twice "
             "model.max_len)", value="N,N,..."),
        Flag("samples", "SoS+ samples per problem for majority vote and pass@k (default 4)",
             value="K"),
        Flag("temperature", "sampling temperature of those samples (default 0.7)", value="T"),
        Flag("seed", "sampling seed (default 0)", value="N"),
    ),
    overrides="set one config key in both runs, e.g. --config.train.steps=400",
    examples=("python -m apr_jax.compare --workdir=runs/compare --config.train.steps=400",),
)
RUNS = (("apr", "APR"), ("sosp", "SoS+"))


@dataclasses.dataclass
class Point:
    """One evaluated setting of one model."""

    model: str  # "APR" | "SoS+"
    sweep: str  # context | children | adaptive | budget | vote
    value: int  # the sweep's setting (context, children, children cap, budget or samples)
    summary: dict[str, Any]  # evaluate_problems' summary
    obeyed: float | None = None  # share of samples meeting a conditioned request
    solve_rates: dict[Problem, float] = dataclasses.field(default_factory=dict, repr=False)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list, repr=False)  # per problem
    votes: list[dict[str, float]] = dataclasses.field(default_factory=list)  # cons@j/pass@j, j = 1..k

    @property
    def wall_per_problem(self) -> float:
        return self.summary["wall_s"] / self.summary["problems"]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "sweep": self.sweep, "value": self.value,
                "summary": self.summary, "obeyed": self.obeyed,
                "wall_per_problem_s": self.wall_per_problem, "votes": self.votes}


def int_list(flags: dict[str, str], name: str, default: str) -> list[int]:
    raw = flags.get(name, default)
    try:
        values = [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise config_lib.ConfigError(f"--{name}={raw!r}: expected integers such as 1,2,4") from None
    if not values or any(v <= 0 for v in values):
        raise config_lib.ConfigError(f"--{name}={raw!r}: expected positive integers such as 1,2,4")
    return values


def training_tokens(config: RunConfig) -> int:
    """Token slots the run trains on: steps x batch x packed row length."""
    return int(config.train.steps * config.train.batch_size * config.data.seq_len)


def load_pair(apr_path: str, sosp_path: str, overrides: Sequence[str]
              ) -> tuple[RunConfig, RunConfig]:
    """Both configs with the shared overrides; they must train the same task
    on the same token budget, APR and SoS+ respectively."""
    apr = load_run_config(apr_path, overrides)
    sosp = load_run_config(sosp_path, overrides)
    for config, path, kind in ((apr, apr_path, "apr"), (sosp, sosp_path, "sosp")):
        if config.mode != "sft" or config.trace.kind != kind:
            raise config_lib.ConfigError(f"{path}: expected an SFT config with trace.kind={kind}, "
                                         f"got mode={config.mode} trace.kind={config.trace.kind}")
    if apr.task.as_dict() != sosp.task.as_dict():
        raise config_lib.ConfigError(f"{apr_path} and {sosp_path} train different tasks; "
                                     f"the comparison needs the same problems")
    if training_tokens(apr) != training_tokens(sosp):
        raise config_lib.ConfigError(
            f"unequal training budgets: APR {training_tokens(apr):,} tokens, SoS+ "
            f"{training_tokens(sosp):,} (config.train.steps x batch_size x data.seq_len)")
    return apr, sosp


def finished(run_dir: str, config: RunConfig) -> bool:
    """Whether ``run_dir`` holds a run that trained all its steps (or stopped
    at its time limit and wrote its held-out results)."""
    if os.path.exists(os.path.join(run_dir, "results_test.jsonl")):
        return True
    if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
        return False
    from apr_jax.checkpoint import Checkpointer
    steps = Checkpointer(run_dir, read_only=True, async_save=False).steps()
    return bool(steps) and steps[-1] >= config.train.steps


def train_or_reuse(config: RunConfig, run_dir: str) -> None:
    """Train ``run_dir`` unless it holds this config's finished run; resumes
    an interrupted one."""
    from apr_jax import train
    saved_path = os.path.join(run_dir, "config.json")
    if os.path.exists(saved_path) and finished(run_dir, config):
        with open(saved_path) as f:
            diffs = config_lib.identity_diff(json.load(f), config)
        if diffs:
            raise TrainingError(f"{run_dir} holds a run of a different config: "
                                f"{'; '.join(diffs[:3])}; use another --workdir")
        print(f"reusing the finished run in {run_dir}", flush=True)
        return
    print(f"training {config.name} in {run_dir}", flush=True)
    train.run(config, run_dir)


def obedience(sweep: str, value: int, rows: Sequence[dict[str, Any]]) -> float:
    """Share of samples that did what a conditioned prompt asked: exactly
    ``value`` child threads (children), or at most ``value`` tokens written as
    the generators count them (``approx_tokens``; budget)."""
    samples = [s for r in rows for s in [r, *r["samples"]]]
    if sweep == "children":
        ok = [s["num_threads"] - 1 == value for s in samples]
    else:
        ok = [approx_tokens(ThreadTree.from_dict(s["tree"]).threads[0].written_text) <= value
              for s in samples]
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
            cons.append(cons_at_k([tuple(s["operations"]) if s["operations"] else None
                                   for s in samples], correct))
            passed.append(pass_at_k(j, sum(correct), j))
        curve.append({"k": j, "cons": sum(cons) / len(rows), "pass": sum(passed) / len(rows)})
    return curve


class Measurer:
    """Evaluates one loaded run under many settings. Wall-clock figures are
    the engine's decoding time: compilation is timed apart (``compile_s``)."""

    def __init__(self, label: str, loaded: Any, problems: Sequence[Problem], seed: int):
        self.label, self.loaded, self.problems, self.seed = label, loaded, list(problems), seed
        self.config = loaded.config

    def measure(self, sweep: str, value: int, *, eval_overrides: dict[str, int] | None = None,
                prefix: str | None = None, obey: bool = False, **kwargs: Any) -> Point:
        from apr_jax.evaluate import default_prefix, evaluate_problems
        config = self.config.replace(eval=dataclasses.replace(self.config.eval, **(eval_overrides or {})))
        if prefix is None:
            prefix = default_prefix(config, kwargs.get("tokens_per_thread") or config.eval.tokens_per_thread)
        args = dict(prefix=prefix, seed=self.seed, **kwargs)
        rows, summary = evaluate_problems(self.loaded.model, self.loaded.tokenizer, config,
                                          self.problems, **args)
        point = Point(self.label, sweep, value, summary,
                      obeyed=obedience(sweep, value, rows) if obey else None,
                      solve_rates={p: r["solve_rate"] for p, r in zip(self.problems, rows)},
                      rows=rows)
        if kwargs.get("samples", 1) > 1:
            point.votes = vote_curve(rows, kwargs["samples"])
        print(f"  {self.label} {sweep}={value}: accuracy {summary['accuracy']:.1%}, "
              f"{summary['mean_total_tokens']:.0f} tokens, {point.wall_per_problem * 1e3:.0f} ms/problem"
              + (f", obeyed {point.obeyed:.0%}" if point.obeyed is not None else ""), flush=True)
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
            points.append(m.measure("children", n, eval_overrides={"max_children": most},
                                    prefix=conditioning_prefix("apr", n), obey=True))
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
        return [m.measure("budget", b, prefix=conditioning_prefix("sosp", b), obey=True,
                          tokens_per_thread=room) for b in budgets]
    return [m.measure("budget", b, tokens_per_thread=b) for b in budgets]


def trace_lengths(config: RunConfig, tokenizer: Any,
                  problems: Sequence[Problem]) -> list[int]:
    """The longest thread sequence (tokens) of each problem's training trace."""
    cfg = config.trace
    return [max(len(s.tokens) for s in make_trace(p, cfg).to_sequences(tokenizer))
            for p in problems]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int | None:
        from apr_jax.compare_report import write_report
        from apr_jax.evaluate import load_for_inference, problems_for
        flags, overrides = config_lib.parse_command_line(argv, COMMAND)
        workdir = flags.get("workdir", os.path.join("runs", "compare"))
        apr_cfg, sosp_cfg = load_pair(
            flags.get("apr_config", os.path.join(CONFIGS_DIR, "compare_apr.py")),
            flags.get("sosp_config", os.path.join(CONFIGS_DIR, "compare_sosp.py")), overrides)
        max_len = min(apr_cfg.model.max_len, sosp_cfg.model.max_len)
        contexts = int_list(flags, "contexts", ",".join(
            str(max_len * q // 4) for q in (2, 3, 4) if max_len * q // 4 >= 16))
        if max(contexts) > max_len:
            raise config_lib.ConfigError(f"--contexts: {max(contexts)} exceeds the models' "
                                         f"config.model.max_len={max_len}")
        children = int_list(flags, "children", ",".join(
            str(n) for n in range(1, apr_cfg.eval.max_children + 1)))
        budgets = int_list(flags, "budgets", ",".join(
            str(b) for b in (64, 128, 256, 512, 1024) if b <= 2 * max_len))
        samples = config_lib.int_flag(flags, "samples", 4, zero_ok=False)
        temperature = config_lib.float_flag(flags, "temperature")
        temperature = 0.7 if temperature is None else temperature
        seed = config_lib.int_flag(flags, "seed", 0)
        num = config_lib.int_flag(flags, "num", apr_cfg.eval.num_problems, zero_ok=False)

        loaded = {}
        for (key, label), config in zip(RUNS, (apr_cfg, sosp_cfg)):
            run_dir = os.path.join(workdir, key)
            train_or_reuse(config, run_dir)
            loaded[label] = load_for_inference(run_dir)
        problems = problems_for({"split": "test"}, apr_cfg, num)
        print(f"comparing on {len(problems)} held-out problems", flush=True)
        apr = Measurer("APR", loaded["APR"], problems, seed)
        sosp = Measurer("SoS+", loaded["SoS+"], problems, seed)
        points = context_sweep(apr, contexts) + context_sweep(sosp, contexts)
        points += children_sweep(apr, children) + [adaptive_point(apr)]
        points += budget_sweep(sosp, budgets)
        points.append(sosp.measure("vote", samples, samples=samples, temperature=temperature))
        lengths = {"SoS+": trace_lengths(sosp_cfg, loaded["SoS+"].tokenizer, problems),
                   "APR": trace_lengths(apr_cfg, loaded["APR"].tokenizer, problems)}
        written = write_report(workdir, points, lengths, contexts,
                               {"APR": apr_cfg, "SoS+": sosp_cfg},
                               {label: run.step for label, run in loaded.items()}, temperature)
        for path in written:
            print(f"wrote {path}")

    return run_command(body, usage=(ValueError,), failures=(CheckpointError, TrainingError, OSError))


if __name__ == "__main__":
    sys.exit(main())
