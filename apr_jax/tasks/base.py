"""The task interface: what a task provides and how its verifier scores."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

TASK_NAMES = ("countdown", "jsonl_traces")
DEFAULT_TASK = "countdown"


@dataclasses.dataclass(frozen=True)
class Score:
    """A verifier's verdict on a root's written text.

    ``reward`` is 1.0 for a correct answer and 0.0 for a wrong one (a user
    checker may give partial credit in between); ``answer`` is the extracted
    final answer (None when the text has no answer line), JSON-serialisable.
    """

    reward: float
    reason: str
    answer: Any = None

    @property
    def ok(self) -> bool:
        """Solved: full credit."""
        return self.reward >= 1.0


class Task(Protocol):
    """What a task provides (see the module docstring)."""

    name: str
    answer_key: str  # the result rows' field for the extracted answer
    problem_type: Any  # has from_dict(d), to_dict(), key; hashable
    accelerator_hint: str  # printed after a CPU run's evaluation: configs for a real run ("": none)

    @staticmethod
    def check_settings(task: Any) -> None:
        """A one-line ValueError for a bad ``task`` section (a mapping);
        called when a config is loaded."""

    @staticmethod
    def contexts(task: Any) -> tuple[str, ...]:
        """The context families (``protocol.CONTEXTS``) its trees train in,
        given its ``task`` section (a mapping)."""

    def splits(self) -> dict[str, list[Any]]:
        """Problems per split (train, validation, test)."""

    def prompt(self, problem: Any, prefix: str = "") -> str:
        """The root thread's prompt for ``problem``."""

    def score(self, text: str, problem: Any) -> Score:
        """Score what the root wrote (its model-written text) against ``problem``."""

    def difficulty(self, problem: Any) -> float | None:
        """The oracle difficulty of ``problem`` in [0, 1], higher is harder;
        None when the task has none."""

    def cache_key(self) -> dict[str, Any]:
        """Extra identity of the built dataset (e.g. the content of input files)."""

    def dataset_builder(self, *, data_dir: str, num_workers: int, show_progress: bool) -> Any:
        """A TFDS builder writing one ``tree`` (ThreadTree JSON) per problem;
        ``problems()`` gives the splits, ``stats[split]["failed"]`` the traces
        that do not reach the reference answer."""

    # A task that generates its trees from its problems may also stream them
    # (``data.traces="streamed"``): it sets ``streams_traces = True`` and gives
    # the two methods below. Other tasks set ``streams_traces = False``.
    streams_traces: bool

    def generate_trees(self, problems: list[Any], num_workers: int) -> tuple[list[Any], int]:
        """The ``ThreadTree`` of each problem, in order, and how many of them
        fail to reach the reference answer (streamed tasks only)."""

    @staticmethod
    def streamed_trees(problems: list[Any], trace: Any) -> Any:
        """A random-access source generating each problem's tree when it is
        read (``len`` and ``[index]``), from the ``trace`` section as written;
        it must pickle cheaply (input-pipeline worker processes get a copy)."""


def answer_key_value(answer: Any) -> Any:
    """A hashable form of an extracted answer (None for no or an empty answer),
    for cons@k."""
    if not answer:
        return None
    return tuple(answer) if isinstance(answer, list) else answer
