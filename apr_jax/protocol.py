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

That is the ``message`` context family. In the ``inherit`` family
(``data.context="inherit"``) a child's context is its parent's whole context
up to the end of the spawn block, then its path header ``<child> m_i``; the
child ends at ``</return>``. At the join the engine writes, per
``data.join``:

    stitch: <join>                                 the paths are read in place
    linear: <join> path_1 <sep> path_2 </join>     path_i = <child> m_i ... </return>

A stitched parent resumes at the position after its longest path.
"""

from __future__ import annotations

import math
import re

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
    CHILD,
    SPAWN_OPEN,
    SPAWN_CLOSE,
    SEP,
    JOIN_OPEN,
    JOIN_CLOSE,
    RETURN_OPEN,
    RETURN_CLOSE,
    TRUNC,
)


CONTEXTS = ("message", "inherit")  # what a child sees: its message alone | its parent's context too
JOINS = ("stitch", "linear")  # inherit family: how the parent reads the paths back


def spawn_block(messages: list[str]) -> str:
    """The text a parent writes to spawn one child per message."""
    if not messages:
        raise ValueError("a spawn block needs at least one message")
    return SPAWN_OPEN + SEP.join(messages) + SPAWN_CLOSE


def join_block(returns: list[str]) -> str:
    """The text the engine copies into the parent after its children return."""
    return JOIN_OPEN + SEP.join(returns) + JOIN_CLOSE


_SPAWN_RE = re.compile(re.escape(SPAWN_OPEN) + "(.*?)" + re.escape(SPAWN_CLOSE), re.S)


def spawn_messages(written: str) -> list[list[str]]:
    """The messages of every closed spawn block in ``written``, block by block."""
    return [block.split(SEP) for block in _SPAWN_RE.findall(written)]


def inherit_join(paths: list[str], join: str) -> str:
    """The join the engine writes into a parent in the inherit family, given
    each child's whole text ``<child> m_i ... </return>`` (see the module doc)."""
    if join not in JOINS:
        raise ValueError(f"join {join!r} is not one of {JOINS}")
    return JOIN_OPEN if join == "stitch" else join_block(paths)


def child_prompt(message: str) -> str:
    """A child's whole context (after BOS) given its spawn message."""
    return CHILD + message


def return_block(message: str) -> str:
    """The text a child ends with to hand ``message`` back to its parent."""
    return RETURN_OPEN + message + RETURN_CLOSE


# ---- conditioning prefixes -------------------------------------------------------
# A conditioned model is asked for its shape by a prompt prefix: ``c4 `` (APR:
# four children per spawn) or ``b512 `` (SoS+: a 512-token search budget).
PREFIX_KINDS = {"sosp": "b", "apr": "c"}
MIN_BUDGET_BUCKET = 64
_TOKEN_RE = re.compile(r"[A-Za-z]+|[^A-Za-z ]")


def approx_tokens(text: str) -> int:
    """Token count under a digit-splitting tokenizer, approximately: one per
    letter run and one per other non-space character (digits, marks, newlines)."""
    return len(_TOKEN_RE.findall(text))


def budget_bucket(num_tokens: int) -> int:
    """Round a token count up to a power of two (at least ``MIN_BUDGET_BUCKET``)."""
    return max(MIN_BUDGET_BUCKET, 1 << max(0, math.ceil(math.log2(max(1, num_tokens)))))


def budget_within(num_tokens: int) -> int:
    """The largest budget bucket whose traces fit in ``num_tokens`` tokens
    (``MIN_BUDGET_BUCKET`` when none does): the request that suits a context."""
    return max(MIN_BUDGET_BUCKET, 1 << (max(1, num_tokens).bit_length() - 1))


def conditioning_prefix(kind: str, value: int) -> str:
    """``b512 `` (SoS+ token budget) or ``c4 `` (APR child-thread count)."""
    if kind not in PREFIX_KINDS:
        raise ValueError(f"conditioning kind {kind!r} is not one of {tuple(PREFIX_KINDS)}")
    if value < 0:
        raise ValueError(f"conditioning value must be >= 0, got {value}")
    return f"{PREFIX_KINDS[kind]}{int(value)} "
