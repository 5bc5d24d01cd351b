"""The training loop shared by SFT and RL.

A mode plugs in a ``Task`` (its train state and data stream, one step, the
logged row); ``run_loop`` owns the rest: restore from the newest readable
checkpoint, the step count, SIGTERM, the time limit and the step budget it
plans (``apr_jax.training.step_budget``), the NaN policy, metrics and progress,
checkpoint cadence and the end-of-run save.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from typing import Any, Callable, Protocol

import jax
import numpy as np

from apr_jax.config.sections import TrainConfig
from apr_jax.runtime.checkpoint import Checkpointer
from apr_jax.runtime.metrics_log import MetricsLogger
from apr_jax.training.step_budget import Probe, StepBudget, read_budget, write_budget
from apr_jax.training.train_state import TrainState, abstract_like


class TrainingError(RuntimeError):
    """A fault that stops training; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """The loop's part of the ``train`` section."""

    steps: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    on_nan: str  # "stop" | "skip"
    time_limit_minutes: float  # 0: no limit

    @classmethod
    def from_config(cls, train: TrainConfig) -> "LoopSettings":
        return cls(
            steps=int(train.steps),
            log_every=int(train.log_every),
            checkpoint_every=int(train.checkpoint_every),
            keep_checkpoints=int(train.keep_checkpoints),
            on_nan=str(train.on_nan),
            time_limit_minutes=float(train.time_limit_minutes),
        )


class Task(Protocol):
    """A training mode as the loop drives it."""

    state: TrainState  # saved and restored by the loop
    data: Any  # the data or prompt stream, checkpointed with the state
    check_lag: int  # steps between a step and the check of its finite flag (0 or 1)
    nan_label: str  # prefix of the NaN error, e.g. "RL "
    nan_advice: str  # the NaN error's last clause
    # The update count where the learning-rate schedule ends (in the task's
    # steps); the loop sets it from the step budget before each step.
    schedule_steps: int

    def meta(self) -> dict[str, Any]:
        """JSON saved with every checkpoint."""

    def describe(self) -> str:
        """One line printed when the run starts."""

    def start_row(self) -> dict[str, Any]:
        """The row logged at step 0 of a fresh run, before any training (empty: none)."""

    def step(self) -> dict[str, Any]:
        """Run one training step; its metrics, the finite flag under ``finite``."""

    def row(self, step: int, metrics: dict[str, Any]) -> dict[str, float]:
        """The logged row at a log step (``metrics``: that step's), closing the window."""


class StopFlag:
    """Set by SIGTERM; the loop checkpoints and exits at the next step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        """Give the signal back (once everything is saved, SIGTERM may kill)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum


@dataclasses.dataclass
class LoopResult:
    step: int
    last: dict[str, Any]  # the last logged row
    preempted: bool  # stopped by a signal
    out_of_time: bool  # stopped by the time limit
    planned_steps: int  # the run's last step: train.steps, or the step budget of a time limit

    @property
    def finished(self) -> bool:
        """The run trained to its planned last step (or its time limit ran out)."""
        return self.step >= self.planned_steps or self.out_of_time


def _agreed(budget: StepBudget) -> StepBudget:
    """``budget`` with process 0's steps: every process plans the same budget."""
    if jax.process_count() == 1:
        return budget
    from jax.experimental import multihost_utils

    steps = int(multihost_utils.broadcast_one_to_all(np.int32(budget.steps)))
    return dataclasses.replace(budget, steps=steps)


