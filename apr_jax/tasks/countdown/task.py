"""Countdown behind the task interface: seeded problem splits (one count of
numbers, or several mixed: ``task.num_inputs = [3, 4]``), SoS+/APR search
traces, the exact verifier and the oracle difficulty (the modules beside it)."""

from __future__ import annotations

from typing import Any, Mapping

from apr_jax import protocol
from apr_jax.config import checks
from apr_jax.tasks.base import Score
from apr_jax.tasks.countdown.problems import Problem, difficulty, input_counts, make_splits, unseen_problems
from apr_jax.tasks.countdown.render import problem_prompt
from apr_jax.tasks.countdown.streamed import GeneratedTrees
from apr_jax.tasks.countdown.tfds_builder import AprCountdown, generate_traces
from apr_jax.tasks.countdown.verifier import extract_answer, verify
from apr_jax.threads import ThreadTree

# num_inputs: an int, or a list of ints drawn in equal shares (make_splits).
RANGE_KEYS = ("num_inputs", "min_number", "max_number", "min_target", "max_target")


class CountdownTask:
    name = "countdown"
    answer_key = "operations"
    problem_type = Problem
    streams_traces = True
    accelerator_hint = (
        "for real accuracy train on an accelerator: configs/countdown4_apr_h200.py "
        "(one GPU) or configs/countdown4_apr_228m.py (TPU pod slice)"
    )

    def __init__(self, task: Mapping[str, Any], trace: Mapping[str, Any]):
        self.task = {k: v for k, v in task.items() if k != "name"}
        self.trace = dict(trace)

    @staticmethod
    def contexts(task: Mapping[str, Any]) -> tuple[str, ...]:
        """Both families: an inherit-mode tree is the message-mode tree with its joins rewritten."""
        del task
        return protocol.CONTEXTS

    @staticmethod
    def check_settings(task: Mapping[str, Any]) -> None:
        for name in ("num_train", "num_test"):
            if name in task:
                checks.positive_int(f"task.{name}", task[name])
        if "num_inputs" in task:
            input_counts(task["num_inputs"], name="config.task.num_inputs")

    @classmethod
    def from_config(cls, config: Any) -> "CountdownTask":
        """From a ``RunConfig``: its task section and its trace section as written."""
        return cls(config.task.as_dict(), config.section("trace"))

    def splits(self, num_workers: int = 1) -> dict[str, list[Problem]]:
        t = self.task
        return make_splits(
            t["num_train"],
            t["num_validation"],
            t["num_test"],
            seed=t["seed"],
            num_workers=num_workers,
            **{k: t[k] for k in RANGE_KEYS},
        )

    def prompt(self, problem: Problem, prefix: str = "") -> str:
        return problem_prompt(problem, self.trace["style"], prefix)

    def score(self, text: str, problem: Problem) -> Score:
        verdict = verify(text, problem)
        return Score(float(verdict.ok), verdict.reason, extract_answer(text) if isinstance(text, str) else None)

    def difficulty(self, problem: Problem | Mapping[str, Any]) -> float:
        """One minus the share of first moves that keep the target reachable
        (computed when the problem does not carry it); higher is harder."""
        return difficulty(problem)

    def cache_key(self) -> dict[str, Any]:
        return {}  # the task and trace sections say it all

    def dataset_builder(self, *, data_dir: str, num_workers: int, show_progress: bool) -> Any:
        return AprCountdown(
            task=self.task,
            trace=self.trace,
            splits=self.splits(num_workers),
            num_workers=num_workers,
            show_progress=show_progress,
            data_dir=data_dir,
        )

    def unseen(self, count: int, exclude: set) -> list[Problem]:
        """Up to ``count`` solvable problems in the task's ranges that are not in ``exclude``."""
        t = self.task
        return unseen_problems(count, exclude, seed=t["seed"], **{k: t[k] for k in RANGE_KEYS})

    def generate_trees(self, problems: list[Problem], num_workers: int) -> tuple[list[ThreadTree], int]:
        results = list(generate_traces(problems, self.trace, num_workers=num_workers))
        trees = [ThreadTree.from_json(tree_json) for _, tree_json, _, _ in results]
        return trees, sum(not solved for _, _, solved, _ in results)

    @staticmethod
    def streamed_trees(problems: list[Problem], trace: Mapping[str, Any]) -> GeneratedTrees:
        return GeneratedTrees(problems, trace)
