"""Exact Countdown solver: depth-first over pairs, memoised on the sorted
multiset; and a vectorised yes/no check for many problems at once."""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from apr_jax.countdown.ops import combinations

_MASK_PAIRS = 1 << 17  # value pairs solvable_mask compares per chunk (fits a CPU cache)
_EXACT_BOUND = 2.0 ** 61  # prod(numbers + 1) * (target + 1) below this: nothing overflows int64


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
            rest = state[:i] + state[i + 1:j] + state[j + 1:]
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
            rest = values[:i] + values[i + 1:j] + values[j + 1:]
            for value in ((x + y, x * y, x - y, x // y) if exact else (x + y, x * y, x - y)):
                if _reaches(rest + (value,), target):
                    return True
    return False


def is_solvable(numbers: Sequence[int], target: int) -> bool:
    """Whether some order of operations reaches ``target`` using every number
    (the same answer as ``solve(...) is not None``, about 3x faster)."""
    if not numbers:
        raise ValueError("solve needs at least one number")
    return _reaches(tuple(int(x) for x in numbers), int(target))


def solvable_mask(numbers_NxK: np.ndarray, target_N: np.ndarray) -> np.ndarray:
    """``is_solvable`` for N problems of K numbers each, as a bool [N] array.

    Every value reachable from each proper subset of the K numbers is listed
    in int64 (-1 marks an inexact division); a problem is solvable when some
    split of its numbers into two parts has a pair of values, one from each
    part, that one operation turns into the target. Rows whose values could
    overflow int64 are checked by ``is_solvable`` instead.
    """
    numbers_NxK = np.asarray(numbers_NxK, np.int64)
    target_N = np.asarray(target_N, np.int64)
    if numbers_NxK.ndim != 2 or numbers_NxK.shape[1] < 1 or target_N.shape != numbers_NxK.shape[:1]:
        raise ValueError(f"solvable_mask needs numbers [N, K>=1] and targets [N], got "
                         f"{numbers_NxK.shape} and {target_N.shape}")
    n, k = numbers_NxK.shape
    if k == 1:
        return numbers_NxK[:, 0] == target_N
    full = (1 << k) - 1
    rows = max(1, _MASK_PAIRS // _pairs_compared(k))
    out_N = np.zeros(n, bool)
    for start in range(0, n, rows):
        chunk = numbers_NxK[start:start + rows]
        target_n1 = target_N[start:start + rows, None]
        reach = {1 << i: chunk[:, i:i + 1] for i in range(k)}
        for part in _splits(full):
            out_N[start:start + rows] |= _reaches_target(
                _reachable(part, reach), _reachable(full ^ part, reach), target_n1)
    # Values stay below prod(numbers + 1); the quotient test multiplies one by the target.
    overflow_N = (np.prod(numbers_NxK.astype(np.float64) + 1.0, axis=1)
                  * (target_N.astype(np.float64) + 1.0)) >= _EXACT_BOUND
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
            [_combine(_reachable(p, reach), _reachable(subset ^ p, reach)) for p in _splits(subset)],
            axis=1)
    return reach[subset]


def _operands(a_NxA: np.ndarray, b_NxB: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, A, B] the larger and the smaller value of each pair."""
    return (np.maximum(a_NxA[:, :, None], b_NxB[:, None, :]),
            np.minimum(a_NxA[:, :, None], b_NxB[:, None, :]))


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
