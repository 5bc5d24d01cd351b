"""The spawn/join token protocol, shared by traces, training data and the engine.

A thread is a token sequence. The protocol's reserved strings are sentencepiece
user-defined symbols, so each encodes to exactly one token whatever the task.

    root:   <bos> PROMPT ... <spawn> m1 <sep> m2 </spawn> <join> r1 <sep> r2 </join> ... <eos>
    child:  <bos> <child> m_i ... <return> r_i </return>

The parent writes the spawn block (model output, ending at ``</spawn>``). Each
child's whole context is ``<bos> <child> m_i``. A child ends by writing its
return block. The engine (never the model) writes the join block: every
child's return message in child order, framed by ``<join>``/``</join>`` and
separated by ``<sep>``. A child cut off by a limit before returning is joined
as ``<trunc>``.
"""

from __future__ import annotations

CHILD = "<child>"
SPAWN_OPEN = "<spawn>"
SPAWN_CLOSE = "</spawn>"
SEP = "<sep>"
JOIN_OPEN = "<join>"
JOIN_CLOSE = "</join>"
RETURN_OPEN = "<return>"
RETURN_CLOSE = "</return>"
TRUNC = "<trunc>"

# Order matters: sentencepiece gives user-defined symbols consecutive ids in
# this order, right after pad=0, unk=1, bos=2, eos=3.
RESERVED: tuple[str, ...] = (
    CHILD, SPAWN_OPEN, SPAWN_CLOSE, SEP, JOIN_OPEN, JOIN_CLOSE,
    RETURN_OPEN, RETURN_CLOSE, TRUNC,
)


def spawn_block(messages: list[str]) -> str:
    """The text a parent writes to spawn one child per message."""
    if not messages:
        raise ValueError("a spawn block needs at least one message")
    return SPAWN_OPEN + SEP.join(messages) + SPAWN_CLOSE


def join_block(returns: list[str]) -> str:
    """The text the engine copies into the parent after its children return."""
    return JOIN_OPEN + SEP.join(returns) + JOIN_CLOSE


def child_prompt(message: str) -> str:
    """A child's whole context (after BOS) given its spawn message."""
    return CHILD + message


def return_block(message: str) -> str:
    """The text a child ends with to hand ``message`` back to its parent."""
    return RETURN_OPEN + message + RETURN_CLOSE
