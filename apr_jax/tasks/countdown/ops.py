"""Countdown arithmetic: the four operations, their text form and parsing.

An operation combines two available numbers into one and is written
``a<op>b=c`` with ASCII digits only, e.g. ``53-22=31``. The generator always
writes the larger operand first; the parser accepts any operand order that is
arithmetically exact (no negatives, no fractions, no division by zero).
"""

from __future__ import annotations

import re

MAX_DIGITS = 6  # numbers longer than this are rejected as adversarial

_OP_RE = re.compile(r"([0-9]+)([-+*/])([0-9]+)=([0-9]+)", re.ASCII)


def results(a: int, b: int) -> list[tuple[int, str]]:
    """All distinct results of combining ``a`` and ``b`` (the larger operand
    first), as (result, operator symbol)."""
    x, y = (a, b) if a >= b else (b, a)
    total = x + y
    out = [(total, "+")]
    product = x * y
    if product != total:
        out.append((product, "*"))
    diff = x - y
    if diff != total and diff != product:
        out.append((diff, "-"))
    if y and not x % y:
        quotient = x // y
        if quotient != total and quotient != product and quotient != diff:
            out.append((quotient, "/"))
    return out


def combinations(a: int, b: int) -> list[tuple[int, str]]:
    """All distinct results of combining ``a`` and ``b``, as (result, op text)."""
    x, y = (a, b) if a >= b else (b, a)
    return [(value, f"{x}{symbol}{y}={value}") for value, symbol in results(x, y)]


def parse_operation(text: str) -> tuple[int, str, int, int]:
    """Parse ``a<op>b=c`` into (a, op, b, c); ValueError says what is wrong."""
    m = _OP_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"malformed operation {text[:40]!r}")
    parts = m.group(1, 3, 4)
    if any(len(p) > MAX_DIGITS for p in parts):
        raise ValueError(f"number longer than {MAX_DIGITS} digits in {text[:40]!r}")
    return int(parts[0]), m.group(2), int(parts[1]), int(parts[2])


def exact_result(a: int, op: str, b: int) -> int | None:
    """The exact result of ``a op b``, or None if not allowed (negative, fraction, /0)."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a >= b else None
    if op == "/":
        return a // b if b and not a % b else None
    raise ValueError(f"unknown operator {op!r}")
