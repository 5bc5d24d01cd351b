"""Tests for apr_jax.tasks.countdown.solver."""

import itertools
import random

import numpy as np
import pytest

from apr_jax.tasks.countdown.solver import (
    first_moves,
    is_solvable,
    reachable_share,
    reachable_shares,
    solvable_mask,
    solve,
)
from apr_jax.tasks.countdown.verifier import verify_operations


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


@pytest.mark.parametrize(
    "num_inputs, max_number, max_target, count",
    [(1, 5, 6, 40), (2, 12, 60, 300), (3, 12, 60, 300), (4, 30, 120, 300), (5, 9, 80, 40)],
)
def test_solvable_mask_agrees_with_is_solvable(num_inputs, max_number, max_target, count):
    """Zeros included (0 - 0, 0 / x, no x / 0); few of the many-number draws
    are unsolvable, so the 5-number case also lists some that are."""
    rng = random.Random(num_inputs)
    numbers = np.array([[rng.randint(0, max_number) for _ in range(num_inputs)] for _ in range(count)])
    targets = np.array([rng.randint(0, max_target) for _ in range(count)])
    if num_inputs == 5:
        numbers[:4], targets[:4] = [[1, 1, 1, 1, 1]] * 4, [6, 7, 100, 0]
    expected = [is_solvable(n.tolist(), int(t)) for n, t in zip(numbers, targets)]
    assert solvable_mask(numbers, targets).tolist() == expected
    assert 0 < sum(expected) < count


def test_solvable_mask_checks_values_too_large_for_int64_exactly():
    """(2**32 + 1)**2 wraps around in int64 to 2**33 + 1, which minus 7 would
    falsely reach 2**33 - 6; such rows go to the exact check instead."""
    big = 2**32 + 1
    numbers = np.array([[big, big, 7], [big, big, 7], [5, 4, 3]])
    targets = np.array([2**33 - 6, 2 * big + 7, 17])
    assert [is_solvable(n.tolist(), int(t)) for n, t in zip(numbers, targets)] == [False, True, True]
    assert solvable_mask(numbers, targets).tolist() == [False, True, True]
    # Small numbers, huge target: (2**44 + 2**10) * 2**20 wraps around to 2**30,
    # which would make 2**30 / 2**20 falsely reach it.
    numbers, targets = np.array([[2**30, 2**20]]), np.array([2**44 + 2**10])
    assert not is_solvable(numbers[0].tolist(), int(targets[0]))
    assert solvable_mask(numbers, targets).tolist() == [False]


def test_solvable_mask_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="numbers \\[N, K>=1\\] and targets \\[N\\]"):
        solvable_mask(np.ones((3, 2), int), np.ones(2, int))


# ---- oracle difficulty: the share of first moves that keep the target reachable ----


def _share_by_brute_force(numbers: list[int], target: int) -> float:
    """Independent reference: every ordered pair and operation, the remaining
    multisets deduplicated in a set, each checked by ``_brute_force``."""
    if len(numbers) == 1:
        return float(numbers[0] == target)
    moves = set()
    for i, j in itertools.permutations(range(len(numbers)), 2):
        a, b = numbers[i], numbers[j]
        rest = [n for k, n in enumerate(numbers) if k not in (i, j)]
        results = [a + b, a * b] + ([a - b] if a >= b else []) + ([a // b] if b and a % b == 0 else [])
        moves.update(tuple(sorted(rest + [r])) for r in results)
    return sum(_brute_force(list(m), target) for m in moves) / len(moves)


def test_reachable_share_on_hand_computed_problems():
    """(2, 3): 5, 6, 1 (3/2 is inexact), one of three reaches 6. (1, 2, 3)
    leaves 8 distinct multisets: 1+2 (3 3), 1*2 = 1*3 (2 3), 2-1 (1 3),
    1+3 (2 4), 3-1 (2 2), 2+3 (1 5), 2*3 (1 6), 3-2 (1 1); 6 is reachable from
    (3 3), (2 3), (2 4), (1 5), (1 6), 9 only from (3 3). (2, 2): 2+2 = 2*2
    is one move of three."""
    assert first_moves((3, 2)) == [(5,), (6,), (1,)]
    assert reachable_share((2, 3), 6) == pytest.approx(1 / 3)
    assert sorted(first_moves((3, 1, 2))) == [(1, 1), (1, 3), (1, 5), (1, 6), (2, 2), (2, 3), (2, 4), (3, 3)]
    assert reachable_share((3, 1, 2), 6) == 5 / 8
    assert reachable_share((1, 2, 3), 9) == 1 / 8
    assert reachable_share((2, 2), 4) == 1 / 3
    assert reachable_share((2, 3, 5), 100) == 0.0  # unsolvable
    assert reachable_share((7,), 7) == 1.0 and reachable_share((7,), 8) == 0.0  # no move
    numbers, targets = np.array([[3, 1, 2], [1, 2, 3]]), np.array([6, 9])
    assert reachable_shares(numbers, targets).tolist() == [5 / 8, 1 / 8]
    assert reachable_shares(np.array([[7], [7]]), np.array([7, 8])).tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    "num_inputs, max_number, max_target, count",
    [(1, 5, 6, 20), (2, 12, 40, 200), (3, 12, 60, 200), (4, 15, 60, 100), (5, 6, 40, 10)],
)
def test_reachable_shares_agree_with_brute_force(num_inputs, max_number, max_target, count):
    """Zeros included; the batched shares equal the one-at-a-time ones exactly
    and both equal an independent enumeration; the shares spread over (0, 1)."""
    rng = random.Random(10 + num_inputs)
    numbers = np.array([[rng.randint(0, max_number) for _ in range(num_inputs)] for _ in range(count)])
    targets = np.array([rng.randint(0, max_target) for _ in range(count)])
    one_at_a_time = [reachable_share(n.tolist(), int(t)) for n, t in zip(numbers, targets)]
    assert reachable_shares(numbers, targets).tolist() == one_at_a_time
    assert one_at_a_time == [pytest.approx(_share_by_brute_force(n.tolist(), int(t))) for n, t in zip(numbers, targets)]
    if num_inputs > 2:
        assert len(set(one_at_a_time)) > 3


def test_reachable_shares_checks_values_too_large_for_int64_exactly():
    """big * big wraps around in int64 to 2**33 + 1, from which - 7 would
    falsely reach 2**33 - 6 (none of the 7 moves does); such rows are exact."""
    big = 2**32 + 1
    numbers, targets = np.array([[big, big, 7], [5, 4, 3]]), np.array([2**33 - 6, 17])
    assert reachable_share(numbers[0].tolist(), int(targets[0])) == 0.0
    assert reachable_shares(numbers, targets).tolist() == [0.0, reachable_share((5, 4, 3), 17)]


def test_reachable_share_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one number"):
        reachable_share([], 5)
    with pytest.raises(ValueError, match="numbers \\[N, K>=1\\] and targets \\[N\\]"):
        reachable_shares(np.ones((3, 2), int), np.ones(2, int))
