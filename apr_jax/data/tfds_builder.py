"""The TFDS builder of trees read from a task's files, written as ArrayRecord
(no TensorFlow): one example per problem, the ``ThreadTree`` as JSON text.
Tasks that generate their trees bring their own builder (Countdown:
``apr_jax.tasks.countdown.tfds_builder``) with the same layout: a ``tree``
text feature, ``problems()`` and per-split ``stats``.

``tfds.core.DatasetInfo`` is built directly (``dataset_info_from_configs``
would look for metadata files next to the module), ``code_path`` is None
(nothing is downloaded), and ``file_format="array_record"`` needs no
TensorFlow.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import tensorflow_datasets as tfds

SPLITS = ("train", "validation", "test")


class AprTraceFiles(tfds.core.GeneratorBasedBuilder):
    """Thread trees given per split (a ``jsonl_traces`` task's files)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Thread trees as JSON text."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """No code path: TFDS would only use it to find download checksums,
        and resolving it needs the ``importlib_resources`` backport."""
        return None

    def __init__(
        self,
        *,
        trees: Mapping[str, Sequence[str]],
        problems: Mapping[str, Sequence[Any]],
        failed: Mapping[str, int],
        **kwargs,
    ):
        self._trees = {split: list(trees[split]) for split in SPLITS}
        self._problems = {split: list(problems[split]) for split in SPLITS}
        self.stats = {split: {"examples": len(self._trees[split]), "failed": int(failed[split])} for split in SPLITS}
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Thread trees (JSON) read from JSONL files.",
            features=tfds.features.FeaturesDict({"tree": tfds.features.Text()}),
        )

    def problems(self) -> dict[str, list[Any]]:
        return self._problems

    def _split_generators(self, dl_manager):
        del dl_manager
        return {name: self._generate_examples(name) for name in SPLITS if self._trees[name]}

    def _generate_examples(self, split: str):
        for index, tree_json in enumerate(self._trees[split]):
            yield index, {"tree": tree_json}


def resolve_num_workers(num_workers: int) -> int:
    """``0`` means one worker per CPU."""
    if num_workers < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
    return num_workers or os.cpu_count() or 1
