"""Evaluation settings: the prefix a conditioned model is asked with, and
sweeps over children (APR), budget (SoS+) or tokens per thread."""

from __future__ import annotations

from typing import Any, Sequence

from apr_jax.config.sections import RunConfig
from apr_jax.protocol import budget_within, conditioning_prefix

SWEEP_KINDS = ("children", "budget", "tokens")
ADAPTIVE = "adaptive"  # --sweep=children=adaptive,...: asked with no prefix, the model picks its width


SWEPT_TRACE_KIND = {"children": "apr", "budget": "sosp"}  # the trace kind a prefix sweep asks


def is_swept(kind: str, config: RunConfig) -> bool:
    """Whether ``--sweep=KIND=...`` asks this run anything: any run for
    ``tokens``, a conditioned run of the kind the prefix is for otherwise."""
    if kind == "tokens":
        return True
    return config.trace.kind == SWEPT_TRACE_KIND[kind] and bool(config.trace.condition)


def parse_sweep(spec: str) -> tuple[str, list[int | str]]:
    """``KIND=V1,V2,...``: positive integers, and for ``children`` also
    ``adaptive`` (no prefix: the model chooses its width)."""
    kind, _, values = spec.partition("=")
    if kind not in SWEEP_KINDS or not values:
        raise ValueError(f"--sweep={spec!r}: expected KIND=V1,V2,... with KIND one of {SWEEP_KINDS}")
    parsed: list[int | str] = []
    for v in values.split(","):
        if kind == "children" and v == ADAPTIVE:
            parsed.append(ADAPTIVE)
            continue
        try:
            parsed.append(int(v))
        except ValueError:
            raise ValueError(
                f"--sweep={spec!r}: values must be integers" + (f" or {ADAPTIVE}" if kind == "children" else "")
            ) from None
    if any(isinstance(v, int) and v <= 0 for v in parsed):
        raise ValueError(f"--sweep={spec!r}: values must be positive")
    return kind, parsed


def default_prefix(config: RunConfig, tokens_per_thread: int) -> str:
    """What a conditioned model is asked when no sweep chooses: APR its
    ``eval.max_children``, SoS+ the largest budget its thread's tokens hold."""
    if not config.trace.condition:
        return ""
    if config.trace.kind == "apr":
        return conditioning_prefix("apr", config.eval.max_children)
    return conditioning_prefix("sosp", budget_within(tokens_per_thread))


def sweep_settings(
    kind: str | None, values: Sequence[int | str], config: RunConfig
) -> list[tuple[str, dict[str, Any]]]:
    """(label, evaluate_problems kwargs) per sweep point. A run the sweep
    cannot ask (the other trace kind, or an unconditioned run, e.g. an
    adaptive-width model beside a conditioned run's c1..c4) gets its default
    setting alone: a reference point beside the swept run."""
    default = [("default", {"prefix": default_prefix(config, config.eval.tokens_per_thread)})]
    if kind is None:
        return default
    if kind == "tokens":
        return [(f"tokens={v}", {"tokens_per_thread": v, "prefix": default_prefix(config, v)}) for v in values]
    if not is_swept(kind, config):
        return default
    wanted = SWEPT_TRACE_KIND[kind]
    return [(f"{kind}={v}", {"prefix": "" if v == ADAPTIVE else conditioning_prefix(wanted, v)}) for v in values]
