"""`python -m apr_jax.compare`: APR in the message family, APR in the
inherit family (a child sees its parent's context up to the fork; stitched
joins) and SoS+ (one sequential search thread), trained on the same problems
with the same model and training tokens, then decoded on the same held-out
problems at equal context, compute and latency.

    python -m apr_jax.compare --workdir=runs/compare
    python -m apr_jax.compare --workdir=runs/compare --arms=apr,sosp --apr_config=configs/countdown4_apr_h200.py \\
        --sosp_config=configs/countdown4_sosp_h200.py --contexts=256,512,1024 --num=1000
    python -m apr_jax.compare --workdir=runs/compare --config.train.steps=400   # every run

It trains ``WORKDIR/apr``, ``WORKDIR/inherit`` and ``WORKDIR/sosp`` (those
``--arms`` names) with ``python -m apr_jax.train``'s machinery (a finished
run is reused; an interrupted one resumes; ``--config.*`` overrides apply to
every run), then measures on the APR config's first ``--num`` test problems:

- accuracy against the per-thread context window (``--contexts``): every
  thread of every model stops with ``context_limit`` when its context (in
  the inherit family: its parent's prefix included) reaches that many
  tokens; each model is measured at the windows within its
  ``model.max_len``. A conditioned SoS+ run is asked for the largest budget
  that fits the window, APR for ``eval.max_children`` children;
- accuracy against total tokens, sequential (critical-path) tokens and
  wall-clock per problem: APR at each child count (``--children``), SoS+ at
  each token budget (``--budgets``) and SoS+ with majority vote and pass@k over
  ``--samples`` samples at ``--temperature``. Models trained with
  ``config.trace.condition`` are asked with prefixes (``c<n>`` / ``b<n>``) and
  the table reports how often they obey; others are held to the count or
  budget by the engine's limits. APR is also asked with no prefix
  (``adaptive``: it decides how many children to spawn, up to
  ``eval.max_children``), one starred point in those figures;
- KV memory held per problem (each token's K/V once: the inherit family
  reads its parent's slots in place) against what an engine that copies
  every thread's whole context would hold;
- how APR's width follows the problems' difficulty (``Task.difficulty``):
  the Spearman correlation of children spawned with difficulty and the spawn
  rate and children per difficulty quartile of every APR setting
  (``apr_jax.evaluation.width_stats``), in ``compare.md`` and as boxes in
  ``width_vs_difficulty.png``.

Writes ``context.png``, ``total_tokens.png``, ``sequential_tokens.png``,
``wall_clock.png``, ``width_vs_difficulty.png`` (when the task knows
difficulty), ``compare.md`` (table, paired sign tests, the share of SoS+
traces longer than each context, width against difficulty),
``compare.json`` and one JSON line per problem and setting (thread trees
included) in ``results.jsonl`` under the workdir.
"""

from __future__ import annotations

import os
import sys

from apr_jax.cli import Command, Flag, float_flag, int_flag, parse_command_line, run_command
from apr_jax.config.checks import ConfigError
from apr_jax.evaluation.compare import (
    Measurer,
    adaptive_point,
    arms_named,
    budget_sweep,
    children_sweep,
    context_sweep,
    int_list,
    load_arms,
    trace_lengths,
    train_or_reuse,
)
from apr_jax.runtime.checkpoint import CheckpointError
from apr_jax.training.loop import TrainingError

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

