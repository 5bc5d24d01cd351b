"""The random-access source of a built split's stored thread trees, as the
input pipeline reads them. A task that generates its trees can instead give a
source that generates each tree when it is read (``data.traces="streamed"``,
``Task.streamed_trees``)."""

from __future__ import annotations

from typing import Any

from apr_jax.threads import ThreadTree


class StoredTrees:
    """The trees of a built split's records (each ``{"tree": JSON bytes}``)."""

    def __init__(self, records: Any):
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> ThreadTree:
        return ThreadTree.from_json(self._records[index]["tree"].decode("utf-8"))
