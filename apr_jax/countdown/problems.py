"""Countdown problems: generation (solvable only), deduplicated splits, problems
outside given splits, JSONL I/O."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import math
import random
from concurrent.futures import Executor
from typing import Any, Mapping

import numpy as np

from apr_jax.countdown.solver import is_solvable, solvable_mask
from apr_jax.jsonl_io import read_jsonl, write_jsonl
from apr_jax.processes import process_pool

MIN_INPUTS, MAX_INPUTS = 2, 6
_MAX_FAILED_DRAWS = 20_000  # consecutive useless draws before giving up
_ENUMERATE_LIMIT = 300_000  # problem spaces up to this size are listed, not sampled
_DRAW_BATCH = 4096  # most candidates drawn and checked together
_DRAWS_PER_PROBLEM = 8  # candidates drawn per problem still wanted (~14% of Countdown-4 draws solve)
_PARALLEL_MIN = 20_000  # fewer problems than this are checked in this process


@dataclasses.dataclass(frozen=True)
class Problem:
    numbers: tuple[int, ...]
    target: int

    def to_dict(self) -> dict[str, Any]:
        return {"numbers": list(self.numbers), "target": self.target}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Problem":
        """Build from ``{"numbers": [...], "target": t}``; ValueError when malformed."""
        if not isinstance(d, Mapping):
            raise ValueError(f"problem must be an object, got {type(d).__name__}")
        for key in ("numbers", "target"):
            if key not in d:
                raise ValueError(f"problem is missing key {key!r}")
        numbers, target = d["numbers"], d["target"]
        if not isinstance(numbers, (list, tuple)) or len(numbers) < 1:
            raise ValueError("'numbers' must be a non-empty list of integers")
        if not all(_is_int(x) and x >= 0 for x in numbers):
            raise ValueError(f"'numbers' must hold non-negative integers, got {list(numbers)!r}"[:120])
        if not _is_int(target) or target < 0:
            raise ValueError(f"'target' must be a non-negative integer, got {target!r}"[:120])
        return cls(tuple(int(x) for x in numbers), int(target))

    @property
    def key(self) -> tuple[tuple[int, ...], int]:
        """Identity for deduplication: (sorted numbers, target)."""
        return tuple(sorted(self.numbers)), self.target


def as_problem(problem: "Problem | Mapping[str, Any]") -> Problem:
    """Accept a Problem or its dict form (as stored in ``ThreadTree.problem``)."""
    return problem if isinstance(problem, Problem) else Problem.from_dict(problem)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_ranges(num_inputs: int, min_number: int, max_number: int,
                  min_target: int, max_target: int) -> None:
    if not MIN_INPUTS <= num_inputs <= MAX_INPUTS:
        raise ValueError(f"num_inputs must be in [{MIN_INPUTS}, {MAX_INPUTS}], got {num_inputs}")
    if not 1 <= min_number <= max_number:
        raise ValueError(f"need 1 <= min_number <= max_number, got {min_number}, {max_number}")
    if not 0 <= min_target <= max_target:
        raise ValueError(f"need 0 <= min_target <= max_target, got {min_target}, {max_target}")


def _draw(rng: random.Random, count: int, num_inputs: int, min_number: int, max_number: int,
          min_target: int, max_target: int) -> list[Problem]:
    """``count`` candidates: each ``num_inputs`` numbers, then the target, as
    ``rng.randint`` draws them (CPython's rejection sampling on
    ``getrandbits``, inlined for speed; a test checks it against ``randint``)."""
    getrandbits = rng.getrandbits
    number_span, target_span = max_number - min_number + 1, max_target - min_target + 1
    number_bits, target_bits = number_span.bit_length(), target_span.bit_length()
    out = []
    for _ in range(count):
        numbers = []
        for _ in range(num_inputs):
            r = getrandbits(number_bits)
            while r >= number_span:
                r = getrandbits(number_bits)
            numbers.append(min_number + r)
        r = getrandbits(target_bits)
        while r >= target_span:
            r = getrandbits(target_bits)
        out.append(Problem(tuple(numbers), min_target + r))
    return out


def generate_problems(count: int, num_inputs: int = 4, min_number: int = 1,
                      max_number: int = 99, min_target: int = 10, max_target: int = 100,
                      seed: int = 0) -> list[Problem]:
    """``count`` solvable problems (unsolvable draws are redrawn), deterministic by seed."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    ranges = (num_inputs, min_number, max_number, min_target, max_target)
    _check_ranges(*ranges)
    out = _draw_solvable(random.Random(seed), ranges, None, count)
    if len(out) < count:
        raise ValueError(f"no solvable problem in {_MAX_FAILED_DRAWS} draws; widen the ranges")
    return out


def _space_size(num_inputs: int, min_number: int, max_number: int,
                min_target: int, max_target: int) -> int:
    """How many (number multiset, target) problems the ranges hold, solvable or not."""
    return (math.comb(max_number - min_number + num_inputs, num_inputs)
            * (max_target - min_target + 1))