COMMAND = Command(
    "python -m apr_jax.compare",
    "Train APR (message and inherit families) and SoS+ on the same problems and budget, then compare them "
    "at equal context, compute and latency.",
    flags=(
        Flag("workdir", "holds the runs (apr/, inherit/, sosp/) and the report (default runs/compare)", value="DIR"),
        Flag("arms", "runs to compare: sosp and at least one of apr, inherit (default apr,inherit,sosp)", value="A,B"),
        Flag("apr_config", "the message-family APR config (default configs/compare_apr.py)", value="FILE"),
        Flag("inherit_config", "the inherit-family APR config (default configs/compare_inherit.py)", value="FILE"),
        Flag("sosp_config", "the SoS+ config (default configs/compare_sosp.py)", value="FILE"),
        Flag("num", "held-out test problems (default the APR config's eval.num_problems)", value="N"),
        Flag(
            "contexts",
            "per-thread context windows, comma-separated; each model is measured at those within its "
            "model.max_len (default 1/2, 3/4 and all of the smallest model.max_len)",
            value="N,N,...",
        ),
        Flag("children", "APR child counts, comma-separated (default 1 to eval.max_children)", value="N,N,..."),
        Flag(
            "budgets",
            "SoS+ token budgets, comma-separated (default 64 to 1024, up to twice model.max_len)",
            value="N,N,...",
        ),
        Flag("samples", "SoS+ samples per problem for majority vote and pass@k (default 4)", value="K"),
        Flag("temperature", "sampling temperature of those samples (default 0.7)", value="T"),
        Flag("seed", "sampling seed (default 0)", value="N"),
    ),
    overrides="set one config key in every run, e.g. --config.train.steps=400",
    examples=("python -m apr_jax.compare --workdir=runs/compare --config.train.steps=400",),
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int | None:
        import jax

        from apr_jax.evaluation.compare_report import write_report
        from apr_jax.evaluation.loading import load_for_inference, problems_for

        flags, overrides = parse_command_line(argv, COMMAND)
        workdir = flags.get("workdir", os.path.join("runs", "compare"))
        arms = arms_named(flags.get("arms", "apr,inherit,sosp"))
        configs = load_arms(
            {a.key: flags.get(f"{a.key}_config", os.path.join(CONFIGS_DIR, f"compare_{a.key}.py")) for a in arms},
            overrides,
        )
        max_lens = [c.model.max_len for c in configs.values()]
        contexts = int_list(
            flags, "contexts", ",".join(str(min(max_lens) * q // 4) for q in (2, 3, 4) if min(max_lens) * q // 4 >= 16)
        )
        if max(contexts) > max(max_lens):
            raise ConfigError(
                f"--contexts: {max(contexts)} exceeds every model's config.model.max_len ({max(max_lens)})"
            )
        first = configs[arms[0].key]
        children = int_list(flags, "children", ",".join(str(n) for n in range(1, first.eval.max_children + 1)))
        budgets = int_list(
            flags, "budgets", ",".join(str(b) for b in (64, 128, 256, 512, 1024) if b <= 2 * min(max_lens))
        )
        samples = int_flag(flags, "samples", 4, zero_ok=False)
        temperature = float_flag(flags, "temperature")
        temperature = 0.7 if temperature is None else temperature
        seed = int_flag(flags, "seed", 0)
        num = int_flag(flags, "num", first.eval.num_problems, zero_ok=False)

        loaded = {}
        for arm in arms:
            run_dir = os.path.join(workdir, arm.key)
            train_or_reuse(configs[arm.key], run_dir)
            loaded[arm.label] = load_for_inference(run_dir)
        problems = problems_for({"split": "test"}, first, num)
        print(f"comparing on {len(problems)} held-out problems", flush=True)
        points = []
        for arm in arms:
            m = Measurer(arm.label, loaded[arm.label], problems, seed)
            points += context_sweep(m, [w for w in contexts if w <= m.config.model.max_len])
            if arm.kind == "apr":
                points += children_sweep(m, children) + [adaptive_point(m)]
            else:
                points += budget_sweep(m, budgets)
                points.append(m.measure("vote", samples, samples=samples, temperature=temperature))
            # Every setting compiles engine programs of its own; one process holding all of them
            # runs out of memory maps (each CPU executable holds about 17).
            jax.clear_caches()
        lengths = {arm.label: trace_lengths(configs[arm.key], loaded[arm.label].tokenizer, problems) for arm in arms}
        written = write_report(
            workdir,
            points,
            lengths,
            contexts,
            {arm.label: configs[arm.key] for arm in arms},
            {label: run.step for label, run in loaded.items()},
            temperature,
        )
        for path in written:
            print(f"wrote {path}")

    return run_command(body, usage=(ValueError,), failures=(CheckpointError, TrainingError, OSError))


if __name__ == "__main__":
    sys.exit(main())
