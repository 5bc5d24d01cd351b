"""Countdown problems: generation (solvable only), deduplicated splits (one
count of numbers or several in equal shares), problems outside given splits,
their oracle difficulty, JSONL I/O."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import math
import random
from concurrent.futures import Executor
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from apr_jax.runtime.jsonl import read_jsonl, write_jsonl
from apr_jax.runtime.processes import process_pool
from apr_jax.tasks.countdown.solver import is_solvable, reachable_share, reachable_shares, solvable_mask

MIN_INPUTS, MAX_INPUTS = 2, 6
_MAX_FAILED_DRAWS = 20_000  # consecutive useless draws before giving up
_ENUMERATE_LIMIT = 300_000  # problem spaces up to this size are listed, not sampled
_DRAW_BATCH = 4096  # most candidates drawn and checked together
_DRAWS_PER_PROBLEM = 8  # candidates drawn per problem still wanted (~14% of Countdown-4 draws solve)
_PARALLEL_MIN = 20_000  # fewer problems than this are checked in this process


@dataclasses.dataclass(frozen=True)
class Problem:
    """Numbers and a target; ``reachable_share`` (the oracle difficulty's
    complement, ``apr_jax.tasks.countdown.solver.reachable_share``) when known. The
    share is not part of equality, hashing or ``key``."""

    numbers: tuple[int, ...]
    target: int
    reachable_share: float | None = dataclasses.field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"numbers": list(self.numbers), "target": self.target}
        if self.reachable_share is not None:
            d["reachable_share"] = self.reachable_share
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Problem":
        """Build from ``{"numbers": [...], "target": t}`` (and an optional
        ``"reachable_share"`` in [0, 1]); ValueError when malformed."""
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
        return cls(tuple(int(x) for x in numbers), int(target), _share_of(d.get("reachable_share")))

    @property
    def key(self) -> tuple[tuple[int, ...], int]:
        """Identity for deduplication: (sorted numbers, target)."""
        return tuple(sorted(self.numbers)), self.target


def as_problem(problem: "Problem | Mapping[str, Any]") -> Problem:
    """Accept a Problem or its dict form (as stored in ``ThreadTree.problem``)."""
    return problem if isinstance(problem, Problem) else Problem.from_dict(problem)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _share_of(value: Any) -> float | None:
    """A stored ``reachable_share``: None when absent; ValueError unless a number in [0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"'reachable_share' must be a number in [0, 1], got {value!r}"[:120])
    return float(value)


# ---- oracle difficulty -------------------------------------------------------------


def with_difficulty(problem: "Problem | Mapping[str, Any]") -> Problem:
    """``problem`` with its ``reachable_share`` filled (computed when missing)."""
    problem = as_problem(problem)
    if problem.reachable_share is not None:
        return problem
    return dataclasses.replace(problem, reachable_share=reachable_share(problem.numbers, problem.target))


def difficulty(problem: "Problem | Mapping[str, Any]") -> float:
    """The oracle difficulty in [0, 1]: one minus the problem's reachable share
    (computed when the problem does not carry it); higher is harder."""
    return 1.0 - with_difficulty(problem).reachable_share


def with_difficulties(problems: Sequence[Problem]) -> list[Problem]:
    """``with_difficulty`` of each problem, the missing shares computed
    together (``reachable_shares``, one batch per count of numbers)."""
    out = list(problems)
    missing: dict[int, list[int]] = collections.defaultdict(list)
    for i, p in enumerate(out):
        if p.reachable_share is None:
            missing[len(p.numbers)].append(i)
    for indices in missing.values():
        shares = reachable_shares(
            np.array([out[i].numbers for i in indices]), np.array([out[i].target for i in indices])
        )
        for i, share in zip(indices, shares.tolist()):
            out[i] = dataclasses.replace(out[i], reachable_share=share)
    return out


# ---- drawing -----------------------------------------------------------------------


