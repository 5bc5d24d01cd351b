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
    budget_sweep,
    children_sweep,
    context_sweep,
    int_list,
    load_pair,
    trace_lengths,
    train_or_reuse,
)
from apr_jax.runtime.checkpoint import CheckpointError
from apr_jax.training.loop import TrainingError

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

COMMAND = Command(
    "python -m apr_jax.compare",
    "Train APR and SoS+ on the same problems and budget, then compare them at equal context, compute and latency.",
    flags=(
        Flag("workdir", "holds the apr/ and sosp/ runs and the report (default runs/compare)", value="DIR"),
        Flag("apr_config", "the APR config (default configs/compare_apr.py)", value="FILE"),
        Flag("sosp_config", "the SoS+ config (default configs/compare_sosp.py)", value="FILE"),
        Flag("num", "held-out test problems (default the APR config's eval.num_problems)", value="N"),
        Flag(
            "contexts",
            "per-thread context windows, comma-separated (default 1/2, 3/4 and all of model.max_len)",
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
    overrides="set one config key in both runs, e.g. --config.train.steps=400",
    examples=("python -m apr_jax.compare --workdir=runs/compare --config.train.steps=400",),
)

RUNS = (("apr", "APR"), ("sosp", "SoS+"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int | None:
        from apr_jax.evaluation.compare_report import write_report
        from apr_jax.evaluation.loading import load_for_inference, problems_for

        flags, overrides = parse_command_line(argv, COMMAND)
        workdir = flags.get("workdir", os.path.join("runs", "compare"))
        apr_cfg, sosp_cfg = load_pair(
            flags.get("apr_config", os.path.join(CONFIGS_DIR, "compare_apr.py")),
            flags.get("sosp_config", os.path.join(CONFIGS_DIR, "compare_sosp.py")),
            overrides,
        )
        max_len = min(apr_cfg.model.max_len, sosp_cfg.model.max_len)
        contexts = int_list(
            flags, "contexts", ",".join(str(max_len * q // 4) for q in (2, 3, 4) if max_len * q // 4 >= 16)
        )
        if max(contexts) > max_len:
            raise ConfigError(f"--contexts: {max(contexts)} exceeds the models' config.model.max_len={max_len}")
        children = int_list(flags, "children", ",".join(str(n) for n in range(1, apr_cfg.eval.max_children + 1)))
        budgets = int_list(flags, "budgets", ",".join(str(b) for b in (64, 128, 256, 512, 1024) if b <= 2 * max_len))
        samples = int_flag(flags, "samples", 4, zero_ok=False)
        temperature = float_flag(flags, "temperature")
        temperature = 0.7 if temperature is None else temperature
        seed = int_flag(flags, "seed", 0)
        num = int_flag(flags, "num", apr_cfg.eval.num_problems, zero_ok=False)

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
        lengths = {
            "SoS+": trace_lengths(sosp_cfg, loaded["SoS+"].tokenizer, problems),
            "APR": trace_lengths(apr_cfg, loaded["APR"].tokenizer, problems),
        }
        written = write_report(
            workdir,
            points,
            lengths,
            contexts,
            {"APR": apr_cfg, "SoS+": sosp_cfg},
            {label: run.step for label, run in loaded.items()},
            temperature,
        )
        for path in written:
            print(f"wrote {path}")

    return run_command(body, usage=(ValueError,), failures=(CheckpointError, TrainingError, OSError))


if __name__ == "__main__":
    sys.exit(main())
