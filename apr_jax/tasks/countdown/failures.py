"""Where an APR model's wrong answers go wrong, from the thread trees that
training (``results_test.jsonl``) or ``python -m apr_jax.evaluate --out``
writes (terse trace style), for ``python -m apr_jax.failures``. Countdown
only: other tasks' results have no numbers and target to check children
against.

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

import re
from typing import Any, Iterable, Sequence

from apr_jax.tasks.countdown.solver import is_solvable
from apr_jax.tasks.countdown.verifier import remaining_numbers

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
        raise ValueError("a row has no numbers and target: failure classes exist for Countdown results only")
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
