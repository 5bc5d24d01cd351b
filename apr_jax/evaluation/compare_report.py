"""Figures, markdown table and JSON of ``python -m apr_jax.compare``."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from apr_jax.config.sections import RunConfig
from apr_jax.evaluation.compare import PARALLEL_LABELS
from apr_jax.evaluation.plots import pyplot, save_figure
from apr_jax.evaluation.report import WIDTH_PLOT, paired_comparisons, plot_width
from apr_jax.evaluation.width_stats import width_line
from apr_jax.runtime.jsonl import write_jsonl

COLORS = {"APR": "tab:blue", "APR inherit": "tab:green", "SoS+": "tab:orange"}
FIGURES = ("context.png", "total_tokens.png", "sequential_tokens.png", "wall_clock.png")


def _of(points: Sequence[Any], model: str, sweep: str) -> list[Any]:
    return [p for p in points if p.model == model and p.sweep == sweep]


def _axes(title: str, xlabel: str) -> tuple[Any, Any]:
    fig, ax = pyplot().subplots(figsize=(6, 4))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out accuracy (%)")
    ax.grid(alpha=0.3)
    return fig, ax


def _line(
    ax: Any,
    xs: Sequence[float],
    ys: Sequence[float],
    label: str,
    color: str,
    style: str = "o-",
    values: Sequence[Any] = (),
) -> None:
    ax.plot(xs, [100 * y for y in ys], style, label=label, color=color)
    for x, y, v in zip(xs, ys, values):
        ax.annotate(str(v), (x, 100 * y), fontsize=7, textcoords="offset points", xytext=(3, 3))


def plot_context(points: Sequence[Any], path: str, caption: str) -> None:
    fig, ax = _axes("accuracy at a per-thread context limit", "context window per thread (tokens)")
    for model in COLORS:
        ps = _of(points, model, "context")
        _line(ax, [p.value for p in ps], [p.summary["accuracy"] for p in ps], model, COLORS[model])
    save_figure(fig, path, legend_axes=[ax], caption=caption)


def plot_compute(points: Sequence[Any], path: str, x_key: str, xlabel: str) -> None:
    """Each APR arm per child count and choosing its width (no prefix, a
    star), SoS+ per budget and SoS+ with k samples, against ``x_key``:
    total, sequential tokens or wall-clock per problem."""
    fig, ax = _axes(f"accuracy against {xlabel}", xlabel)

    def x(p: Any, samples: int = 1) -> float:
        if x_key == "wall":
            return p.wall_per_problem
        if x_key == "total":
            return samples * p.summary["mean_total_tokens"]
        return p.summary["mean_sequential_tokens"]

    for label in PARALLEL_LABELS:
        fixed = _of(points, label, "children")
        if fixed:
            _line(
                ax,
                [x(p) for p in fixed],
                [p.summary["accuracy"] for p in fixed],
                f"{label} (children)",
                COLORS[label],
                values=[f"c{p.value}" for p in fixed],
            )
        adaptive = _of(points, label, "adaptive")
        if adaptive:
            _line(
                ax,
                [x(p) for p in adaptive],
                [p.summary["accuracy"] for p in adaptive],
                f"{label} adaptive (no prefix)",
                COLORS[label],
                "*",
                values=["adaptive" for _ in adaptive],
            )
    sosp = _of(points, "SoS+", "budget")
    _line(
        ax,
        [x(p) for p in sosp],
        [p.summary["accuracy"] for p in sosp],
        "SoS+ (token budget)",
        COLORS["SoS+"],
        values=[f"b{p.value}" for p in sosp],
    )
    for p in _of(points, "SoS+", "vote"):
        if x_key == "total":  # j samples cost j times the tokens: the whole curve
            curve = p.votes
        else:  # samples run side by side: one point at k
            curve = p.votes[-1:]
        xs = [x(p, c["k"]) for c in curve]
        _line(
            ax,
            xs,
            [c["cons"] for c in curve],
            "SoS+ majority vote (cons@k)",
            COLORS["SoS+"],
            "s--",
            values=[f"k={c['k']}" for c in curve],
        )
        _line(ax, xs, [c["pass"] for c in curve], "SoS+ pass@k", COLORS["SoS+"], "^:")
    save_figure(fig, path, legend_axes=[ax])


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def length_caption(lengths: dict[str, list[int]], contexts: Sequence[int]) -> str:
    """The share of SoS+ training traces longer than each context, and each
    APR arm's longest thread context (``trace_lengths``)."""
    sosp = lengths["SoS+"]
    over = ", ".join(f"> {w}: {np.mean([n > w for n in sosp]):.0%}" for w in contexts)
    caption = (
        f"SoS+ training traces of these problems longer than the context: {over} (mean {np.mean(sosp):.0f} tokens)"
    )
    for label in PARALLEL_LABELS:
        if label in lengths:
            n = lengths[label]
            caption += f"; longest {label} thread context {max(n)} tokens (mean {np.mean(n):.0f})"
    return caption + "."


