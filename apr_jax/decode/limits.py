"""The engine's limits, shapes and decode-attention choice: what a config's
``eval`` section sets (``EvalConfig`` extends this) and what every
``EngineConfig`` starts from, with one default and one check each."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from apr_jax.model.attention import DECODE_ATTENTIONS


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int_fields(obj: object, where: str, bounds: tuple[tuple[str, int], ...]) -> None:
    """A ValueError naming ``where + name`` for the first field of ``obj`` in
    ``bounds`` that is not an integer at least its lower bound."""
    for name, low in bounds:
        value = getattr(obj, name)
        if not _is_int(value) or value < low:
            raise ValueError(f"{where}{name} must be an int >= {low}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class EngineLimits:
    max_children: int = 4  # children per spawn
    max_rounds: int = 2  # spawns per thread
    max_depth: int = 1  # nesting depth; 0 = no spawning
    tokens_per_thread: int = 192  # model-written tokens per thread
    batch_problems: int = 50  # problems per compiled engine call; 0 = all at once
    lanes: int = 0  # KV-cache lanes; 0 = every sample of a batch at once
    prefill_chunk: int = 8  # prompt and join tokens fed per thread per step
    long_prefill_chunks: tuple[int, ...] = ()  # wider feeds for longer queues, ascending (empty: off)
    row_buckets: int = 6  # live-row buckets (halvings of the lane pool) the engine compiles
    kv_buckets: int = 3  # KV-length buckets (halvings of the context)
    split_by_kv_length: bool = False  # one engine call per KV-length bucket: fewer KV reads, more calls
    # How decode calls read the cache: xla (gather lanes up to a KV bucket), paged (the
    # platform's Pallas paged kernel reads each row's pages below its length; interpreted
    # off GPU/TPU; inherit family: the table kernel, GPU only), auto (paged on GPU/TPU when
    # the shapes suit it, else xla).
    decode_attention: str = "xla"
    page_size: int = 16  # cache slots per page: divides the context (TPU: 8k and head_dim 128k; GPU: 2^k)

    checked_as: ClassVar[str] = "EngineConfig."  # how errors name a field

    def __post_init__(self):
        where = self.checked_as
        check_int_fields(
            self,
            where,
            (
                ("max_children", 1),
                ("max_rounds", 0),
                ("max_depth", 0),
                ("tokens_per_thread", 1),
                ("batch_problems", 0),
                ("lanes", 0),
                ("prefill_chunk", 1),
                ("row_buckets", 1),
                ("kv_buckets", 1),
                ("page_size", 1),
            ),
        )
        longs = self.long_prefill_chunks
        if (
            not isinstance(longs, tuple)
            or not all(_is_int(w) for w in longs)
            or list(longs) != sorted(set(longs))
            or (longs and longs[0] <= self.prefill_chunk)
        ):
            raise ValueError(
                f"{where}long_prefill_chunks={longs!r} must be a tuple of "
                f"ascending ints, each more than prefill_chunk={self.prefill_chunk}"
            )
        if not isinstance(self.split_by_kv_length, (bool, np.bool_)):
            raise ValueError(f"{where}split_by_kv_length must be a bool, got {self.split_by_kv_length!r}")
        if self.decode_attention not in DECODE_ATTENTIONS:
            raise ValueError(
                f"{where}decode_attention must be one of {', '.join(DECODE_ATTENTIONS)}, got {self.decode_attention!r}"
            )
