"""The ``trace`` section: how a task's trace generator writes its search as
thread trees (Countdown's generator, ``apr_jax.tasks.countdown.traces``,
reads every field). ``kind`` and ``condition`` are also what evaluation and
RL read to ask a conditioned model with a ``c<n>``/``b<n>`` prefix."""

from __future__ import annotations

import dataclasses
from typing import Any

from apr_jax.config import checks
from apr_jax.config.checks import ConfigError

KINDS = ("apr", "sosp")  # a tree of threads | one sequential thread (SoS+)
STYLES = ("terse", "reference")  # how search lines are written


@dataclasses.dataclass(frozen=True)
class TraceConfig:
    kind: str = "apr"  # apr | sosp
    style: str = "terse"  # terse | reference
    max_children: int = 4  # children per spawn round
    spawn_prob: float = 1.0  # probability that a spawn point spawns
    max_depth: int = 1  # thread nesting depth (1 = children do not spawn)
    beam_size: int = 4  # successors kept per expanded node
    condition: bool = False  # prefix the prompt with c<children> (drawn per trace) / b<token budget>
    seed: int = 0
    max_nodes: int = 16  # nodes one root branch may visit (leaves included)
    # apr: a problem with at least this reachable share is searched by the root alone (0 = off);
    # below it the root spawns ceil(viable_children / share) children per round
    sequential_share: float = 0.0
    viable_children: float = 0.5
    probe_nodes: int = 0  # apr: nodes a spawn point searches its best successor itself first (0 = off)

    def __post_init__(self):
        checks.choice("trace.kind", self.kind, KINDS)
        checks.choice("trace.style", self.style, STYLES)
        for name in ("max_children", "max_depth", "beam_size", "max_nodes"):
            checks.positive_int(f"trace.{name}", getattr(self, name))
        checks.within("trace.spawn_prob", self.spawn_prob, 0.0, 1.0)
        checks.non_negative_int("trace.probe_nodes", self.probe_nodes)
        checks.within("trace.sequential_share", self.sequential_share, 0.0, 1.0)
        checks.positive("trace.viable_children", self.viable_children)
        if self.sequential_share and self.condition:
            raise ConfigError(
                "config.trace.sequential_share (the problem decides the width) and "
                "config.trace.condition (a prefix requests it) do not combine; set one of them"
            )
        if self.probe_nodes and self.condition:
            raise ConfigError(
                "config.trace.probe_nodes (the search decides the width) and "
                "config.trace.condition (a prefix requests it) do not combine; set one of them"
            )

    @classmethod
    def from_config(cls, trace: Any) -> "TraceConfig":
        """From the ``trace`` section of a config (ConfigDict or mapping)."""
        values = dict(trace.to_dict() if hasattr(trace, "to_dict") else trace)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown trace config field(s) {unknown}; known: {sorted(fields)}")
        return cls(**values)
