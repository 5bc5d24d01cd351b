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
width follows it, one line per setting (``apr_jax.evaluation.width_stats``): the
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

The work is in ``apr_jax.evaluation``: ``loading`` (checkpoints for
inference and their problems), ``scoring`` (decode and score), ``sweeps``
(prefixes and sweep points) and ``report`` (table, sign tests, plots).
"""

from __future__ import annotations

import os
import sys

from apr_jax.cli import Command, Flag, float_flag, int_flag, parse_command_line, run_command
from apr_jax.evaluation.loading import SPLIT_CHOICES, load_for_inference, problems_for, with_eval_overrides
from apr_jax.evaluation.report import WIDTH_PLOT, format_table, paired_comparisons, plot_sweep, plot_width
from apr_jax.evaluation.scoring import evaluate_problems
from apr_jax.evaluation.sweeps import SWEEP_KINDS, SWEPT_TRACE_KIND, is_swept, parse_sweep, sweep_settings
from apr_jax.runtime.checkpoint import CheckpointError
from apr_jax.runtime.jsonl import json_line

COMMAND = Command(
    "python -m apr_jax.evaluate",
    "Decode held-out problems with the spawn/join engine and score them with the task's verifier.",
    flags=(
        Flag("workdir", "trained runs, comma-separated: the newest checkpoint of each", value="DIRS"),
        Flag("checkpoint", "one checkpoint (DIR/checkpoints/STEP), besides or instead of --workdir", value="DIR"),
        Flag("problems", "a JSONL of problems to decode instead of --split", value="FILE"),
        Flag("split", f"comma-separated splits: {', '.join(SPLIT_CHOICES)} (default test)", value="SPLITS"),
        Flag("num", "problems from each split, or the first N of --problems (default 100)", value="N"),
        Flag("samples", "samples per problem, for pass@K and cons@K (default 1)", value="K"),
        Flag("temperature", "sampling temperature (default config.eval.temperature)", value="T"),
        Flag("top_p", "nucleus sampling threshold (default config.eval.top_p)", value="P"),
        Flag("out", "write one JSON line per problem and setting, thread tree included", value="FILE"),
        Flag("sweep", f"KIND=V1,V2,... with KIND one of {', '.join(SWEEP_KINDS)}: one setting per value", value="SPEC"),
        Flag("plot", "the sweep's PNG (default OUT.png with --out, else sweep.png)", value="PNG"),
        Flag(
            "width_plot",
            "children per problem by difficulty quartile, when the task knows "
            f"difficulty (default OUT_width.png with --out, else WORKDIR/{WIDTH_PLOT})",
            value="PNG",
        ),
        Flag("show", "print the thread trees of the first N problems (default 0)", value="N"),
        Flag("seed", "sampling seed (default 0)", value="N"),
    ),
    overrides="set one config.eval.* key (the rest comes from the checkpoint), e.g. --config.eval.max_children=2",
    examples=(
        "python -m apr_jax.evaluate --workdir=runs/default --split=test --num=200",
        "python -m apr_jax.evaluate --workdir=runs/apr,runs/sosp --sweep=tokens=64,128,256",
        "python -m apr_jax.evaluate --workdir=runs/apr_c,runs/sosp --sweep=children=adaptive,1,2,3,4",
    ),
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int | None:
        flags, overrides = parse_command_line(argv, COMMAND)
        sources = [s for s in flags.get("workdir", "").split(",") if s]
        if "checkpoint" in flags:
            sources.append(flags["checkpoint"])
        if not sources:
            raise ValueError("give --workdir=DIR or --checkpoint=DIR/checkpoints/STEP")
        num = int_flag(flags, "num", 100, zero_ok=False)
        samples = int_flag(flags, "samples", 1, zero_ok=False)
        show, seed = int_flag(flags, "show", 0), int_flag(flags, "seed", 0)
        temperature = float_flag(flags, "temperature")
        top_p = float_flag(flags, "top_p")
        sweep_kind, sweep_values = parse_sweep(flags["sweep"]) if "sweep" in flags else (None, [])
        out = open(flags["out"], "w") if "out" in flags else None
        table, series, solve_rates, panels = [], {}, {}, []
        swept = False
        width_plot = flags.get("width_plot") or (
            os.path.splitext(flags["out"])[0] + "_width.png" if "out" in flags else None
        )
        for source in sources:
            loaded = load_for_inference(source)
            config = with_eval_overrides(loaded.config, overrides)
            problems = problems_for(flags, config, num)
            run_name = os.path.basename(os.path.dirname(os.path.dirname(loaded.source)))
            label = f"{run_name}@{loaded.step}"  # the workdir's name: runs of one config differ
            print(f"evaluating {loaded.source} ({config.trace.kind}) on {len(problems)} problems", flush=True)
            width_plot = width_plot or os.path.join(os.path.dirname(os.path.dirname(loaded.source)), WIDTH_PLOT)
            settings = sweep_settings(sweep_kind, sweep_values, config)
            asked = sweep_kind is not None and is_swept(sweep_kind, config)
            if sweep_kind is not None and not asked:
                if not swept and source == sources[-1]:
                    raise ValueError(
                        f"--sweep={sweep_kind}=... needs at least one model trained with "
                        f"config.trace.kind={SWEPT_TRACE_KIND[sweep_kind]} and config.trace.condition=true"
                    )
                print(
                    f"  {label} ({config.trace.kind}, conditioned: {bool(config.trace.condition)}): "
                    f"--sweep={sweep_kind} does not ask it, evaluated once at its default setting",
                    flush=True,
                )
            swept = swept or asked
            for setting, kwargs in settings:
                rows, summary = evaluate_problems(
                    loaded.model,
                    loaded.tokenizer,
                    config,
                    problems,
                    samples=samples,
                    temperature=temperature,
                    top_p=top_p,
                    seed=seed,
                    **kwargs,
                )
                table.append((f"{label} {setting}", summary))
                if sweep_kind is None:
                    solve_rates[label] = {p: r["solve_rate"] for p, r in zip(problems, rows)}
                series.setdefault(label, []).append((setting, summary))
                panels.append((f"{label} {setting}", rows))
                if out:
                    for row in rows:
                        out.write(json_line({"model": label, "setting": setting, **row}))
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
            plot = flags.get("plot") or (os.path.splitext(flags["out"])[0] + ".png" if "out" in flags else "sweep.png")
            plot_sweep(series, plot)
            print(f"plot: {plot}")
        if plot_width(panels, width_plot):
            print(f"width plot: {width_plot}")

    return run_command(body, usage=(ValueError, CheckpointError, OSError))


if __name__ == "__main__":
    sys.exit(main())
