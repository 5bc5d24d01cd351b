"""Countdown's TFDS builder: problems with their SoS+ or APR thread trees,
generated from the ``task`` and ``trace`` config sections and written as
ArrayRecord (the layout of ``apr_jax.data.tfds_builder``). Trace generation
runs in a process pool when ``num_workers > 1``.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator, Mapping, Sequence

import tensorflow_datasets as tfds

from apr_jax.config.trace import TraceConfig
from apr_jax.data.tfds_builder import SPLITS
from apr_jax.runtime.processes import process_pool
from apr_jax.tasks.countdown.problems import MAX_INPUTS, MIN_INPUTS, Problem
from apr_jax.tasks.countdown.solver import is_solvable
from apr_jax.tasks.countdown.traces import make_trace

_CHUNK = 32  # problems per task sent to a worker


def _as_dict(section: Any) -> dict[str, Any]:
    return dict(section.to_dict() if hasattr(section, "to_dict") else section)


def trace_one(job: tuple[int, dict[str, Any], dict[str, Any], bool]) -> tuple[int, str | None, bool, str]:
    """(index, problem, trace config, check) -> (index, tree JSON or None, solved, error).

    With ``check`` an unsolvable or out-of-range problem is an error string,
    not an exception, so a pool never dies on one bad problem.
    """
    index, problem_dict, trace_dict, check = job
    try:
        problem = Problem.from_dict(problem_dict)
        if check:
            if not MIN_INPUTS <= len(problem.numbers) <= MAX_INPUTS:
                return index, None, False, (f"has {len(problem.numbers)} numbers, outside [{MIN_INPUTS}, {MAX_INPUTS}]")
            if not is_solvable(problem.numbers, problem.target):
                return index, None, False, "is not solvable"
        tree = make_trace(problem, TraceConfig.from_config(trace_dict))
    except ValueError as e:
        if not check:
            raise
        return index, None, False, str(e)
    return index, tree.to_json(), bool(tree.meta.get("solved", tree.solution)), ""


def generate_traces(
    problems: Sequence[Problem],
    trace: Mapping[str, Any],
    *,
    num_workers: int = 1,
    check: bool = False,
    progress: str | None = None,
) -> Iterator[tuple[int, str | None, bool, str]]:
    """Yields ``trace_one`` results for ``problems`` in order.

    ``num_workers`` <= 1 runs in this process; more uses a process pool.
    ``progress`` names a tqdm bar shown only when stderr is a terminal.
    """
    trace = _as_dict(trace)
    TraceConfig.from_config(trace)  # bad trace config: fail here, in one line
    jobs = [(i, p.to_dict(), trace, check) for i, p in enumerate(problems)]
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=progress, unit="trace", leave=False)
    try:
        if num_workers <= 1 or len(jobs) < 2 * _CHUNK:
            results = map(trace_one, jobs)
            yield from _with_bar(results, bar)
        else:
            workers = min(num_workers, len(jobs) // _CHUNK)
            try:
                with process_pool(workers) as pool:
                    yield from _with_bar(pool.map(trace_one, jobs, chunksize=_CHUNK), bar)
            except BrokenProcessPool:
                raise RuntimeError(
                    "a trace worker process died; if the calling script has no "
                    "'if __name__ == \"__main__\":' guard, add one or set "
                    "data.num_workers=1"
                ) from None
    finally:
        if bar is not None:
            bar.close()


def _with_bar(results, bar):
    for result in results:
        if bar is not None:
            bar.update(1)
        yield result


class AprCountdown(tfds.core.GeneratorBasedBuilder):
    """Countdown problems with their SoS+ or APR thread trees."""

    VERSION = tfds.core.Version("3.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Thread trees as JSON text with problem numbers and target.",
        "2.0.0": "Terse child messages put the operations before the numbers.",
        "3.0.0": "The tree alone: numbers and target live in the tree's problem.",
    }

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """No code path: TFDS would only use it to find download checksums,
        and resolving it needs the ``importlib_resources`` backport."""
        return None

    def __init__(
        self,
        *,
        task: Mapping[str, Any],
        trace: Mapping[str, Any],
        splits: Mapping[str, Sequence[Problem]],
        num_workers: int = 1,
        show_progress: bool = False,
        **kwargs,
    ):
        self.task = _as_dict(task)
        self.trace = _as_dict(trace)
        TraceConfig.from_config(self.trace)
        self.num_workers = num_workers
        self.show_progress = show_progress
        self._splits = {name: list(splits[name]) for name in SPLITS}
        # Per split: examples, failed searches, seconds spent generating.
        self.stats: dict[str, dict[str, float]] = {}
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Countdown problems with search traces as thread trees (JSON).",
            features=tfds.features.FeaturesDict({"tree": tfds.features.Text()}),
            metadata=tfds.core.MetadataDict(task=self.task, trace=self.trace),
        )

    def problems(self) -> dict[str, list[Problem]]:
        """The split problems (the task's ``splits()``)."""
        return self._splits

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        # TFDS cannot write an empty split; an empty split is simply absent.
        return {name: self._generate_examples(name) for name in SPLITS if self.problems()[name]}

    def _generate_examples(self, split: str):
        problems = self.problems()[split]
        start = time.perf_counter()
        failed = 0
        progress = f"{split} traces" if self.show_progress else None
        for index, tree_json, solved, _ in generate_traces(
            problems, self.trace, num_workers=self.num_workers, progress=progress
        ):
            failed += int(not solved)
            yield index, {"tree": tree_json}
        self.stats[split] = {"examples": len(problems), "failed": failed, "seconds": time.perf_counter() - start}