def _table(points: Sequence[Any]) -> list[str]:
    lines = [
        "| model | setting | accuracy | pass@k | cons@k | total tokens | sequential tokens "
        "| KV slots held | KV slots, prefixes copied | wall ms/problem | stopped at context | obeyed request |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "context": "context {}",
        "children": "children c{}",
        "budget": "budget b{}",
        "vote": "{} samples",
        "adaptive": "adaptive (no prefix, up to c{})",
    }
    for p in points:
        s = p.summary
        k = s["samples"]
        lines.append(
            f"| {p.model} | {names[p.sweep].format(p.value)} | {_pct(s['accuracy'])} "
            f"| {_pct(s[f'pass@{k}'])} | {_pct(s[f'cons@{k}'])} | {s['mean_total_tokens']:.0f} "
            f"| {s['mean_sequential_tokens']:.0f} | {s['mean_kv_slots']:.0f} | {s['mean_kv_slots_unshared']:.0f} "
            f"| {1e3 * p.wall_per_problem:.1f} "
            f"| {_pct(s['context_limited'])} | {'' if p.obeyed is None else _pct(p.obeyed)} |"
        )
    return lines


def token_split(rows: Sequence[dict[str, Any]]) -> tuple[float, float, float]:
    """Mean written tokens per sample of the root, of all other threads, and
    of the other threads on the critical path (sequential minus root)."""
    samples = [s for r in rows for s in [r, *r["samples"]]]
    root = [s["tree"]["meta"]["written_tokens"][0] for s in samples]
    rest = [s["total_tokens"] - n for s, n in zip(samples, root)]
    path = [s["sequential_tokens"] - n for s, n in zip(samples, root)]
    return float(np.mean(root)), float(np.mean(rest)), float(np.mean(path))


def setting_name(p: Any) -> str:
    return {
        "context": f"context {p.value}",
        "children": f"c{p.value}",
        "budget": f"b{p.value}",
        "vote": f"{p.value} samples",
        "adaptive": "adaptive",
    }[p.sweep]


def width_section(points: Sequence[Any]) -> list[str]:
    """``compare.md``'s lines on APR's width against difficulty: one
    ``width_stats.width_line`` per APR setting, and how each arm's adaptive
    setting compares with its fixed widths; empty when difficulty is unknown."""
    apr = [p for p in points if p.model in PARALLEL_LABELS and "width_spearman" in p.summary]
    if not apr:
        return []
    lines = [
        "## Width against difficulty",
        "",
        "Children spawned per problem against the task's oracle difficulty: Spearman rank "
        "correlation (average ranks for ties; n/a when undefined), then the spawn rate and "
        "mean children per difficulty quartile (a problem's quartile is where its average "
        "rank falls, so equal difficulties share one).",
        "",
    ]
    lines += [f"- {p.model} {setting_name(p)}: {width_line(p.summary)}" for p in apr]
    for label in PARALLEL_LABELS:
        for p in _of(points, label, "adaptive"):
            s = p.summary
            fixed = _of(points, label, "children")
            line = (
                f"- adaptive {label}: {_pct(s['accuracy'])} at {s['mean_total_tokens']:.0f} total and "
                f"{s['mean_sequential_tokens']:.0f} sequential tokens, "
                f"{s['mean_children']:.2f} children per problem"
            )
            if fixed:
                best = max(fixed, key=lambda f: f.summary["accuracy"])
                line += (
                    f"; best fixed width c{best.value}: {_pct(best.summary['accuracy'])} at "
                    f"{best.summary['mean_total_tokens']:.0f} total and "
                    f"{best.summary['mean_sequential_tokens']:.0f} sequential tokens"
                )
            lines.append(line)
    return lines + [""]


