"""Tests for apr_jax.countdown.solver."""

import itertools
import random

import numpy as np
import pytest

from apr_jax.countdown.solver import is_solvable, solvable_mask, solve
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


@pytest.mark.parametrize("num_inputs, max_number, max_target, count", [
    (1, 5, 6, 40), (2, 12, 60, 300), (3, 12, 60, 300), (4, 30, 120, 300), (5, 9, 80, 40)])
def test_solvable_mask_agrees_with_is_solvable(num_inputs, max_number, max_target, count):
    """Zeros included (0 - 0, 0 / x, no x / 0); few of the many-number draws
    are unsolvable, so the 5-number case also lists some that are."""
    rng = random.Random(num_inputs)
    numbers = np.array([[rng.randint(0, max_number) for _ in range(num_inputs)]
                        for _ in range(count)])
    targets = np.array([rng.randint(0, max_target) for _ in range(count)])
    if num_inputs == 5:
        numbers[:4], targets[:4] = [[1, 1, 1, 1, 1]] * 4, [6, 7, 100, 0]
    expected = [is_solvable(n.tolist(), int(t)) for n, t in zip(numbers, targets)]
    assert solvable_mask(numbers, targets).tolist() == expected
    assert 0 < sum(expected) < count


def test_solvable_mask_checks_values_too_large_for_int64_exactly():
    """(2**32 + 1)**2 wraps around in int64 to 2**33 + 1, which minus 7 would
    falsely reach 2**33 - 6; such rows go to the exact check instead."""
    big = 2 ** 32 + 1
    numbers = np.array([[big, big, 7], [big, big, 7], [5, 4, 3]])
    targets = np.array([2 ** 33 - 6, 2 * big + 7, 17])
    assert [is_solvable(n.tolist(), int(t)) for n, t in zip(numbers, targets)] == [False, True, True]
    assert solvable_mask(numbers, targets).tolist() == [False, True, True]
    # Small numbers, huge target: (2**44 + 2**10) * 2**20 wraps around to 2**30,
    # which would make 2**30 / 2**20 falsely reach it.
    numbers, targets = np.array([[2 ** 30, 2 ** 20]]), np.array([2 ** 44 + 2 ** 10])
    assert not is_solvable(numbers[0].tolist(), int(targets[0]))
    assert solvable_mask(numbers, targets).tolist() == [False]


def test_solvable_mask_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="numbers \\[N, K>=1\\] and targets \\[N\\]"):
        solvable_mask(np.ones((3, 2), int), np.ones(2, int))
