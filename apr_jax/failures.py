"""`python -m apr_jax.failures RESULTS.jsonl`: where an APR model's wrong
answers go wrong, from the thread trees that training (``results_test.jsonl``)
or ``python -m apr_jax.evaluate --out`` writes (terse trace style). Countdown
only: other tasks' results have no numbers and target to check children against.

Each unsolved problem falls in the first class that applies:

- ``no spawn``: the root never spawned children;
- ``solvable child``: some child started from a correct, solvable state (its
  message's operations are exact and its numbers are what they leave), so the
  search or the answer failed later;
- ``spawn errors``: no child started from a solvable state and some message
  has wrong arithmetic or wrong remaining numbers;
- ``unsolvable choices``: every child started correctly, from unsolvable states.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Iterable, Sequence

from apr_jax.cli import Command, Flag, read_command_line, run_command
from apr_jax.countdown.solver import is_solvable
from apr_jax.countdown.verifier import remaining_numbers

COMMAND = Command(
    "python -m apr_jax.failures",
    "Classify an APR model's wrong Countdown answers: no spawn, solvable child, spawn errors, "
    "unsolvable choices.",
    args=(Flag("RESULTS.jsonl", "results with thread trees: a run's results_test.jsonl or "
               "python -m apr_jax.evaluate --out"),),
    examples=("python -m apr_jax.failures runs/default/results_test.jsonl",),
)
CLASSES = ("no spawn", "solvable child", "spawn errors", "unsolvable choices")
_MESSAGE_RE = re.compile(r"<child>(?:[bc][0-9]+ )?([^\n|]*) \| ([0-9]+(?: [0-9]+)*) -> ([0-9]+)", re.ASCII)


def child_start(message: str, numbers: Sequence[int], target: int) -> str:
    """``solvable``, ``unsolvable`` or ``error`` for one child's message: its
    operations applied to the problem's numbers must be exact and leave the
    numbers the message lists."""
    m = _MESSAGE_RE.match(message)
    if m is None or int(m.group(3)) != target:
        return "error"
    try:
        left = remaining_numbers(m.group(1).split(), numbers)
    except ValueError:
        return "error"
    state = sorted(int(x) for x in m.group(2).split())
    if state != left:
        return "error"
    return "solvable" if is_solvable(state, target) else "unsolvable"


def classify(row: dict[str, Any]) -> str | None:
    """The failure class of one result row (None when it was solved)."""
    if row["solved"]:
        return None
    threads = row["tree"]["threads"]
    if "numbers" not in row or "target" not in row:
        raise ValueError("a row has no numbers and target: failure classes exist for Countdown "
                         "results only")
    messages = [t["segments"][0]["text"] for t in threads if t["parent"] == 0]
    if not messages:
        return "no spawn"
    starts = {child_start(m, row["numbers"], row["target"]) for m in messages}
    if "solvable" in starts:
        return "solvable child"
    return "spawn errors" if "error" in starts else "unsolvable choices"


def breakdown(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per model/setting: problems, solved, and the count of each failure class."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        name = " ".join(str(row[k]) for k in ("model", "setting") if k in row) or "results"
        counts = out.setdefault(name, {"problems": 0, "solved": 0, **{c: 0 for c in CLASSES}})
        counts["problems"] += 1
        kind = classify(row)
        counts["solved" if kind is None else kind] += 1
    return out


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
        print(f"error: {path} is not a results file with thread trees ({type(e).__name__}: {e})",
              file=sys.stderr)
        return 1
    except ValueError as e:  # a results file of another task
        print(f"error: {path}: {e}", file=sys.stderr)
        return 1
    columns = ("problems", "solved", *CLASSES)
    width = max(len(n) for n in table)
    print(f"{'':{width}}  " + "  ".join(f"{c:>18}" for c in columns))
    for name, counts in table.items():
        cells = [f"{counts['problems']:>18}"] + [
            f"{counts[c]:>9} ({counts[c] / counts['problems']:6.1%})" for c in columns[1:]]
        print(f"{name:{width}}  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
