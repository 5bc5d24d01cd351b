"""Token ids of the spawn/join protocol, gathered in one place for the decoders."""

from __future__ import annotations

import dataclasses
from typing import Any

from apr_jax import protocol

CHILD_PREFIX = 2  # tokens before a child's message in its context: ``<bos> <child>``


@dataclasses.dataclass(frozen=True)
class ProtocolIds:
    """Ids of the special tokens. Defaults are the tokenizer's fixed ids:
    pad=0, unk=1, bos=2, eos=3, then ``protocol.RESERVED`` in order from 4."""

    pad: int = 0
    bos: int = 2
    eos: int = 3
    child: int = 4
    spawn_open: int = 5
    spawn_close: int = 6
    sep: int = 7
    join_open: int = 8
    join_close: int = 9
    return_open: int = 10
    return_close: int = 11
    trunc: int = 12

    def __post_init__(self):
        ids = dataclasses.astuple(self)
        if any(not isinstance(i, int) or i < 0 for i in ids):
            raise ValueError(f"protocol ids must be non-negative ints, got {ids}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"protocol ids must be distinct, got {ids}")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "ProtocolIds":
        """Build from a tokenizer exposing ``protocol_ids`` (reserved string ->
        id) and ``bos_id``/``eos_id``/``pad_id``."""
        table = getattr(tokenizer, "protocol_ids", None)
        if not isinstance(table, dict):
            raise ValueError("tokenizer has no protocol_ids dict")
        missing = [s for s in protocol.RESERVED if s not in table]
        if missing:
            raise ValueError(f"tokenizer protocol_ids lacks {missing}")
        return cls(
            pad=int(getattr(tokenizer, "pad_id", 0)),
            bos=int(tokenizer.bos_id),
            eos=int(tokenizer.eos_id),
            **{field: int(table[string]) for string, field in RESERVED_FIELDS.items()},
        )

    def reserved(self) -> dict[str, int]:
        """Each reserved protocol string's id."""
        return {string: getattr(self, field) for string, field in RESERVED_FIELDS.items()}


# The ProtocolIds field of each reserved protocol string.
RESERVED_FIELDS = {
    protocol.CHILD: "child",
    protocol.SPAWN_OPEN: "spawn_open",
    protocol.SPAWN_CLOSE: "spawn_close",
    protocol.SEP: "sep",
    protocol.JOIN_OPEN: "join_open",
    protocol.JOIN_CLOSE: "join_close",
    protocol.RETURN_OPEN: "return_open",
    protocol.RETURN_CLOSE: "return_close",
    protocol.TRUNC: "trunc",
}
