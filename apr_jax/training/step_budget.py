"""The step budget of a time-limited run: decided once, kept in the workdir.

A run with ``train.time_limit_minutes > 0`` and no budget yet times
``PROBE_STEPS`` steps after its first one (which compiles), and plans the
steps that fit in ``SAFETY`` of the time left, at most ``train.steps``. The
learning-rate schedule then anneals at the budget, so a run the limit cuts
short still leaves a finished model. The decision is written to
``WORKDIR/step_budget.json`` and read back when the run resumes, so a killed
and resumed run continues exactly as it would have; a run with no time limit
never probes, and its schedule is ``train.steps`` (deterministic).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax

BUDGET_FILE = "step_budget.json"
PROBE_STEPS = 10  # steps timed after the first
SAFETY = 0.9  # share of the time left that the budget plans for (validation and saves take the rest)


@dataclasses.dataclass(frozen=True)
class StepBudget:
    """A run's planned last step and how it was chosen."""

    steps: int  # the planned last step: training and the schedule end there
    decided_at: int  # the step at which it was chosen; the schedule ran to train.steps before it
    seconds_per_step: float  # the probe's measurement
    configured_steps: int  # train.steps when it was chosen

    def schedule_steps(self, step: int) -> int:
        """Where the schedule of step ``step`` (the next update's, 0-based) ends."""
        return self.configured_steps if step < self.decided_at else self.steps


def plan_steps(*, configured: int, done: int, seconds_per_step: float, seconds_left: float) -> int:
    """The last step that fits: ``done`` plus the steps that fit in ``SAFETY``
    of ``seconds_left``, at most ``configured``, at least ``done``."""
    fit = done + int(SAFETY * max(seconds_left, 0.0) / max(seconds_per_step, 1e-9))
    return max(done, min(configured, fit))


class Probe:
    """Times ``PROBE_STEPS`` steps after a run's first one and plans its budget."""

    def __init__(self, configured: int, deadline: float, clock: Callable[[], float]):
        self.configured, self.deadline, self.clock = configured, deadline, clock
        self.start: tuple[int, float] | None = None  # (step, time) after the first step

    def after_step(self, step: int, metrics: Any) -> StepBudget | None:
        """Called after each step; the budget once the probe has timed enough steps."""
        if self.start is not None and step - self.start[0] < PROBE_STEPS:
            return None
        jax.block_until_ready(metrics)  # time finished steps, not dispatches
        if self.start is None:
            self.start = (step, self.clock())
            return None
        seconds_per_step = (self.clock() - self.start[1]) / PROBE_STEPS
        planned = plan_steps(
            configured=self.configured,
            done=step,
            seconds_per_step=seconds_per_step,
            seconds_left=self.deadline - self.clock(),
        )
        return StepBudget(planned, step, seconds_per_step, self.configured)


def read_budget(workdir: str) -> StepBudget | None:
    """The budget a run in ``workdir`` chose, or None when it chose none."""
    path = os.path.join(workdir, BUDGET_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return StepBudget(**json.load(f))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a step budget ({e}); delete it to plan the budget again") from None


def write_budget(workdir: str, budget: StepBudget) -> None:
    """Write ``budget`` atomically (a crash leaves the old file or the new one)."""
    path = os.path.join(workdir, BUDGET_FILE)
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(dataclasses.asdict(budget), f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
