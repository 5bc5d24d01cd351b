"""Tests for apr_jax.countdown.solver."""

import itertools
import random

import pytest

from apr_jax.countdown.solver import is_solvable, solve
from apr_jax.countdown.verifier import verify_operations


def _brute_force(numbers: list[int], target: int) -> bool:
    """Independent reference: try every pair and operation, no memo, no dedup."""
    if len(numbers) == 1:
        return numbers[0] == target
    for i, j in itertools.permutations(range(len(numbers)), 2):
        a, b = numbers[i], numbers[j]
        rest = [n for k, n in enumerate(numbers) if k not in (i, j)]
        results = [a + b, a * b] + ([a - b] if a >= b else []) + ([a // b] if b and a % b == 0 else [])
        if any(_brute_force(rest + [r], target) for r in results):
            return True
    return False


def test_known_solution_is_valid():
    path = solve([53, 22, 26, 31], 27)
    assert path is not None and len(path) == 3
    assert verify_operations(path, {"numbers": [53, 22, 26, 31], "target": 27}).ok


def test_exact_division_and_unsolvable():
    assert solve([6, 3], 2) == ["6/3=2"]
    assert solve([7, 2], 3) is None  # 7/2 is not exact
    assert solve([1, 1], 5) is None
    assert not is_solvable([2, 3, 5], 100)


def test_matches_brute_force_on_random_small_problems():
    rng = random.Random(0)
    for _ in range(300):
        numbers = [rng.randint(1, 12) for _ in range(rng.randint(2, 4))]
        target = rng.randint(1, 60)
        path = solve(numbers, target)
        assert (path is not None) == _brute_force(numbers, target), (numbers, target)
        assert is_solvable(numbers, target) == (path is not None), (numbers, target)
        if path is not None:
            assert verify_operations(path, {"numbers": numbers, "target": target}).ok


def test_empty_numbers_rejected():
    with pytest.raises(ValueError, match="at least one number"):
        solve([], 5)
    with pytest.raises(ValueError, match="at least one number"):
        is_solvable([], 5)


def test_is_solvable_agrees_with_solve_on_countdown4_draws():
    """The values-only check and the path search on the ranges the configs draw
    (numbers 1-99, targets 10-100), most of them unsolvable."""
    rng = random.Random(1)
    for _ in range(400):
        numbers = [rng.randint(1, 99) for _ in range(4)]
        target = rng.randint(10, 100)
        assert is_solvable(numbers, target) == (solve(numbers, target) is not None), (numbers, target)