def input_counts(num_inputs: "int | Iterable[int]", name: str = "num_inputs") -> tuple[int, ...]:
    """``num_inputs`` (one count of numbers, or a list of counts drawn in
    equal shares) as a tuple of counts; a one-line ValueError naming ``name``
    when it is not an int or a non-empty list of distinct ints in
    [MIN_INPUTS, MAX_INPUTS]."""
    if _is_int(num_inputs):
        if not MIN_INPUTS <= num_inputs <= MAX_INPUTS:
            raise ValueError(f"{name}={num_inputs} must be in [{MIN_INPUTS}, {MAX_INPUTS}]")
        return (num_inputs,)
    if not isinstance(num_inputs, (list, tuple)):
        raise ValueError(f"{name}={num_inputs!r} must be an integer or a list of integers"[:160])
    counts = list(num_inputs)
    if not counts:
        raise ValueError(f"{name}=[] must name at least one count")
    if not all(_is_int(c) for c in counts):
        raise ValueError(f"{name}={counts!r}: each count must be an integer"[:160])
    if not all(MIN_INPUTS <= c <= MAX_INPUTS for c in counts):
        raise ValueError(f"{name}={counts}: each count must be in [{MIN_INPUTS}, {MAX_INPUTS}]")
    if len(set(counts)) < len(counts):
        raise ValueError(f"{name}={counts}: each count must appear once")
    return tuple(counts)


def _check_ranges(num_inputs: int, min_number: int, max_number: int, min_target: int, max_target: int) -> None:
    if not MIN_INPUTS <= num_inputs <= MAX_INPUTS:
        raise ValueError(f"num_inputs must be in [{MIN_INPUTS}, {MAX_INPUTS}], got {num_inputs}")
    if not 1 <= min_number <= max_number:
        raise ValueError(f"need 1 <= min_number <= max_number, got {min_number}, {max_number}")
    if not 0 <= min_target <= max_target:
        raise ValueError(f"need 0 <= min_target <= max_target, got {min_target}, {max_target}")


def _draw(
    rng: random.Random, count: int, num_inputs: int, min_number: int, max_number: int, min_target: int, max_target: int
) -> list[Problem]:
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


