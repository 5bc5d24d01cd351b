"""Countdown trees generated from their problems at the moment the input
pipeline reads them (``data.traces="streamed"``): training starts without
writing a single trace."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from apr_jax.config.trace import TraceConfig
from apr_jax.tasks.countdown.problems import Problem
from apr_jax.tasks.countdown.traces import make_trace
from apr_jax.threads import ThreadTree


class GeneratedTrees:
    """Countdown search trees made from ``problems`` on every read.

    A trace depends only on its problem and the trace settings (``trace_rng``),
    so a read returns the same tree as a stored build of the same config.
    The problems are held as flat arrays, so that pickling the source for
    input-pipeline worker processes costs milliseconds, not seconds.
    """

    def __init__(self, problems: Sequence[Problem], trace: Mapping[str, Any]):
        self._numbers_V = np.fromiter((n for p in problems for n in p.numbers), np.int64)
        self._starts_P = np.cumsum([0] + [len(p.numbers) for p in problems], dtype=np.int64)
        self._targets_P = np.fromiter((p.target for p in problems), np.int64, len(problems))
        self._shares_P = np.fromiter(  # NaN: the problem carries no reachable_share
            (np.nan if p.reachable_share is None else p.reachable_share for p in problems), np.float64, len(problems)
        )
        self._trace = TraceConfig.from_config(dict(trace))

    def __len__(self) -> int:
        return len(self._targets_P)

    def problem(self, index: int) -> Problem:
        start, end = self._starts_P[index], self._starts_P[index + 1]
        share = float(self._shares_P[index])
        return Problem(
            tuple(self._numbers_V[start:end].tolist()), int(self._targets_P[index]), None if np.isnan(share) else share
        )

    def __getitem__(self, index: int) -> ThreadTree:
        return make_trace(self.problem(index), self._trace)
