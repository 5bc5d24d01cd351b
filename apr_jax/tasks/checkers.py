"""Answer checkers for text tasks: find the final answer line of what a root
wrote and compare it with the reference answer.

- ``exact``: the answer equals the reference (surrounding spaces ignored);
- ``numeric``: both are numbers (``42``, ``-3.5``, ``3/4``, ``1,200``) and equal;
- ``module:function``: your function ``f(text, problem) -> bool | float |
  (bool | float, reason)``, given the root's whole written text and the
  problem dict (``prompt``, ``answer``); a float is the reward, in [0, 1].
"""

from __future__ import annotations

import importlib
from fractions import Fraction
from typing import Any, Callable, Mapping

from apr_jax.protocol import SPAWN_CLOSE
from apr_jax.tasks.base import Score

BUILT_IN = ("exact", "numeric")
MAX_ANSWER_CHARS = 1000

Checker = Callable[[str, Mapping[str, Any]], Score]


def final_answer_line(text: str, prefix: str = "") -> str | None:
    """The final answer in ``text``: with ``prefix``, what follows it on the
    last line that starts with it; otherwise the last non-empty line (after a
    spawn block on that line). None when there is none."""
    if not isinstance(text, str):
        return None
    for line in reversed(text.splitlines()):
        line = line.rsplit(SPAWN_CLOSE, 1)[-1].strip()
        if prefix:
            if line.startswith(prefix.strip()):
                return line[len(prefix.strip()) :].strip()[:MAX_ANSWER_CHARS]
        elif line:
            return line[:MAX_ANSWER_CHARS]
    return None


def as_number(text: str) -> Fraction | None:
    """``text`` as an exact number, or None (thousands commas, a trailing
    period and a leading ``$`` are ignored)."""
    cleaned = text.strip().replace(",", "").removeprefix("$").rstrip(".")
    if not cleaned or len(cleaned) > 64:
        return None
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def exact(answer: str, reference: str) -> Score:
    if answer == reference.strip():
        return Score(1.0, "ok", answer)
    return Score(0.0, f"answer {answer[:60]!r} is not {reference.strip()[:60]!r}", answer)


def numeric(answer: str, reference: str) -> Score:
    want = as_number(reference)
    if want is None:
        raise ValueError(f"reference answer {reference[:60]!r} is not a number")
    got = as_number(answer)
    if got is None:
        return Score(0.0, f"answer {answer[:60]!r} is not a number", answer)
    if got != want:
        return Score(0.0, f"answer {answer[:60]} is not {reference.strip()[:60]}", answer)
    return Score(1.0, "ok", answer)


def load_function(spec: str) -> Callable[..., Any]:
    """The function ``module:function`` names; one-line errors."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"config.task.checker={spec!r} is not one of {', '.join(BUILT_IN)} or module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # any import failure is the config's fault here
        raise ValueError(
            f"config.task.checker={spec!r}: cannot import {module_name} ({type(e).__name__}: {e})"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"config.task.checker={spec!r}: {module_name} has no function {function_name}")
    return function


def make_checker(spec: str, answer_prefix: str = "") -> Checker:
    """A checker ``(root text, problem dict) -> Score`` for ``config.task.checker``."""
    if spec in BUILT_IN:
        compare = exact if spec == "exact" else numeric

        def check(text: str, problem: Mapping[str, Any]) -> Score:
            answer = final_answer_line(text, answer_prefix)
            if answer is None:
                return Score(0.0, "no answer line")
            return compare(answer, str(problem["answer"]))

        return check
    function = load_function(spec)

    def check_with_user_function(text: str, problem: Mapping[str, Any]) -> Score:
        result = function(text, dict(problem))
        value, reason = result if isinstance(result, tuple) and len(result) == 2 else (result, None)
        if not isinstance(value, (bool, int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(
                f"config.task.checker={spec!r} returned {result!r}; expected a bool, "
                f"a reward in [0, 1] or (one of those, reason)"
            )
        reward = float(value)
        return Score(
            reward,
            str(reason) if reason is not None else ("ok" if reward >= 1 else "rejected"),
            final_answer_line(text, answer_prefix),
        )

    return check_with_user_function
