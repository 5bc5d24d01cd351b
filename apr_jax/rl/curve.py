"""`python -m apr_jax.rl.curve WORKDIR [--out=PNG]`: the held-out accuracy of
an RL run over its steps, with the training reward and the share of
spawning rollouts, from its ``metrics.jsonl``.

Prints one line per held-out evaluation (``rl.eval_every``) and plots the
three curves into ``--out`` (default ``WORKDIR/rl_curve.png``)."""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from apr_jax.cli import Command, Flag, read_command_line, run_command
from apr_jax.evaluation.plots import pyplot, save_figure
from apr_jax.runtime.metrics_log import read_metrics

COMMAND = Command(
    "python -m apr_jax.rl.curve",
    "Plot an RL run's held-out accuracy, training reward and spawn share over its steps.",
    args=(Flag("WORKDIR", "the RL run's workdir (reads its metrics.jsonl)"),),
    flags=(Flag("out", "the PNG to write (default WORKDIR/rl_curve.png)", value="PNG"),),
    examples=("python -m apr_jax.rl.curve runs/default_rl --out=rl_curve.png",),
)


def curves(rows: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series of held-out accuracy, training reward and spawn share."""
    series = {"eval_accuracy": [], "reward": [], "spawned": []}
    for row in rows:
        for key, points in series.items():
            if key in row:
                points.append((int(row["step"]), float(row[key])))
    return series


def plot(series: dict[str, list[tuple[int, float]]], path: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = {
        "eval_accuracy": "held-out accuracy (greedy)",
        "reward": "training reward",
        "spawned": "rollouts that spawn",
    }
    for key, points in series.items():
        if points:
            ax.plot(
                [s for s, _ in points],
                [100 * v for _, v in points],
                "o-" if key == "eval_accuracy" else "-",
                label=labels[key],
            )
    ax.set_xlabel("RL step")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    save_figure(fig, path, legend_axes=[ax])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> None:
        flags, _, workdirs, _ = read_command_line(argv, COMMAND)
        if len(workdirs) != 1:
            raise ValueError("give one RL workdir: python -m apr_jax.rl.curve WORKDIR [--out=PNG]")
        path = os.path.join(workdirs[0], "metrics.jsonl")
        series = curves(read_metrics(path))
        if not series["eval_accuracy"]:
            raise ValueError(f"{path} has no held-out evaluations (eval_accuracy); train with config.rl.eval_every > 0")
        for step, accuracy in series["eval_accuracy"]:
            print(f"step {step:5d}  held-out accuracy {accuracy:.1%}")
        out = flags.get("out") or os.path.join(workdirs[0], "rl_curve.png")
        plot(series, out)
        print(f"plot: {out}")

    return run_command(body, usage=(ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
