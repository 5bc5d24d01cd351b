"""Answer extraction and exact checking of Countdown solutions (never ``eval``).

Extraction rule: the answer is the text after the LAST answer marker that
starts a line or directly follows a ``</join>`` or ``</spawn>`` tag (the root's
written text skips the join block), up to the end of that line. The markers
are ``ans `` (terse style, e.g. ``ans 53-22=31 31/31=1 26+1=27``) and
``Solution: `` (reference style, e.g. ``Solution: ['53-22=31', '31/31=1']``).
Inside the answer, ``[ ] ' ,`` are separators; every other token must be one
operation ``a<op>b=c`` written with ASCII digits.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Mapping, Sequence

from apr_jax.tasks.countdown.ops import exact_result, parse_operation
from apr_jax.tasks.countdown.problems import Problem, as_problem

TERSE_MARKER = "ans "
REFERENCE_MARKER = "Solution: "
NO_SOLUTION = {"terse": "none", "reference": "No solution found."}
MAX_ANSWER_CHARS = 1000
MAX_OPERATIONS = 16

_ANSWER_RE = re.compile(r"(?:^|\n|</join>|</spawn>)(?:ans |Solution: )([^\n]*)")
_SEPARATORS = str.maketrans("[]',", "    ")


@dataclasses.dataclass
class Verdict:
    ok: bool
    reason: str
    operations: list[str] = dataclasses.field(default_factory=list)


def extract_answer(text: str) -> list[str] | None:
    """The operation tokens of the last answer line, or None when there is none.
    ``[]`` means the answer line states that no solution was found."""
    matches = _ANSWER_RE.findall(text)
    if not matches:
        return None
    body = matches[-1][: MAX_ANSWER_CHARS + 1]
    tokens = body.translate(_SEPARATORS).split()
    if tokens in (["none"], "No solution found.".split()):
        return []
    return tokens


def verify(text: str, problem: "Problem | Mapping[str, Any]") -> Verdict:
    """Extract the final answer from generated ``text`` and check it."""
    if not isinstance(text, str):
        return Verdict(False, f"text must be a string, got {type(text).__name__}")
    matches = _ANSWER_RE.findall(text)
    if not matches:
        return Verdict(False, "no answer line")
    if len(matches[-1]) > MAX_ANSWER_CHARS:
        return Verdict(False, f"answer line longer than {MAX_ANSWER_CHARS} characters")
    operations = extract_answer(text)
    if not operations:
        return Verdict(False, "answer says no solution")
    return verify_operations(operations, problem)


def verify_operations(operations: Sequence[str], problem: "Problem | Mapping[str, Any]") -> Verdict:
    """Check that ``operations`` use every number once, exactly, and reach the target."""
    problem = as_problem(problem)
    ops = [str(o) for o in operations]
    if len(ops) > MAX_OPERATIONS:
        return Verdict(False, f"more than {MAX_OPERATIONS} operations", ops)
    try:
        left = remaining_numbers(ops, problem.numbers)
    except ValueError as e:
        return Verdict(False, str(e), ops)
    if len(left) != 1:
        return Verdict(False, f"numbers left unused: {left}"[:120], ops)
    if left[0] != problem.target:
        return Verdict(False, f"reaches {left[0]}, not the target {problem.target}", ops)
    return Verdict(True, "ok", ops)


def remaining_numbers(operations: Sequence[str], numbers: Sequence[int]) -> list[int]:
    """The sorted numbers left after applying ``operations`` to ``numbers`` in
    order; ValueError names the first operation that is malformed, not
    exact, not allowed or uses a number that is not available."""
    available = collections.Counter(numbers)
    for text in operations:
        a, op, b, c = parse_operation(text)
        result = exact_result(a, op, b)
        if result is None:
            raise ValueError(f"{text} is not allowed (negative, fraction or division by zero)")
        if result != c:
            raise ValueError(f"{text} is wrong arithmetic ({a}{op}{b} is {result})")
        for x in (a, b):
            if available[x] < 1:
                raise ValueError(f"{text} uses {x}, which is not available")
            available[x] -= 1
        available[c] += 1
    return sorted(available.elements())
