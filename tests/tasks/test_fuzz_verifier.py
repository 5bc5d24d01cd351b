"""Property-based tests of the Countdown verifier: it never raises on any text,
accepts every exact solution however it is framed, and rejects every solution
with one operation changed."""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apr_jax.tasks.countdown.problems import Problem
from apr_jax.tasks.countdown.render import answer_line
from apr_jax.tasks.countdown.solver import solve
from apr_jax.tasks.countdown.verifier import extract_answer, verify

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
ANSWERISH = st.sampled_from(["ans ", "Solution: ", "\nans ", "</join>ans ", "</spawn>Solution: ", ""])
PIECES = st.sampled_from(
    [
        "1",
        "2",
        "12",
        "99",
        "+",
        "-",
        "*",
        "/",
        "=",
        " ",
        "[",
        "]",
        "'",
        ",",
        "\n",
        "none",
        "ans ",
        "0",
        "-1",
        "1e3",
        "٣",
        "\x00",
        "</join>",
    ]
)


@st.composite
def solvable(draw):
    numbers = draw(st.lists(st.integers(1, 30), min_size=2, max_size=4))
    target = draw(st.integers(1, 120))
    solution = solve(numbers, target)
    if solution is None:  # keep the draw cheap: fall back to a problem built from its own path
        a, b = numbers[0], numbers[1]
        numbers, target, solution = [a, b], a + b, [f"{a}+{b}={a + b}"]
    return Problem(tuple(numbers), target), solution


@SETTINGS
@given(text=st.one_of(st.text(max_size=300), st.lists(PIECES, max_size=60).map("".join)), prefix=ANSWERISH)
def test_verify_never_raises_and_explains_every_rejection(text, prefix):
    verdict = verify(prefix + text, Problem((3, 4, 5), 17))
    assert isinstance(verdict.ok, bool) and verdict.reason
    assert verdict.ok == (verdict.reason == "ok")
    answer = extract_answer(prefix + text)
    assert answer is None or isinstance(answer, list)


@SETTINGS
@given(
    case=solvable(),
    style=st.sampled_from(["terse", "reference"]),
    before=st.text(alphabet="abc 123\n:", max_size=40),
    seed=st.integers(0, 2**16),
)
def test_every_exact_solution_verifies_in_any_framing(case, style, before, seed):
    problem, solution = case
    text = before + "\n" + answer_line(solution, style)
    verdict = verify(text, problem)
    assert verdict.ok, (text, verdict)
    assert verdict.operations == solution
    # A later "ans" line wins: the last answer is the one that counts.
    assert not verify(text + "ans none\n", problem).ok
    # Shuffling the separators' spacing never changes the verdict.
    spaced = text.replace(" ", " " * random.Random(seed).randint(1, 3))
    assert verify(spaced, problem).ok


@SETTINGS
@given(case=solvable(), which=st.integers(0, 10), delta=st.integers(1, 5))
def test_any_changed_result_is_rejected(case, which, delta):
    problem, solution = case
    i = which % len(solution)
    left, result = solution[i].split("=")
    broken = solution[:i] + [f"{left}={int(result) + delta}"] + solution[i + 1 :]
    assert not verify(answer_line(broken, "terse"), problem).ok
