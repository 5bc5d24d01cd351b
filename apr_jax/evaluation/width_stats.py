"""How wide a model goes against how hard a problem is: per-run figures
from per-problem children counts and oracle difficulties (pure numpy).

- ``spearman``: Spearman's rank correlation, the Pearson correlation of the
  two average ranks (tied values share the mean of the ranks they span);
  NaN when undefined: fewer than ``MIN_PAIRS`` pairs, or either side constant.
- ``difficulty_quartiles``: which quarter of the evaluated problems, ordered
  by difficulty, each problem falls in. A problem's position is its average
  rank r (1..n) as a share of n, (r - 1/2) / n, and its quartile is
  floor(4 x position): problems of equal difficulty share an average rank,
  so a tie is never split between quartiles; the whole tied group goes to the
  quartile its middle lies in (a middle exactly on a boundary goes to the
  upper quartile). Heavy ties can leave a quartile empty (its figures NaN).
- ``width_summary``: the flat ``width_*`` keys of an evaluation summary
  (floats, NaN when undefined): ``width_problems`` (problems with a known
  difficulty), ``width_spearman`` (children against difficulty, all
  problems), ``width_spearman_<k>_inputs`` (within the problems of k input
  numbers, one key per count present), ``width_spawn_rate_q1..q4`` (share of
  the quartile's samples that spawned at all), ``width_children_q1..q4``
  (mean children spawned per problem) and ``width_problems_q1..q4``.
- ``width_line``: those keys as one readable line.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import numpy as np

MIN_PAIRS = 3  # fewer pairs: no Spearman correlation (NaN)
QUARTILES = 4
_PER_INPUTS = re.compile(r"^width_spearman_(\d+)_inputs$")


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values`` (ascending), ties given the mean of the ranks
    they span: [10, 20, 20, 30] -> [1, 2.5, 2.5, 4]."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"average_ranks needs a 1-D sequence, got shape {x.shape}")
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    while start < len(x):
        end = start + 1
        while end < len(x) and sorted_x[end] == sorted_x[start]:
            end += 1
        ranks[order[start:end]] = (start + 1 + end) / 2  # mean of ranks start+1 .. end
        start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of paired ``x`` and ``y`` (average ranks for
    ties); NaN with fewer than ``MIN_PAIRS`` pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs paired values, got {len(x)} and {len(y)}")
    if len(x) < MIN_PAIRS:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float(np.sum(dx * dx)) * float(np.sum(dy * dy)))
    if norm == 0.0:
        return math.nan
    return float(np.sum(dx * dy) / norm)


def difficulty_quartiles(difficulty: Sequence[float]) -> np.ndarray:
    """Quartile index 0..3 of each problem by difficulty (module docstring:
    average-rank position; ties share a quartile)."""
    n = len(difficulty)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    position = (average_ranks(difficulty) - 0.5) / n
    return np.minimum(np.floor(QUARTILES * position).astype(np.int64), QUARTILES - 1)


def quartile_rates(
    difficulty: Sequence[float], children: Sequence[float], spawned: Sequence[float] | None = None
) -> dict[str, list[float]]:
    """Per difficulty quartile: ``problems`` (count), ``spawn_rate`` (mean of
    ``spawned``, each problem's share of samples that spawned; default
    children > 0) and ``children`` (mean children per problem); NaN for an
    empty quartile."""
    children = np.asarray(children, dtype=np.float64)
    spawned = (children > 0).astype(np.float64) if spawned is None else np.asarray(spawned, np.float64)
    if not len(difficulty) == len(children) == len(spawned):
        raise ValueError(
            f"quartile_rates needs one value per problem, got {len(difficulty)} "
            f"difficulties, {len(children)} children, {len(spawned)} spawn shares"
        )
    quartile = difficulty_quartiles(difficulty)
    out: dict[str, list[float]] = {"problems": [], "spawn_rate": [], "children": []}
    for q in range(QUARTILES):
        inside = quartile == q
        count = int(inside.sum())
        out["problems"].append(count)
        out["spawn_rate"].append(float(spawned[inside].mean()) if count else math.nan)
        out["children"].append(float(children[inside].mean()) if count else math.nan)
    return out


def width_summary(
    difficulty: Sequence[float | None],
    children: Sequence[float],
    inputs: Sequence[int | None] | None = None,
    spawned: Sequence[float] | None = None,
) -> dict[str, float]:
    """The ``width_*`` summary keys (module docstring) from one entry per
    problem: its difficulty (None: unknown, left out), children spawned
    (mean over its samples), input count (None: unknown) and share of samples
    that spawned (default children > 0). Empty when no difficulty is known."""
    n = len(children)
    inputs = [None] * n if inputs is None else list(inputs)
    spawned = [float(c > 0) for c in children] if spawned is None else list(spawned)
    if not len(difficulty) == n == len(inputs) == len(spawned):
        raise ValueError("width_summary needs one difficulty, children count, input count and spawn share per problem")
    known = [i for i, d in enumerate(difficulty) if d is not None and math.isfinite(d)]
    if not known:
        return {}
    d = [float(difficulty[i]) for i in known]
    c = [float(children[i]) for i in known]
    out: dict[str, float] = {"width_problems": float(len(known)), "width_spearman": spearman(d, c)}
    for k in sorted({inputs[i] for i in known if inputs[i] is not None}):
        idx = [j for j, i in enumerate(known) if inputs[i] == k]
        out[f"width_spearman_{k}_inputs"] = spearman([d[j] for j in idx], [c[j] for j in idx])
    rates = quartile_rates(d, c, [float(spawned[i]) for i in known])
    for q in range(QUARTILES):
        out[f"width_spawn_rate_q{q + 1}"] = rates["spawn_rate"][q]
        out[f"width_children_q{q + 1}"] = rates["children"][q]
        out[f"width_problems_q{q + 1}"] = float(rates["problems"][q])
    return out


def _num(v: float, fmt: str) -> str:
    return "n/a" if v is None or not math.isfinite(v) else fmt.format(v)


def width_line(summary: Mapping[str, Any]) -> str | None:
    """``width vs difficulty: spearman 0.52 (3 inputs 0.48, 4 inputs 0.55);
    spawn rate by difficulty quartile 22% 61% 93% 100%; children 0.3 1.1 2.0
    2.8``; None when the summary has no ``width_*`` keys (difficulty unknown).
    The per-input-count figures appear when the problems mix input counts."""
    if "width_spearman" not in summary:
        return None
    per_inputs = sorted((int(m.group(1)), v) for k, v in summary.items() if (m := _PER_INPUTS.match(k)))
    line = f"width vs difficulty: spearman {_num(summary['width_spearman'], '{:.2f}')}"
    if len(per_inputs) > 1:
        line += " (" + ", ".join(f"{k} inputs {_num(v, '{:.2f}')}" for k, v in per_inputs) + ")"
    quarters = range(1, QUARTILES + 1)
    line += (
        "; spawn rate by difficulty quartile "
        + " ".join(_num(summary[f"width_spawn_rate_q{q}"], "{:.0%}") for q in quarters)
        + "; children "
        + " ".join(_num(summary[f"width_children_q{q}"], "{:.1f}") for q in quarters)
        + f" ({int(summary['width_problems'])} problems)"
    )
    return line