def run_loop(
    task: Task,
    settings: LoopSettings,
    workdir: str,
    *,
    stop_at: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> LoopResult:
    """Restore ``task`` from ``workdir`` and train it to ``settings.steps``, or
    to the step budget a time limit plans (``apr_jax.training.step_budget``); ``stop_at``
    ends it earlier, checkpointed and resumable, as a preemption would.
    ``clock`` (seconds) times the limit and the budget's probe."""
    checkpointer = Checkpointer(workdir, keep=settings.keep_checkpoints)
    params, opt_state = map(abstract_like, task.state.checkpoint_trees())
    restored = checkpointer.restore_latest(params, opt_state, task.data)
    start_step = 0
    if restored is not None:
        start_step, params, opt_state, _ = restored
        task.state.replace_from_checkpoint(params, opt_state)
    logger = MetricsLogger(workdir, settings.steps, start_step)
    logger.print(task.describe())
    if restored is not None:
        logger.print(f"resumed from step {start_step} in {checkpointer.directory}")
    else:
        first = task.start_row()
        if first:
            logger.write(0, first)

    def save(step: int) -> None:
        checkpointer.save(step, *task.state.checkpoint_trees(), task.data, task.meta())

    skipped = 0

    def check_finite(step: int, metrics: dict[str, Any]) -> None:
        nonlocal skipped
        if bool(metrics["finite"]):
            return
        if settings.on_nan == "skip":
            skipped += 1
            return
        checkpointer.wait()
        good = checkpointer.steps()
        raise TrainingError(
            f"{task.nan_label}loss or gradient became NaN/Inf at step {step}; the update was "
            f"discarded and training stopped; last good checkpoint: {good[-1] if good else 'none'}; "
            f"{task.nan_advice}"
        )

    budget = read_budget(workdir)
    if budget is not None:
        logger.print(
            f"step budget {budget.steps} of {settings.steps} (planned at step "
            f"{budget.decided_at} for the time limit; {workdir}/step_budget.json)"
        )
    planned = budget.steps if budget is not None else settings.steps
    logger.set_total(planned)

    stop = StopFlag()
    stop.install()
    deadline = clock() + 60 * settings.time_limit_minutes if settings.time_limit_minutes > 0 else math.inf
    step, last_saved, last = start_step, (start_step if restored is not None else -1), {}
    pending: list[tuple[int, dict[str, Any]]] = []  # steps whose finite flag is not checked yet
    out_of_time = False
    probe = Probe(settings.steps, deadline, clock) if budget is None and settings.time_limit_minutes > 0 else None
    try:
        while step < min(planned, stop_at or planned):
            if stop.signal is not None:
                break
            if clock() > deadline:
                logger.print(f"time limit of {settings.time_limit_minutes} min reached at step {step}")
                out_of_time = True
                break
            task.schedule_steps = budget.schedule_steps(step) if budget is not None else settings.steps
            metrics = task.step()
            step += 1
            if probe is not None and (planned_budget := probe.after_step(step, metrics)):
                budget, probe = _agreed(planned_budget), None
                if jax.process_index() == 0:
                    write_budget(workdir, budget)
                planned = task.schedule_steps = budget.steps
                logger.set_total(planned)
                logger.print(
                    f"step budget: {planned} of {settings.steps} steps fit in the time "
                    f"limit at {budget.seconds_per_step:.3f} s/step; the learning rate "
                    f"anneals at step {planned}"
                )
            pending.append((step, metrics))
            if len(pending) > task.check_lag:
                check_finite(*pending.pop(0))
            logger.advance(1)
            if step % settings.log_every == 0 or step == planned:
                while pending:
                    check_finite(*pending.pop(0))
                last = task.row(step, metrics)
                if skipped:
                    last["skipped_steps"] = skipped
                logger.write(step, last)
            if step % settings.checkpoint_every == 0:
                save(step)
                last_saved = step
        while pending:
            check_finite(*pending.pop(0))
        if step != last_saved:
            save(step)
        checkpointer.wait()
        if stop.signal is not None:
            logger.print(
                f"received signal {stop.signal}: saved step {step} to "
                f"{checkpointer.directory}; rerun the same command to resume"
            )
    finally:
        checkpointer.close()
        logger.close()
        stop.uninstall()
    return LoopResult(step, last, stop.signal is not None, out_of_time, planned)
