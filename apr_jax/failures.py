"""`python -m apr_jax.failures RESULTS.jsonl`: where an APR model's wrong
Countdown answers go wrong, one table row per model and setting
(``apr_jax.tasks.countdown.failures`` classifies each unsolved problem)."""

from __future__ import annotations

import json
import sys
from typing import Sequence

from apr_jax.cli import Command, Flag, read_command_line, run_command
from apr_jax.tasks.countdown.failures import CLASSES, breakdown

COMMAND = Command(
    "python -m apr_jax.failures",
    "Classify an APR model's wrong Countdown answers: no spawn, solvable child, spawn errors, unsolvable choices.",
    args=(
        Flag(
            "RESULTS.jsonl", "results with thread trees: a run's results_test.jsonl or python -m apr_jax.evaluate --out"
        ),
    ),
    examples=("python -m apr_jax.failures runs/default/results_test.jsonl",),
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command(lambda: _run(argv), usage=(), compile_cache=False)


def _run(argv: Sequence[str]) -> int:
    paths = read_command_line(argv, COMMAND).args
    if len(paths) != 1:
        print(COMMAND.usage(), file=sys.stderr)
        return 2
    path = paths[0]
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        table = breakdown(rows)
    except OSError as e:
        print(f"error: cannot read {path}: {e.strerror}", file=sys.stderr)
        return 1
    except (json.JSONDecodeError, KeyError, TypeError, IndexError) as e:
        print(f"error: {path} is not a results file with thread trees ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    except ValueError as e:  # a results file of another task
        print(f"error: {path}: {e}", file=sys.stderr)
        return 1
    columns = ("problems", "solved", *CLASSES)
    width = max(len(n) for n in table)
    print(f"{'':{width}}  " + "  ".join(f"{c:>18}" for c in columns))
    for name, counts in table.items():
        cells = [f"{counts['problems']:>18}"] + [
            f"{counts[c]:>9} ({counts[c] / counts['problems']:6.1%})" for c in columns[1:]
        ]
        print(f"{name:{width}}  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
