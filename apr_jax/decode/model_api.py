"""The pure decode interface the sampler and the engine run on.

A model is anything with the cache API
``init_cache(num_lanes, max_len) -> cache`` and
``decode(tokens_BxT, positions_BxT, cache, lanes_B, kv_len) -> (logits_BxTxV, cache)``.
The cache is a pool of lanes (its batch axis). Row b reads and writes lane
``lanes_B[b]``; its token at position p >= 0 goes to slot p of that lane
(positions < 0 are padding: nothing written, logits ignored), and a query at
position p sees slots <= p of its lane. ``kv_len`` is a static int bounding
every position fed, so a model reads only slots ``[0, kv_len)``. A lane reused
by a new thread is rewritten from slot 0 upward; stale slots past a query's
position never matter. ``lanes_B=None, kv_len=None`` mean one lane per row and
the whole cache. A model with a paged decode also takes ``page_size`` > 0
(a keyword the engine passes only to such models): a width-1 call then reads
each row's slots 0..position in place from the whole pool, ``kv_len``
notwithstanding, and ``DecodeModel.page_size_for`` says which page size an
``eval.decode_attention`` choice gives it (``Transformer.decode_page_size``).
The inherit family's engine passes a ``table`` keyword (``attention.KVTable``:
the lane ranges each row reads) to models that read one (the Transformer).
``as_decode_model`` turns a Flax NNX module with that API into a
``DecodeModel``: parameters as a pytree plus a pure function, so the decoding
loops can be jitted with the parameters as an argument.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

DecodeFn = Callable[..., tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class DecodeModel:
    """``decode_fn(params, tokens_BxT, positions_BxT, cache, lanes_B, kv_len) ->
    (logits, cache)`` must be pure; ``init_cache(num_lanes, max_len)`` returns
    zeroed arrays; ``page_size_for(decode_attention, page_size, max_len,
    tables)`` is the page size its paged decode reads in, reading the inherit
    family's KV tables or not (0: none; None: no paged decode)."""

    params: Any
    decode_fn: DecodeFn
    init_cache: Callable[[int, int], Any]
    page_size_for: Callable[..., int] | None = None


def as_decode_model(model: Any) -> DecodeModel:
    """Accept a ``DecodeModel`` or an NNX module with ``decode``/``init_cache``."""
    if isinstance(model, DecodeModel):
        return model
    if not (callable(getattr(model, "decode", None)) and callable(getattr(model, "init_cache", None))):
        raise ValueError(f"{type(model).__name__} is not a DecodeModel and has no decode/init_cache methods")
    from flax import nnx

    if not isinstance(model, nnx.Module):
        raise ValueError(f"{type(model).__name__} has decode/init_cache but is not an nnx.Module")
    graphdef, state = nnx.split(model)
    return DecodeModel(
        params=state,
        decode_fn=NnxDecode(graphdef),
        init_cache=model.init_cache,
        page_size_for=getattr(model, "decode_page_size", None),
    )


@dataclasses.dataclass(frozen=True)
class NnxDecode:
    """Pure decode of an NNX module; equal graphdefs compare equal, so jitted
    loops taking it as a static argument compile once per model structure."""

    graphdef: Any

    def __call__(self, params, tokens_BxT, positions_BxT, cache, lanes_B=None, kv_len=None, page_size=0, table=None):
        from flax import nnx

        extra = {"page_size": page_size} if page_size else {}
        if table is not None:
            extra["table"] = table
        return nnx.merge(self.graphdef, params).decode(tokens_BxT, positions_BxT, cache, lanes_B, kv_len, **extra)
