"""Tests for apr_jax.tasks.countdown.verifier."""

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from apr_jax.tasks.countdown.ops import exact_result, parse_operation
from apr_jax.tasks.countdown.problems import Problem, generate_problems
from apr_jax.tasks.countdown.solver import solve
from apr_jax.tasks.countdown.verifier import extract_answer, verify, verify_operations

PROBLEM = Problem((53, 22, 26, 31), 27)
GOOD = ["53-22=31", "31/31=1", "26+1=27"]


def _solved(seed: int, num_inputs: int) -> tuple[Problem, list[str]]:
    p = generate_problems(1, num_inputs=num_inputs, max_number=30, max_target=60, seed=seed)[0]
    return p, solve(p.numbers, p.target)


def test_accepts_both_answer_styles():
    assert verify("> 1+2=3 x\nans " + " ".join(GOOD) + "\n", PROBLEM).ok
    assert verify("Solution: ['53-22=31', '31/31=1', '26+1=27']\n", PROBLEM).ok
    assert verify("<spawn>a<sep>b</spawn>ans " + " ".join(GOOD), PROBLEM).ok
    assert verify("<join>x</join>ans " + " ".join(GOOD), PROBLEM.to_dict()).ok


def test_last_answer_line_wins():
    assert not verify("ans " + " ".join(GOOD) + "\nans none\n", PROBLEM).ok
    assert verify("ans 1+1=2\nans " + " ".join(GOOD) + "\n", PROBLEM).ok


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "no answer line"),
        ("garbage \x00 text", "no answer line"),
        ("xans 53-22=31 31/31=1 26+1=27", "no answer line"),
        ("ans none\n", "no solution"),
        ("No solution found.\n", "no answer line"),
        ("ans 53-22=31 31/31=1 26-1=25", "not the target"),
        ("ans 53-22=31 31/3", "malformed"),
        ("ans 53-22=31 31/31=1", "unused"),
        ("ans 1234567-1234540=27", "6 digits"),
        ("ans 9" * 1 + "9" * 2000, "longer than"),
        ("ans \u0665\u0663-22=31", "malformed"),
        ("ans 53\u221222=31", "malformed"),
        ("ans 22-53=-31", "malformed"),
        ("ans 31-53=0", "not allowed"),
        ("ans 53/0=0", "not allowed"),
        ("ans 53/22=2", "not allowed"),
        ("ans 53-22=30 31/31=1 26+1=27", "wrong arithmetic"),
        ("ans 53-22=31 31/31=1 31-1=30", "not available"),
        ("ans 53+53=106", "not available"),
        ("ans " + "1+1=2 " * 40, "more than"),
    ],
)
def test_rejects_adversarial_text(text, reason):
    verdict = verify(text, PROBLEM)
    assert not verdict.ok
    assert reason in verdict.reason


def test_non_string_text_rejected():
    assert "string" in verify(None, PROBLEM).reason  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(text):
    verdict = verify(text, PROBLEM)
    assert isinstance(verdict.ok, bool) and verdict.reason
    if verdict.ok:
        assert extract_answer(text) == verdict.operations


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**6), num_inputs=st.integers(2, 5))
def test_accepts_solver_answers(seed, num_inputs):
    p, path = _solved(seed, num_inputs)
    assert verify_operations(path, p).ok
    assert verify("ans " + " ".join(path) + "\n", p).operations == path


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10**6), num_inputs=st.integers(2, 5), step=st.integers(0, 4), new_op=st.sampled_from("+-*/"))
def test_rejects_changed_operator(seed, num_inputs, step, new_op):
    p, path = _solved(seed, num_inputs)
    step %= len(path)
    a, op, b, c = parse_operation(path[step])
    assume(new_op != op and exact_result(a, new_op, b) != c)
    mutated = path[:step] + [f"{a}{new_op}{b}={c}"] + path[step + 1 :]
    assert not verify_operations(mutated, p).ok


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), num_inputs=st.integers(2, 5))
def test_rejects_reuse_wrong_target_and_truncation(seed, num_inputs):
    p, path = _solved(seed, num_inputs)
    assert not verify_operations(path + path[-1:], p).ok  # reuses numbers
    assert not verify_operations(path, Problem(p.numbers, p.target + 1)).ok
    assert not verify_operations(path[:-1], p).ok
    assert not verify("ans " + " ".join(path)[:-1], p).ok  # cut mid-line
