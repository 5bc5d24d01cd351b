"""What an evaluation prints and draws: the results table, width against
difficulty, paired comparisons with their sign tests, and the sweep plots."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from apr_jax.decode.metrics import sign_test_p
from apr_jax.evaluation.plots import pyplot, save_figure
from apr_jax.evaluation.sweeps import ADAPTIVE
from apr_jax.evaluation.width_stats import difficulty_quartiles, width_line

TABLE_COLUMNS = (
    ("setting", "{}"),
    ("accuracy", "{:.1%}"),
    ("pass@K", "{:.1%}"),
    ("cons@K", "{:.1%}"),
    ("well_formed", "{:.1%}"),
    ("tokens", "{:.0f}"),
    ("max_tokens", "{:d}"),
    ("sequential", "{:.0f}"),
    ("children", "{:.2f}"),
    ("spawned", "{:.0%}"),
    ("max_context", "{:d}"),
    ("kv_slots", "{:.0f}"),
    ("wall_s", "{:.1f}"),
    ("tokens/s", "{:.0f}"),
    ("compile_s", "{:.1f}"),
)
WIDTH_PLOT = "width_vs_difficulty.png"


def format_table(results: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A fixed-width table, one row per (setting, summary), then the
    ``width_lines`` of the settings whose difficulty is known."""
    lines = []
    header = [name for name, _ in TABLE_COLUMNS]
    rows = []
    for setting, s in results:
        k = s["samples"]
        values = [
            setting,
            s["accuracy"],
            s[f"pass@{k}"],
            s[f"cons@{k}"],
            s["well_formed"],
            s["mean_total_tokens"],
            s["max_total_tokens"],
            s["mean_sequential_tokens"],
            s["mean_children_per_spawn"],
            s["spawned"],
            s["max_context"],
            s.get("mean_kv_slots", float("nan")),
            s["wall_s"],
            s["tokens_per_s"],
            s["compile_s"],
        ]
        rows.append([fmt.format(v) for (_, fmt), v in zip(TABLE_COLUMNS, values)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        lines.append("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    lines += width_lines(results)
    return "\n".join(lines)


def width_lines(results: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """``SETTING: width vs difficulty: spearman ...`` (``width_stats.width_line``)
    for each (setting, summary) whose problems' difficulty is known."""
    return [f"{setting}: {line}" for setting, s in results if (line := width_line(s))]


def children_by_quartile(rows: Sequence[dict[str, Any]]) -> tuple[list[list[float]], list[str]]:
    """Children spawned per problem (mean over its samples) grouped by
    difficulty quartile (``width_stats.difficulty_quartiles``), and a label
    per quartile with its difficulty range and size; rows of unknown
    difficulty left out."""
    known = [r for r in rows if r.get("difficulty") is not None]
    difficulty = [r["difficulty"] for r in known]
    children = [float(np.mean([s["children"] for s in [r, *r.get("samples", [])]])) for r in known]
    quartile = difficulty_quartiles(difficulty)
    groups, labels = [], []
    for q in range(4):
        inside = [i for i, k in enumerate(quartile) if k == q]
        groups.append([children[i] for i in inside])
        span = (
            f"{min(difficulty[i] for i in inside):.2f}-{max(difficulty[i] for i in inside):.2f}" if inside else "empty"
        )
        labels.append(f"Q{q + 1}\n{span}\nn={len(inside)}")
    return groups, labels


def plot_width(panels: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: str) -> bool:
    """Children per problem against difficulty, as boxes per difficulty
    quartile, one panel per (setting, result rows); panels whose problems'
    difficulty is unknown are left out. Writes ``path`` and returns True,
    or writes nothing and returns False when no panel is left."""
    kept = [(label, rows) for label, rows in panels if any(r.get("difficulty") is not None for r in rows)]
    if not kept:
        return False
    plt = pyplot()

    cols = min(4, len(kept))
    nrows = -(-len(kept) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.8 * nrows), squeeze=False, sharey=True)
    for ax, (label, rows) in zip(axes.flat, kept):
        groups, labels = children_by_quartile(rows)
        filled = [q for q, g in enumerate(groups) if g]
        ax.boxplot([groups[q] for q in filled], positions=[q + 1 for q in filled], widths=0.6)
        ax.set_xticks(range(1, 5), labels, fontsize=7)
        ax.set_xlim(0.4, 4.6)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("difficulty quartile (easy to hard)", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[:, 0]:
        ax.set_ylabel("children spawned per problem")
    for ax in list(axes.flat)[len(kept) :]:
        ax.set_visible(False)
    save_figure(fig, path)
    return True


def paired_comparisons(solve_rates: dict[str, dict[Any, float]]) -> list[str]:
    """One line per later run against the first, on the problems both were
    evaluated on: how many each solved more often (with one sample: solved
    and the other did not), and the sign test's p. ``solve_rates[label]``
    maps a problem to the share of its samples that run solved."""
    labels = list(solve_rates)
    lines = []
    for other in labels[1:]:
        first, second = solve_rates[labels[0]], solve_rates[other]
        shared = [key for key in first if key in second]
        if not shared:
            lines.append(f"{other} vs {labels[0]}: no problems in common, not compared")
            continue
        more_other = sum(second[k] > first[k] for k in shared)
        more_first = sum(first[k] > second[k] for k in shared)
        single = all(r in (0.0, 1.0) for k in shared for r in (first[k], second[k]))
        what = ("solved only by", "only by") if single else ("solved more often by", "more often by")
        lines.append(
            f"{other} vs {labels[0]}: {more_other} problems {what[0]} {other}, "
            f"{more_first} {what[1]} {labels[0]} (sign test p = "
            f"{sign_test_p(more_other, more_first):.2f})"
        )
    return lines


def setting_mark(setting: str) -> str:
    """A sweep point's short name in plots: ``c2``, ``b128``, ``t64``,
    ``adaptive``, ``default``."""
    kind, _, value = setting.partition("=")
    if not value or value == ADAPTIVE:
        return value or kind
    return {"children": "c", "budget": "b", "tokens": "t"}.get(kind, kind) + value


def plot_sweep(series: dict[str, list[tuple[str, dict[str, Any]]]], path: str) -> None:
    """Accuracy against total and against sequential tokens, one point per
    evaluated setting, named by ``setting_mark``: one line per model through
    its fixed settings; a model's ``adaptive`` setting (no prefix) and a lone
    point are drawn as stars."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for n, (label, points) in enumerate(series.items()):
        color = f"C{n % 10}"
        fixed = [(st, p) for st, p in points if not st.endswith("=" + ADAPTIVE)]
        stars = [(st, p) for st, p in points if st.endswith("=" + ADAPTIVE)]
        if len(fixed) == 1:
            stars, fixed = fixed + stars, []
        for ax, key in zip(axes, ("mean_total_tokens", "mean_sequential_tokens")):
            if fixed:
                ax.plot(
                    [p[key] for _, p in fixed], [100 * p["accuracy"] for _, p in fixed], "o-", color=color, label=label
                )
            for st, p in stars:
                ax.plot(
                    [p[key]],
                    [100 * p["accuracy"]],
                    "*",
                    markersize=12,
                    color=color,
                    label=f"{label} {setting_mark(st)}",
                )
            for st, p in points:
                ax.annotate(
                    setting_mark(st),
                    (p[key], 100 * p["accuracy"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
    for ax, name in zip(axes, ("total tokens per problem", "sequential tokens (critical path)")):
        ax.set_xlabel(name)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    save_figure(fig, path, legend_axes=axes)
