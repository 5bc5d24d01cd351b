"""The ``trace`` section: how a task's trace generator writes its search as
thread trees (Countdown's generator, ``apr_jax.tasks.countdown.traces``,
reads every field). ``kind`` and ``condition`` are also what evaluation and
RL read to ask a conditioned model with a ``c<n>``/``b<n>`` prefix."""

from __future__ import annotations

import dataclasses
from typing import Any

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
        if self.kind not in KINDS:
            raise ValueError(f"trace kind {self.kind!r} is not one of {KINDS}")
        if self.style not in STYLES:
            raise ValueError(f"trace style {self.style!r} is not one of {STYLES}")
        for name in ("max_children", "max_depth", "beam_size", "max_nodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"trace {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.spawn_prob <= 1.0:
            raise ValueError(f"trace spawn_prob must be in [0, 1], got {self.spawn_prob}")
        if self.probe_nodes < 0:
            raise ValueError(f"trace probe_nodes must be >= 0, got {self.probe_nodes}")
        if not 0.0 <= self.sequential_share <= 1.0:
            raise ValueError(f"trace sequential_share must be in [0, 1], got {self.sequential_share}")
        if not self.viable_children > 0:
            raise ValueError(f"trace viable_children must be > 0, got {self.viable_children}")
        if self.sequential_share and self.condition:
            raise ValueError("trace sequential_share (the problem decides the width) and "
                             "trace.condition (a prefix requests it) do not combine; set one of them")
        if self.probe_nodes and self.condition:
            raise ValueError("trace probe_nodes (the search decides the width) and trace.condition "
                             "(a prefix requests it) do not combine; set one of them")

    @classmethod
    def from_config(cls, trace: Any) -> "TraceConfig":
        """From the ``trace`` section of a config (ConfigDict or mapping)."""
        values = dict(trace.to_dict() if hasattr(trace, "to_dict") else trace)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown trace config field(s) {unknown}; known: {sorted(fields)}")
        return cls(**values)
