"""Trace text: prompts, search lines, child messages, returns and answers.

Two styles render the same search:

terse (default), one short line per visited node, depth shown by ``>`` marks
(backtracking is implicit: the next line's depth says where search resumed)::

    53 22 26 31 -> 27            root prompt (``c4 ``/``b256 `` prefix optional)
    > 53+31=84 [22 26 84]        inner node: operation, remaining numbers
    >> 84-26=58 [22 58]
    >>> 58-22=36 x               dead end (leaf that misses the target)
    > 53-22=31 [26 31 31]
    >> 31/31=1 [26 1]
    >>> 26+1=27 goal             goal line
    ans 53-22=31 31/31=1 26+1=27 final answer (``ans none`` when not found)

A child message is ``53-22=31 | 26 31 31 -> 27`` (operations so far, then the
remaining numbers and the target): a spawning thread writes each operation
before its result, as in its search lines, rather than guessing the result
first. A child returns the full path or ``none``.

reference: the wording of the reference study (``Current State: ...``,
``Exploring Operation: ...``, ``Generated Node #0,0: ...``, ``Moving to Node
#0``, ``27,27 equal: Goal Reached``, ``No solution found.``), with the final
path written as ``Solution: ['53-22=31', ...]``.
"""

from __future__ import annotations

import re
from typing import Sequence

from apr_jax.config.trace import STYLES
from apr_jax.tasks.countdown.problems import Problem
from apr_jax.tasks.countdown.search import GOAL, INNER, Node, Visit
from apr_jax.tasks.countdown.verifier import NO_SOLUTION, REFERENCE_MARKER, TERSE_MARKER

_TERSE_PROMPT_RE = re.compile(r"(?:[bc][0-9]+ )?([0-9]+(?: [0-9]+)*) -> ([0-9]+)\n?", re.ASCII)
_REFERENCE_PROMPT_RE = re.compile(
    r"(?:[bc][0-9]+ )?Current State: ([0-9]+):\[([0-9]+(?:, [0-9]+)*)\], Operations: \[\]\n?", re.ASCII
)


def check_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f"trace style {style!r} is not one of {STYLES}")
    return style


def _nums(numbers: Sequence[int], sep: str) -> str:
    return sep.join(map(str, numbers))


def _op_list(operations: Sequence[str]) -> str:
    return "[" + ", ".join(f"'{o}'" for o in operations) + "]"


def _state(target: int, numbers: Sequence[int], operations: Sequence[str]) -> str:
    return f"Current State: {target}:[{_nums(numbers, ', ')}], Operations: {_op_list(operations)}"


# ---- prompts and conditioning ------------------------------------------------
def problem_prompt(problem: Problem, style: str = "terse", prefix: str = "") -> str:
    """The root thread's prompt for ``problem`` (what the engine feeds the model)."""
    if check_style(style) == "terse":
        return f"{prefix}{_nums(problem.numbers, ' ')} -> {problem.target}\n"
    return prefix + _state(problem.target, problem.numbers, ()) + "\n"


def parse_prompt(text: str) -> Problem:
    """Inverse of ``problem_prompt`` (either style, prefix ignored)."""
    m = _TERSE_PROMPT_RE.fullmatch(text)
    if m:
        return Problem(tuple(int(x) for x in m.group(1).split()), int(m.group(2)))
    m = _REFERENCE_PROMPT_RE.fullmatch(text)
    if m:
        return Problem(tuple(int(x) for x in m.group(2).split(", ")), int(m.group(1)))
    raise ValueError(f"not a Countdown prompt: {text[:60]!r}")


# ---- search lines --------------------------------------------------------------
def render_visits(visits: Sequence[Visit], start: Node, target: int, style: str) -> str:
    """Search lines for ``visits`` made from the thread's own node ``start``."""
    if style == "terse":
        base = len(start.index)
        lines = []
        for node, status in visits:
            marks = ">" * (len(node.index) - base)
            op = node.operations[-1]
            if status == INNER:
                lines.append(f"{marks} {op} [{_nums(node.numbers, ' ')}]\n")
            else:
                lines.append(f"{marks} {op} {'goal' if status == GOAL else 'x'}\n")
        return "".join(lines)
    return _render_reference(visits, start, target)


def _render_reference(visits: Sequence[Visit], start: Node, target: int) -> str:
    known = {start.index: start}
    current = start.index
    out = []
    for node, status in visits:
        parent = node.index[:-1]
        if parent != current:
            p = known[parent]
            out.append(f"Moving to Node #{_nums(parent, ',')}\n{_state(target, p.numbers, p.operations)}\n")
            current = parent
        op = node.operations[-1]
        out.append(f"Exploring Operation: {op}, Resulting Numbers: [{_nums(node.numbers, ', ')}]\n")
        if status == INNER:
            idx = _nums(node.index, ",")
            out.append(
                f"Generated Node #{idx}: {target}:[{_nums(node.numbers, ', ')}] Operation: {op}\n"
                f"Moving to Node #{idx}\n{_state(target, node.numbers, node.operations)}\n"
            )
            known[node.index] = node
            current = node.index
        else:
            verdict = "equal: Goal Reached" if status == GOAL else "unequal: No Solution"
            out.append(f"{node.numbers[0]},{target} {verdict}\n")
    return "".join(out)


def render_generated(nodes: Sequence[Node], target: int, style: str) -> str:
    """What a thread writes about the successors it is about to spawn for
    (nothing in terse style: the spawn messages already say it)."""
    if style == "terse":
        return ""
    return "".join(
        f"Exploring Operation: {n.operations[-1]}, Resulting Numbers: [{_nums(n.numbers, ', ')}]\n"
        f"Generated Node #{_nums(n.index, ',')}: {target}:[{_nums(n.numbers, ', ')}] "
        f"Operation: {n.operations[-1]}\n"
        for n in nodes
    )


# ---- messages, returns, answers ----------------------------------------------
def child_message(node: Node, target: int, style: str) -> str:
    """Everything a child needs: its numbers, the target and the path so far."""
    if style == "terse":
        return f"{' '.join(node.operations)} | {_nums(node.numbers, ' ')} -> {target}"
    return _state(target, node.numbers, node.operations)


def return_message(solution: Sequence[str] | None, style: str) -> str:
    """What a child hands back: the full path, or a short failure message."""
    if not solution:
        return NO_SOLUTION[style]
    return " ".join(solution) if style == "terse" else _op_list(solution)


def answer_line(solution: Sequence[str] | None, style: str) -> str:
    """The final line a root writes (parsed by ``verifier.extract_answer``)."""
    if style == "terse":
        return TERSE_MARKER + return_message(solution, style) + "\n"
    if not solution:
        return NO_SOLUTION[style] + "\n"
    return REFERENCE_MARKER + _op_list(solution) + "\n"