def _inputs(num_inputs: Any) -> str:
    """``4``, or ``3/4`` for a task mixing counts of numbers."""
    return "/".join(map(str, num_inputs)) if isinstance(num_inputs, (list, tuple)) else str(num_inputs)


def goal_lines(points: Sequence[Any], contexts: Sequence[int]) -> list[str]:
    """The comparison's claims, as measured."""
    lines = []
    for label in PARALLEL_LABELS:
        for w in contexts:
            a = _of([p for p in points if p.value == w], label, "context")
            b = _of([p for p in points if p.value == w], "SoS+", "context")
            if a and b:
                root, rest, path = token_split(a[0].rows)
                a, b = a[0].summary, b[0].summary
                lines.append(
                    f"- context {w}: {label} {_pct(a['accuracy'])} vs SoS+ {_pct(b['accuracy'])} "
                    f"({100 * (a['accuracy'] - b['accuracy']):+.1f} points); {label} sequential "
                    f"tokens {a['mean_sequential_tokens'] / max(a['mean_total_tokens'], 1e-9):.2f}"
                    f" x its total (the root writes {root:.0f} tokens, the other threads {rest:.0f}, "
                    f"{path:.0f} of them on the critical path)"
                )
    for w in contexts:
        message = _of([p for p in points if p.value == w], "APR", "context")
        inherit = _of([p for p in points if p.value == w], "APR inherit", "context")
        if message and inherit:
            m, i = message[0].summary, inherit[0].summary
            lines.append(
                f"- context {w}: APR inherit {_pct(i['accuracy'])} vs APR {_pct(m['accuracy'])} "
                f"({100 * (i['accuracy'] - m['accuracy']):+.1f} points); KV slots held per problem "
                f"{i['mean_kv_slots']:.0f} vs {m['mean_kv_slots']:.0f}; APR inherit holds "
                f"{i['mean_kv_slots'] / max(i['mean_kv_slots_unshared'], 1e-9):.2f} x the "
                f"{i['mean_kv_slots_unshared']:.0f} slots of an engine that copies each thread's context"
            )
    for label in PARALLEL_LABELS:
        apr = _of(points, label, "children")
        for vote in _of(points, "SoS+", "vote"):
            for c in vote.votes:
                budget = c["k"] * vote.summary["mean_total_tokens"]
                within = [p for p in apr if p.summary["mean_total_tokens"] <= budget]
                if within:
                    best = max(within, key=lambda p: p.summary["accuracy"])
                    lines.append(
                        f"- at <= {budget:.0f} total tokens: {label} c{best.value} "
                        f"{_pct(best.summary['accuracy'])} vs SoS+ cons@{c['k']} {_pct(c['cons'])}"
                    )
                elif apr:
                    lines.append(
                        f"- at <= {budget:.0f} total tokens: no {label} setting that cheap; "
                        f"SoS+ cons@{c['k']} {_pct(c['cons'])}"
                    )
    return lines


def sign_test_lines(points: Sequence[Any], contexts: Sequence[int]) -> list[str]:
    """``- context W: APR vs SoS+: ...`` (``paired_comparisons``) for each
    context and APR arm evaluated there with SoS+, then the inherit arm
    against the message arm."""
    lines = []
    for w in contexts:
        rates = {p.model: p.solve_rates for p in points if p.sweep == "context" and p.value == w}
        pairs = [("SoS+", label) for label in PARALLEL_LABELS] + [("APR", "APR inherit")]
        for first, second in pairs:
            if first in rates and second in rates:
                lines += [
                    f"- context {w}: " + line
                    for line in paired_comparisons({first: rates[first], second: rates[second]})
                ]
    return lines


