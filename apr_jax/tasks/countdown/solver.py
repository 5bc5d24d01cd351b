"""Exact Countdown solver: depth-first over pairs, memoised on the sorted
multiset; a vectorised yes/no check for many problems at once; and the
oracle difficulty of a problem (the share of its first moves that can still
reach the target), one at a time or vectorised."""

from __future__ import annotations

import functools
import itertools
from typing import Sequence

import numpy as np

from apr_jax.tasks.countdown.ops import combinations, results

_MASK_PAIRS = 1 << 17  # value pairs solvable_mask compares per chunk (fits a CPU cache)
_EXACT_BOUND = 2.0**61  # prod(numbers + 1) * (target + 1) below this: nothing overflows int64


@functools.lru_cache(maxsize=1 << 18)
def _solve_sorted(state: tuple[int, ...], target: int) -> tuple[str, ...] | None:
    """A solution path from the sorted multiset ``state``, or None."""
    n = len(state)
    if n == 1:
        return () if state[0] == target else None
    if n == 2:
        for value, op in combinations(state[0], state[1]):
            if value == target:
                return (op,)
        return None
    for i in range(n):
        if i and state[i] == state[i - 1]:
            continue  # same value as the previous first operand: same subproblems
        for j in range(i + 1, n):
            if j > i + 1 and state[j] == state[j - 1]:
                continue
            rest = state[:i] + state[i + 1 : j] + state[j + 1 :]
            for value, op in combinations(state[i], state[j]):
                found = _solve_sorted(tuple(sorted(rest + (value,))), target)
                if found is not None:
                    return (op,) + found
    return None


def solve(numbers: Sequence[int], target: int) -> list[str] | None:
    """Operation strings (e.g. ``["53-22=31", ...]``) reaching ``target`` using
    every number exactly once, or None when the problem has no solution."""
    if not numbers:
        raise ValueError("solve needs at least one number")
    found = _solve_sorted(tuple(sorted(int(x) for x in numbers)), int(target))
    return None if found is None else list(found)