def generate_problems(
    count: int,
    num_inputs: int = 4,
    min_number: int = 1,
    max_number: int = 99,
    min_target: int = 10,
    max_target: int = 100,
    seed: int = 0,
) -> list[Problem]:
    """``count`` solvable problems (unsolvable draws are redrawn), deterministic by seed."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    ranges = (num_inputs, min_number, max_number, min_target, max_target)
    _check_ranges(*ranges)
    out = _draw_solvable(random.Random(seed), ranges, None, count)
    if len(out) < count:
        raise ValueError(f"no solvable problem in {_MAX_FAILED_DRAWS} draws; widen the ranges")
    return out


def _space_size(num_inputs: int, min_number: int, max_number: int, min_target: int, max_target: int) -> int:
    """How many (number multiset, target) problems the ranges hold, solvable or not."""
    return math.comb(max_number - min_number + num_inputs, num_inputs) * (max_target - min_target + 1)


def _draw_solvable(
    rng: random.Random,
    ranges: tuple[int, ...],
    seen: set[tuple[tuple[int, ...], int]] | None,
    count: int,
    pool: Executor | None = None,
    workers: int = 1,
) -> list[Problem]:
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


def make_splits(
    num_train: int,
    num_validation: int,
    num_test: int,
    *,
    num_inputs: int | Sequence[int] = 4,
    min_number: int = 1,
    max_number: int = 99,
    min_target: int = 10,
    max_target: int = 100,
    seed: int = 0,
    num_workers: int = 1,
) -> dict[str, list[Problem]]:
    """Train/validation/test problems, unique within and across splits by
    (sorted numbers, target), each with its ``reachable_share``. Test is drawn
    first, then validation, then train, so the held-out sets do not change
    when ``num_train`` changes. With ``num_workers > 1`` (and many problems)
    the solvability checks run in that many processes (same problems).

    ``num_inputs`` may list several counts of numbers (e.g. ``[3, 4]``): each
    split then holds each count in equal shares (the first counts take one
    more when a size does not divide), drawn count after count from the one
    generator and listed in turn: 3, 4, 3, 4, ...
    """
    sizes = {"test": num_test, "validation": num_validation, "train": num_train}
    if any(n < 0 for n in sizes.values()):
        raise ValueError(f"split sizes must be >= 0, got {sizes}")
    ranges = _ranges_per_count(num_inputs, min_number, max_number, min_target, max_target)
    shares = [_share_sizes(sizes, len(ranges), i) for i in range(len(ranges))]
    for r, share in zip(ranges, shares):
        space = _space_size(*r)
        if sum(share.values()) > space:
            raise ValueError(
                f"{sum(share.values())} unique problems of {r[0]} numbers requested but "
                f"only {space} exist in these ranges"
            )
    rng = random.Random(seed)
    seen: set[tuple[tuple[int, ...], int]] = set()
    splits: dict[str, list[Problem]] = {}
    parallel = num_workers > 1 and sum(sizes.values()) >= _PARALLEL_MIN
    with process_pool(num_workers) if parallel else contextlib.nullcontext() as pool:
        for name in ("test", "validation", "train"):
            groups = []
            for r, share in zip(ranges, shares):
                groups.append(_draw_solvable(rng, r, seen, share[name], pool, num_workers))
                if len(groups[-1]) < share[name]:
                    raise ValueError(
                        f"could not find {sum(share.values())} unique solvable problems of {r[0]} "
                        f"numbers (stuck at {len(seen)}); widen the ranges or ask for fewer"
                    )
            splits[name] = _interleave(groups)
    return {name: with_difficulties(splits[name]) for name in ("train", "validation", "test")}


def _ranges_per_count(
    num_inputs: int | Sequence[int], min_number: int, max_number: int, min_target: int, max_target: int
) -> list[tuple[int, ...]]:
    """The checked ranges of each count of numbers ``num_inputs`` names."""
    ranges = [(c, min_number, max_number, min_target, max_target) for c in input_counts(num_inputs)]
    for r in ranges:
        _check_ranges(*r)
    return ranges


def _share_sizes(sizes: Mapping[str, int], parts: int, index: int) -> dict[str, int]:
    """Part ``index`` of ``parts`` equal shares of each size (the first parts
    take the remainder, one each)."""
    return {name: n // parts + (index < n % parts) for name, n in sizes.items()}


def _interleave(groups: Sequence[Sequence[Problem]]) -> list[Problem]:
    """One problem of each group in turn (groups may differ in length)."""
    return [p for row in itertools.zip_longest(*groups) for p in row if p is not None]


def unseen_problems(
    count: int,
    exclude: set[tuple[tuple[int, ...], int]],
    *,
    num_inputs: int | Sequence[int],
    min_number: int,
    max_number: int,
    min_target: int,
    max_target: int,
    seed: int = 0,
) -> list[Problem]:
    """Up to ``count`` unique solvable problems in the ranges whose ``key`` is not
    in ``exclude``, deterministic by seed, each with its ``reachable_share``.
    A small space is listed in full, so fewer than ``count`` come back when it
    runs out; a large one is sampled. Several counts of numbers share ``count``
    equally and are listed in turn, as in ``make_splits``."""
    ranges = _ranges_per_count(num_inputs, min_number, max_number, min_target, max_target)
    rng = random.Random(seed)
    groups = [
        _unseen_of_one_count(count // len(ranges) + (i < count % len(ranges)), exclude, r, rng)
        for i, r in enumerate(ranges)
    ]
    return with_difficulties(_interleave(groups))


def _unseen_of_one_count(
    count: int, exclude: set[tuple[tuple[int, ...], int]], ranges: tuple[int, ...], rng: random.Random
) -> list[Problem]:
    """``unseen_problems`` for one count of numbers, drawn from ``rng`` (no shares filled)."""
    num_inputs, min_number, max_number, min_target, max_target = ranges
    out: list[Problem] = []
    if _space_size(*ranges) <= _ENUMERATE_LIMIT:
        keys = [
            (numbers, target)
            for numbers in itertools.combinations_with_replacement(range(min_number, max_number + 1), num_inputs)
            for target in range(min_target, max_target + 1)
        ]
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