def _draw_solvable(rng: random.Random, ranges: tuple[int, ...],
                   seen: set[tuple[tuple[int, ...], int]] | None, count: int,
                   pool: Executor | None = None, workers: int = 1) -> list[Problem]:
    """Up to ``count`` solvable problems drawn from ``ranges``; with ``seen``,
    only problems whose keys are not in it (their keys are added to it).
    Fewer come back when ``_MAX_FAILED_DRAWS`` draws in a row find nothing new.

    Candidates are drawn in rounds, checked together by ``solvable_mask`` and
    taken in draw order. With a ``pool`` each round is checked there in
    ``workers`` parts while the next round is drawn. ``rng`` ends just after
    the last candidate taken, so the problems (and any drawn after them) are
    those of drawing and checking one candidate at a time."""
    out: list[Problem] = []
    failed = 0
    rounds: collections.deque = collections.deque()  # (rng state before, candidates, check)

    def draw_round() -> None:
        state = rng.getstate()
        size = min(_DRAW_BATCH, _DRAWS_PER_PROBLEM * (count - len(out)))
        candidates = _draw(rng, size, *ranges)
        numbers = np.array([p.numbers for p in candidates])
        targets = np.array([p.target for p in candidates])
        if pool is None:
            check = solvable_mask(numbers, targets)
        else:
            parts = np.array_split(np.arange(size), workers)
            check = [pool.submit(solvable_mask, numbers[i], targets[i]) for i in parts]
        rounds.append((state, candidates, check))

    while len(out) < count and failed <= _MAX_FAILED_DRAWS:
        while len(rounds) < (2 if pool else 1):
            draw_round()
        state, candidates, check = rounds.popleft()
        solvable = check if pool is None else np.concatenate([f.result() for f in check])
        used = 0
        for p, ok in zip(candidates, solvable.tolist()):
            used += 1
            if ok and (seen is None or p.key not in seen):
                if seen is not None:
                    seen.add(p.key)
                out.append(p)
                failed = 0
                if len(out) == count:
                    break
            else:
                failed += 1
                if failed > _MAX_FAILED_DRAWS:
                    break
        if used < len(candidates):  # rewind to just after the last candidate looked at
            rounds.clear()
            rng.setstate(state)
            _draw(rng, used, *ranges)
    if rounds:  # a round drawn ahead and not looked at: undo its draws
        rng.setstate(rounds[0][0])
    return out


def make_splits(num_train: int, num_validation: int, num_test: int, *, num_inputs: int = 4,
                min_number: int = 1, max_number: int = 99, min_target: int = 10,
                max_target: int = 100, seed: int = 0, num_workers: int = 1
                ) -> dict[str, list[Problem]]:
    """Train/validation/test problems, unique within and across splits by
    (sorted numbers, target). Test is drawn first, then validation, then train,
    so the held-out sets do not change when ``num_train`` changes. With
    ``num_workers > 1`` (and many problems) the solvability checks run in
    that many processes (same problems)."""
    sizes = {"test": num_test, "validation": num_validation, "train": num_train}
    if any(n < 0 for n in sizes.values()):
        raise ValueError(f"split sizes must be >= 0, got {sizes}")
    ranges = (num_inputs, min_number, max_number, min_target, max_target)
    _check_ranges(*ranges)
    total = sum(sizes.values())
    space = _space_size(*ranges)
    if total > space:
        raise ValueError(f"{total} unique problems requested but only {space} exist in these ranges")
    rng = random.Random(seed)
    seen: set[tuple[tuple[int, ...], int]] = set()
    splits: dict[str, list[Problem]] = {}
    parallel = num_workers > 1 and total >= _PARALLEL_MIN
    with process_pool(num_workers) if parallel else contextlib.nullcontext() as pool:
        for name in ("test", "validation", "train"):
            splits[name] = _draw_solvable(rng, ranges, seen, sizes[name], pool, num_workers)
            if len(splits[name]) < sizes[name]:
                raise ValueError(
                    f"could not find {total} unique solvable problems "
                    f"(stuck at {len(seen)}); widen the ranges or ask for fewer")
    return {"train": splits["train"], "validation": splits["validation"], "test": splits["test"]}


def unseen_problems(count: int, exclude: set[tuple[tuple[int, ...], int]], *, num_inputs: int,
                    min_number: int, max_number: int, min_target: int, max_target: int,
                    seed: int = 0) -> list[Problem]:
    """Up to ``count`` unique solvable problems in the ranges whose ``key`` is not
    in ``exclude``, deterministic by seed. A small space is listed in full, so
    fewer than ``count`` come back when it runs out; a large one is sampled."""
    ranges = (num_inputs, min_number, max_number, min_target, max_target)
    _check_ranges(*ranges)
    rng = random.Random(seed)
    out: list[Problem] = []
    if _space_size(*ranges) <= _ENUMERATE_LIMIT:
        keys = [(numbers, target)
                for numbers in itertools.combinations_with_replacement(
                    range(min_number, max_number + 1), num_inputs)
                for target in range(min_target, max_target + 1)]
        rng.shuffle(keys)
        for numbers, target in keys:
            if len(out) == count:
                break
            if (numbers, target) not in exclude and is_solvable(numbers, target):
                order = list(numbers)
                rng.shuffle(order)  # drawn problems do not list their numbers sorted either
                out.append(Problem(tuple(order), target))
        return out
    return _draw_solvable(rng, ranges, set(exclude), count)


def save_problems(path: str, problems: list[Problem]) -> None:
    """Write one JSON object per line."""
    write_jsonl(path, problems)


def load_problems(path: str) -> list[Problem]:
    """Read JSONL written by ``save_problems``; blank lines are skipped.
    Malformed lines raise ``ValueError("path:line: what is wrong")``."""
    return read_jsonl(path, Problem.from_dict)