def write_report(
    workdir: str,
    points: Sequence[Any],
    lengths: dict[str, list[int]],
    contexts: Sequence[int],
    configs: dict[str, RunConfig],
    trained_steps: dict[str, int],
    temperature: float,
) -> list[str]:
    """Write the four figures (and ``width_vs_difficulty.png`` when the task
    knows difficulty), ``compare.md``, ``compare.json`` and ``results.jsonl``;
    their paths."""
    os.makedirs(workdir, exist_ok=True)
    caption = length_caption(lengths, contexts)
    paths = [os.path.join(workdir, name) for name in FIGURES]
    plot_context(points, paths[0], caption)
    plot_compute(points, paths[1], "total", "total tokens per problem")
    plot_compute(points, paths[2], "sequential", "sequential tokens (critical path)")
    plot_compute(points, paths[3], "wall", "wall-clock seconds per problem")
    figures = list(FIGURES)
    width_panels = [
        (f"{p.model} {setting_name(p)}", p.rows)
        for p in points
        if p.model in PARALLEL_LABELS and p.sweep in ("adaptive", "children")
    ]
    if plot_width(width_panels, os.path.join(workdir, WIDTH_PLOT)):
        paths.append(os.path.join(workdir, WIDTH_PLOT))
        figures.append(WIDTH_PLOT)

    first = next(iter(configs.values()))
    task = first.task
    tokens = first.train.steps * first.train.batch_size * first.data.seq_len
    problems = points[0].summary["problems"]
    steps = ", ".join(f"{model} {step}" for model, step in trained_steps.items())
    unequal = len(set(trained_steps.values())) > 1
    rows = "; ".join(
        f"{label} {c.train.steps} steps x {c.train.batch_size} rows x {c.data.seq_len}" for label, c in configs.items()
    )
    md = [
        f"# {', '.join(configs)} at equal context, compute and latency",
        "",
        f"Countdown-{_inputs(task.num_inputs)}, numbers {task.min_number}-{task.max_number}, targets "
        f"{task.min_target}-{task.max_target}; {problems} held-out test problems. Every run trains "
        f"{tokens:,} token slots ({rows}); steps trained: {steps}"
        f"{' (UNEQUAL: a time limit stopped a run early)' if unequal else ''}. A message-family "
        "row holds threads; an inherit-family row holds whole thread trees, each thread's context "
        "its parent's prefix plus its own path. "
        f"Greedy decoding except the SoS+ sampling row (temperature {temperature}).",
        "",
        f"{caption}",
        "",
        "## Claims, as measured",
        "",
        *goal_lines(points, contexts),
        "",
        "## Paired sign tests (same problems, one greedy sample each)",
        "",
        *sign_test_lines(points, contexts),
    ]
    md += [
        "",
        "## Every setting",
        "",
        *_table(points),
        "",
        "*stopped at context*: share of samples with a thread cut at the context limit; "
        "*obeyed request*: share of samples whose child count equals the requested one "
        "(APR `c<n>`) or whose written tokens, counted as the generators count them, stay "
        "within the requested budget (SoS+ `b<n>`).",
        "",
    ]
    md += width_section(points)
    md += [f"![{name}]({name})" for name in figures]
    paths.append(os.path.join(workdir, "compare.md"))
    with open(paths[-1], "w") as f:
        f.write("\n".join(md) + "\n")
    paths.append(os.path.join(workdir, "compare.json"))
    with open(paths[-1], "w") as f:
        json.dump(
            {
                "points": [p.to_dict() for p in points],
                "caption": caption,
                "trace_lengths": lengths,
                "contexts": list(contexts),
            },
            f,
            indent=1,
        )
    paths.append(os.path.join(workdir, "results.jsonl"))
    write_jsonl(
        paths[-1], ({"model": p.model, "sweep": p.sweep, "value": p.value, **row} for p in points for row in p.rows)
    )
    return paths