def _reaches(values: tuple[int, ...], target: int) -> bool:
    """Depth-first over pairs like ``_solve_sorted``, on values only (no
    operation text, no memo): the fast yes/no that problem drawing needs."""
    n = len(values)
    if n == 1:
        return values[0] == target
    for i in range(n):
        for j in range(i + 1, n):
            x, y = (values[i], values[j]) if values[i] >= values[j] else (values[j], values[i])
            exact = y != 0 and x % y == 0
            if n == 2:
                if target in (x + y, x * y, x - y) or (exact and x // y == target):
                    return True
                continue
            rest = values[:i] + values[i + 1 : j] + values[j + 1 :]
            for value in (x + y, x * y, x - y, x // y) if exact else (x + y, x * y, x - y):
                if _reaches(rest + (value,), target):
                    return True
    return False


def is_solvable(numbers: Sequence[int], target: int) -> bool:
    """Whether some order of operations reaches ``target`` using every number
    (the same answer as ``solve(...) is not None``, about 3x faster)."""
    if not numbers:
        raise ValueError("solve needs at least one number")
    return _reaches(tuple(int(x) for x in numbers), int(target))


def _problem_batch(numbers_NxK: np.ndarray, target_N: np.ndarray, caller: str) -> tuple[np.ndarray, np.ndarray]:
    """``(numbers [N, K>=1], targets [N])`` as int64; a one-line error naming
    ``caller`` for other shapes."""
    numbers_NxK = np.asarray(numbers_NxK, np.int64)
    target_N = np.asarray(target_N, np.int64)
    if numbers_NxK.ndim != 2 or numbers_NxK.shape[1] < 1 or target_N.shape != numbers_NxK.shape[:1]:
        raise ValueError(
            f"{caller} needs numbers [N, K>=1] and targets [N], got {numbers_NxK.shape} and {target_N.shape}"
        )
    return numbers_NxK, target_N


def solvable_mask(numbers_NxK: np.ndarray, target_N: np.ndarray) -> np.ndarray:
    """``is_solvable`` for N problems of K numbers each, as a bool [N] array.

    Every value reachable from each proper subset of the K numbers is listed
    in int64 (-1 marks an inexact division); a problem is solvable when some
    split of its numbers into two parts has a pair of values, one from each
    part, that one operation turns into the target. Rows whose values could
    overflow int64 are checked by ``is_solvable`` instead.
    """
    numbers_NxK, target_N = _problem_batch(numbers_NxK, target_N, "solvable_mask")
    n, k = numbers_NxK.shape
    if k == 1:
        return numbers_NxK[:, 0] == target_N
    full = (1 << k) - 1
    rows = max(1, _MASK_PAIRS // _pairs_compared(k))
    out_N = np.zeros(n, bool)
    for start in range(0, n, rows):
        chunk = numbers_NxK[start : start + rows]
        target_n1 = target_N[start : start + rows, None]
        reach = {1 << i: chunk[:, i : i + 1] for i in range(k)}
        for part in _splits(full):
            out_N[start : start + rows] |= _reaches_target(
                _reachable(part, reach), _reachable(full ^ part, reach), target_n1
            )
    # Values stay below prod(numbers + 1); the quotient test multiplies one by the target.
    overflow_N = (
        np.prod(numbers_NxK.astype(np.float64) + 1.0, axis=1) * (target_N.astype(np.float64) + 1.0)
    ) >= _EXACT_BOUND
    for i in np.flatnonzero(overflow_N):
        out_N[i] = is_solvable(numbers_NxK[i].tolist(), int(target_N[i]))
    return out_N


def _splits(subset: int) -> list[int]:
    """The parts holding the lowest member of ``subset`` (a bitmask), whole set
    excluded: each split of ``subset`` into two non-empty parts once."""
    low = subset & -subset
    rest = subset ^ low
    parts, sub = [], rest
    while True:
        if sub != rest:
            parts.append(low | sub)
        if sub == 0:
            return parts
        sub = (sub - 1) & rest


@functools.lru_cache(maxsize=None)
def _pairs_compared(k: int) -> int:
    """Value pairs ``solvable_mask`` compares per problem of ``k`` numbers."""

    @functools.lru_cache(maxsize=None)
    def width(subset: int) -> int:
        if subset & (subset - 1) == 0:
            return 1
        return sum(4 * width(p) * width(subset ^ p) for p in _splits(subset))

    full = (1 << k) - 1
    return sum(width(p) * width(full ^ p) for p in _splits(full))


def _reachable(subset: int, reach: dict[int, np.ndarray]) -> np.ndarray:
    """[N, W] every value reachable from the numbers in ``subset``, memoised in ``reach``."""
    if subset not in reach:
        reach[subset] = np.concatenate(
            [_combine(_reachable(p, reach), _reachable(subset ^ p, reach)) for p in _splits(subset)], axis=1
        )
    return reach[subset]


def _operands(a_NxA: np.ndarray, b_NxB: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, A, B] the larger and the smaller value of each pair."""
    return (np.maximum(a_NxA[:, :, None], b_NxB[:, None, :]), np.minimum(a_NxA[:, :, None], b_NxB[:, None, :]))


def _combine(a_NxA: np.ndarray, b_NxB: np.ndarray) -> np.ndarray:
    """[N, A*B*4] the sum, product, difference and exact quotient of each pair;
    -1 where an operand is -1 or a division is inexact."""
    x, y = _operands(a_NxA, b_NxB)
    divisor = np.maximum(y, 1)
    quotient = np.where((y > 0) & (x % divisor == 0), x // divisor, -1)
    out = np.stack([x + y, x * y, x - y, quotient], axis=-1)
    out[np.broadcast_to((y < 0)[..., None], out.shape)] = -1
    return out.reshape(len(a_NxA), -1)


def _reaches_target(a_NxA: np.ndarray, b_NxB: np.ndarray, target_N1: np.ndarray) -> np.ndarray:
    """[N] whether one operation on a value of ``a`` and one of ``b`` gives the target."""
    x, y = _operands(a_NxA, b_NxB)
    t = target_N1[:, :, None]
    hit = ((x + y == t) | (x * y == t) | (x - y == t)) & (y >= 0)
    hit |= (x == t * y) & (y > 0)  # x / y == t, exactly
    return hit.any(axis=(1, 2))


# ---- oracle difficulty -------------------------------------------------------------


def first_moves(numbers: Sequence[int]) -> list[tuple[int, ...]]:
    """The distinct number multisets (sorted tuples) that one operation on one
    pair of ``numbers`` leaves, in first-seen order; [] for one number."""
    values = tuple(sorted(int(x) for x in numbers))
    moves: dict[tuple[int, ...], None] = {}
    for i, j in itertools.combinations(range(len(values)), 2):
        rest = values[:i] + values[i + 1 : j] + values[j + 1 :]
        for value, _ in results(values[i], values[j]):
            moves.setdefault(tuple(sorted(rest + (value,))), None)
    return list(moves)


def reachable_share(numbers: Sequence[int], target: int) -> float:
    """The share of the distinct first moves (``first_moves``) after which
    ``target`` is still reachable using every remaining number once: 1.0 for
    an easy problem, 0.0 for an unsolvable one; the oracle difficulty is one
    minus it. One number (no move): 1.0 if it is the target, else 0.0."""
    if not numbers:
        raise ValueError("reachable_share needs at least one number")
    if len(numbers) == 1:
        return float(int(numbers[0]) == int(target))
    moves = first_moves(numbers)
    return sum(_reaches(move, int(target)) for move in moves) / len(moves)


def reachable_shares(numbers_NxK: np.ndarray, target_N: np.ndarray) -> np.ndarray:
    """``reachable_share`` for N problems of K numbers each, as a float [N] array.

    Every problem's first moves are listed at once, deduplicated per problem
    and checked together by ``solvable_mask``. Rows whose products could overflow int64 go through
    ``reachable_share`` instead.
    """
    numbers_NxK, target_N = _problem_batch(numbers_NxK, target_N, "reachable_shares")
    n, k = numbers_NxK.shape
    if k == 1:
        return (numbers_NxK[:, 0] == target_N).astype(np.float64)
    overflow_N = (
        np.prod(numbers_NxK.astype(np.float64) + 1.0, axis=1) * (target_N.astype(np.float64) + 1.0)
    ) >= _EXACT_BOUND
    owner_R, moves_RxK1 = _distinct_first_moves(numbers_NxK, ~overflow_N)
    solved_R = solvable_mask(moves_RxK1, target_N[owner_R]).astype(np.float64)
    share_N = np.bincount(owner_R, weights=solved_R, minlength=n) / np.maximum(np.bincount(owner_R, minlength=n), 1)
    for i in np.flatnonzero(overflow_N):
        share_N[i] = reachable_share(numbers_NxK[i].tolist(), int(target_N[i]))
    return share_N


def _distinct_first_moves(numbers_NxK: np.ndarray, keep_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([R] problem index, [R, K-1] sorted remaining numbers): each distinct
    first move of each kept problem once (moves sorted within each problem,
    a move kept when it differs from the one before it)."""
    moves_NxMxK1, valid_NxM = _all_first_moves(numbers_NxK, keep_N)
    keys = [moves_NxMxK1[:, :, c] for c in reversed(range(moves_NxMxK1.shape[2]))]
    order_NxM = np.lexsort(keys + [~valid_NxM], axis=-1)  # invalid moves last
    moves_NxMxK1 = np.take_along_axis(moves_NxMxK1, order_NxM[:, :, None], axis=1)
    first_NxM = np.take_along_axis(valid_NxM, order_NxM, axis=1)
    first_NxM[:, 1:] &= np.any(moves_NxMxK1[:, 1:] != moves_NxMxK1[:, :-1], axis=2)
    owner_NxM = np.broadcast_to(np.arange(len(numbers_NxK))[:, None], first_NxM.shape)
    return owner_NxM[first_NxM], moves_NxMxK1[first_NxM]


def _all_first_moves(numbers_NxK: np.ndarray, keep_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([N, M, K-1] sorted remaining numbers, [N, M] valid): the sum, product,
    difference and quotient of each pair (M = 4 * pairs); a move is invalid
    when its division is inexact or its problem is not kept."""
    n, k = numbers_NxK.shape
    moves, valid = [], []
    for i, j in itertools.combinations(range(k), 2):
        x = np.maximum(numbers_NxK[:, i], numbers_NxK[:, j])
        y = np.minimum(numbers_NxK[:, i], numbers_NxK[:, j])
        divisor = np.maximum(y, 1)
        exact = (y > 0) & (x % divisor == 0)
        values_Nx4 = np.stack([x + y, x * y, x - y, np.where(exact, x // divisor, 0)], axis=1)
        rest_NxR = np.delete(numbers_NxK, [i, j], axis=1)
        moves.append(
            np.concatenate([np.broadcast_to(rest_NxR[:, None, :], (n, 4, k - 2)), values_Nx4[:, :, None]], axis=2)
        )
        valid.append(np.stack([keep_N, keep_N, keep_N, keep_N & exact], axis=1))
    return np.sort(np.concatenate(moves, axis=1), axis=2), np.concatenate(valid, axis=1)
