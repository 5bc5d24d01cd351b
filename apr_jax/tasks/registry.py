"""Tasks by name: ``get_task(config)`` builds the one ``config.task.name`` names."""

from __future__ import annotations

from typing import Any

from apr_jax.tasks.base import TASK_NAMES, Task
from apr_jax.tasks.countdown.task import CountdownTask
from apr_jax.tasks.jsonl_traces import JsonlTracesTask

TASKS = {"countdown": CountdownTask, "jsonl_traces": JsonlTracesTask}
assert tuple(TASKS) == TASK_NAMES


def get_task(config: Any) -> Task:
    """The task ``config.task.name`` names, built from ``config`` (a ``RunConfig``)."""
    name = config.task.name
    if name not in TASKS:
        raise ValueError(f"config.task.name={name!r} is not one of {', '.join(TASKS)}")
    return TASKS[name].from_config(config)


def task_class(name: str) -> Any:
    """The class of task ``name``: its ``problem_type`` (to read a dataset's
    problem files) and, for a streamed dataset, its ``streamed_trees``."""
    if name not in TASKS:
        raise ValueError(f"task {name!r} is not one of {', '.join(TASKS)}")
    return TASKS[name]
