"""Tests for apr_jax.tasks.countdown.problems."""

import json
import random

import pytest

from apr_jax.tasks.countdown.problems import (
    Problem,
    difficulty,
    generate_problems,
    load_problems,
    make_splits,
    save_problems,
    unseen_problems,
    with_difficulties,
    with_difficulty,
)
from apr_jax.tasks.countdown.solver import is_solvable, reachable_share


def test_generate_is_solvable_in_range_and_deterministic():
    a = generate_problems(50, num_inputs=4, seed=3)
    assert a == generate_problems(50, num_inputs=4, seed=3)
    assert a != generate_problems(50, num_inputs=4, seed=4)
    for p in a:
        assert len(p.numbers) == 4 and all(1 <= n <= 99 for n in p.numbers)
        assert 10 <= p.target <= 100
        assert is_solvable(p.numbers, p.target)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"num_inputs": 1}, "num_inputs"),
        ({"num_inputs": 7}, "num_inputs"),
        ({"min_number": 10, "max_number": 5}, "min_number"),
        ({"min_number": 0}, "min_number"),
        ({"min_target": 50, "max_target": 10}, "min_target"),
    ],
)
def test_generate_rejects_bad_ranges(kwargs, word):
    with pytest.raises(ValueError, match=word):
        generate_problems(1, **kwargs)


def test_generate_gives_up_when_nothing_is_solvable():
    with pytest.raises(ValueError, match="no solvable problem"):
        generate_problems(1, num_inputs=2, min_number=1, max_number=2, min_target=90, max_target=99)


def test_splits_never_overlap_and_are_unique_within():
    splits = make_splits(300, 50, 50, num_inputs=3, max_number=20, max_target=50, seed=1)
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [300, 50, 50]
    keys = [p.key for split in splits.values() for p in split]
    assert len(keys) == len(set(keys))


def test_splits_deterministic_and_held_out_stable():
    a = make_splits(100, 20, 20, num_inputs=3, max_number=20, max_target=50, seed=2)
    b = make_splits(100, 20, 20, num_inputs=3, max_number=20, max_target=50, seed=2)
    c = make_splits(300, 20, 20, num_inputs=3, max_number=20, max_target=50, seed=2)
    assert a == b
    assert a["test"] == c["test"] and a["validation"] == c["validation"]


def test_splits_raise_when_space_too_small():
    with pytest.raises(ValueError, match="only 9 exist"):
        make_splits(10, 5, 5, num_inputs=2, min_number=1, max_number=2, min_target=1, max_target=3)
    with pytest.raises(ValueError, match="unique solvable"):
        make_splits(5, 0, 0, num_inputs=2, min_number=1, max_number=3, min_target=7, max_target=9)


SMALL = dict(num_inputs=2, min_number=1, max_number=6, min_target=1, max_target=12)


def test_unseen_lists_every_solvable_problem_outside_the_splits():
    splits = make_splits(20, 5, 5, **SMALL, seed=0)
    seen = {p.key for split in splits.values() for p in split}
    everything = {((a, b), t) for a in range(1, 7) for b in range(a, 7) for t in range(1, 13) if is_solvable((a, b), t)}
    unseen = unseen_problems(1000, seen, **SMALL, seed=0)
    keys = [p.key for p in unseen]
    assert len(keys) == len(set(keys))  # unique
    assert set(keys) == everything - seen  # all of the rest, none of the splits
    assert unseen[:7] == unseen_problems(7, seen, **SMALL, seed=0)  # deterministic, capped
    assert unseen != unseen_problems(1000, seen, **SMALL, seed=1)


def test_unseen_samples_a_large_space_without_the_excluded():
    drawn = generate_problems(30, num_inputs=4, seed=0)
    seen = {p.key for p in drawn}
    ranges = dict(num_inputs=4, min_number=1, max_number=99, min_target=10, max_target=100)
    unseen = unseen_problems(40, seen, **ranges, seed=0)  # the seed that drew ``drawn``
    assert len({p.key for p in unseen}) == 40 and not {p.key for p in unseen} & seen
    assert all(is_solvable(p.numbers, p.target) for p in unseen)


def test_save_load_round_trip(tmp_path):
    problems = generate_problems(20, num_inputs=3, seed=0)
    path = str(tmp_path / "p.jsonl")
    save_problems(path, problems)
    assert load_problems(path) == problems
    assert Problem.from_dict(problems[0].to_dict()) == problems[0]


@pytest.mark.parametrize(
    "line, word",
    [
        ("{not json", "bad JSON"),
        ('{"numbers": [1, 2]}', "target"),
        ('{"target": 5}', "numbers"),
        ('{"numbers": [1, "2"], "target": 5}', "integers"),
        ('{"numbers": [1, true], "target": 5}', "integers"),
        ('{"numbers": "12", "target": 5}', "list"),
        ('{"numbers": [1, 2], "target": 5.5}', "target"),
        ('{"numbers": [1, -2], "target": 5}', "non-negative"),
        ("[1, 2, 5]", "object"),
        ('{"numbers": [1, 2], "target": 3, "reachable_share": 1.5}', "reachable_share"),
        ('{"numbers": [1, 2], "target": 3, "reachable_share": true}', "reachable_share"),
        ('{"numbers": [1, 2], "target": 3, "reachable_share": "0.5"}', "reachable_share"),
    ],
)
def test_load_errors_name_file_and_line(tmp_path, line, word):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"numbers": [1, 2], "target": 3})
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: .*{word}"):
        load_problems(str(path))


def _one_at_a_time(sizes, num_inputs, min_number, max_number, min_target, max_target, seed, unique=True):
    """The reference drawing: ``randint`` per number, ``is_solvable`` per candidate."""
    rng, seen, out = random.Random(seed), set(), {}
    for name, count in sizes:
        out[name] = []
        while len(out[name]) < count:
            numbers = tuple(rng.randint(min_number, max_number) for _ in range(num_inputs))
            p = Problem(numbers, rng.randint(min_target, max_target))
            if (not unique or p.key not in seen) and is_solvable(p.numbers, p.target):
                seen.add(p.key)
                out[name].append(p)
    return out


@pytest.mark.parametrize("ranges", [(3, 1, 20, 10, 50), (4, 1, 99, 10, 100), (2, 1, 30, 0, 60)])
def test_batched_drawing_gives_the_problems_of_drawing_one_at_a_time(monkeypatch, ranges):
    """Candidates checked together in rounds of 64 (so rounds end mid-split and
    the generator is rewound), in this process or in two while the next round
    is drawn: the same problems in the same order as drawing and checking one
    candidate at a time with ``randint``."""
    from apr_jax.tasks.countdown import problems

    monkeypatch.setattr(problems, "_DRAW_BATCH", 64)
    num_inputs, min_number, max_number, min_target, max_target = ranges
    kwargs = dict(
        num_inputs=num_inputs,
        min_number=min_number,
        max_number=max_number,
        min_target=min_target,
        max_target=max_target,
        seed=4,
    )
    expected = _one_at_a_time([("test", 25), ("validation", 25), ("train", 150)], *ranges, 4)
    assert problems.make_splits(150, 25, 25, **kwargs) == expected
    if num_inputs != 4:
        return  # one range set is enough for the process pool
    monkeypatch.setattr(problems, "_PARALLEL_MIN", 0)  # checked in two processes, a round ahead
    assert problems.make_splits(150, 25, 25, num_workers=2, **kwargs) == expected
    monkeypatch.setattr(problems, "_DRAW_BATCH", 1)  # each split ends with a round drawn ahead
    assert problems.make_splits(30, 5, 5, num_workers=2, **kwargs) == _one_at_a_time(
        [("test", 5), ("validation", 5), ("train", 30)], *ranges, 4
    )
    assert generate_problems(60, **kwargs) == _one_at_a_time([("all", 60)], *ranges, 4, unique=False)["all"]


# ---- oracle difficulty stored with each problem ---------------------------------------


def test_reachable_share_round_trips_but_leaves_identity_alone(tmp_path):
    """The share is written and read back (JSONL too), and absent when unknown;
    equality, hashing and ``key`` ignore it, so deduplication is unchanged."""
    plain, rated = Problem((2, 3), 6), Problem((2, 3), 6, 1 / 3)
    assert plain.to_dict() == {"numbers": [2, 3], "target": 6}
    assert rated.to_dict() == {"numbers": [2, 3], "target": 6, "reachable_share": 1 / 3}
    assert Problem.from_dict(rated.to_dict()).reachable_share == 1 / 3
    assert Problem.from_dict(plain.to_dict()).reachable_share is None
    assert plain == rated and hash(plain) == hash(rated) and plain.key == rated.key
    assert len({plain, rated, Problem((3, 2), 6)}) == 2
    path = str(tmp_path / "p.jsonl")
    save_problems(path, [rated, plain])
    assert [p.reachable_share for p in load_problems(path)] == [1 / 3, None]


def test_difficulty_is_computed_only_when_missing():
    assert with_difficulty(Problem((2, 3), 6)).reachable_share == pytest.approx(1 / 3)
    assert with_difficulty({"numbers": [2, 3], "target": 6}).reachable_share == pytest.approx(1 / 3)
    assert with_difficulty(Problem((2, 3), 6, 0.25)).reachable_share == 0.25  # kept as stored
    assert difficulty(Problem((2, 3), 6)) == pytest.approx(2 / 3)
    assert difficulty(Problem((2, 3), 6, 0.25)) == 0.75
    mixed = [Problem((3, 1, 2), 6), Problem((2, 3), 6, 0.5), Problem((1, 2, 3), 9), Problem((2, 2), 4)]
    assert [p.reachable_share for p in with_difficulties(mixed)] == [5 / 8, 0.5, 1 / 8, 1 / 3]


def test_splits_and_unseen_problems_carry_their_shares():
    splits = make_splits(40, 10, 10, num_inputs=3, max_number=20, max_target=50, seed=3)
    problems = [p for split in splits.values() for p in split]
    assert all(p.reachable_share == reachable_share(p.numbers, p.target) for p in problems)
    unseen = unseen_problems(
        20, {p.key for p in problems}, num_inputs=3, min_number=1, max_number=20, min_target=10, max_target=50, seed=3
    )
    assert len(unseen) == 20
    assert all(p.reachable_share == reachable_share(p.numbers, p.target) for p in unseen)


# ---- several counts of numbers in one split ----------------------------------------------

MIXED = dict(num_inputs=[3, 4], min_number=1, max_number=20, min_target=10, max_target=50)


def test_mixed_counts_share_each_split_equally_and_spread_difficulty():
    """[3, 4]: each split holds both counts in equal shares (the first count
    takes an odd one), listed in turn; unique across splits; deterministic;
    held-out sets stable when train grows; difficulty varies within a split."""
    splits = make_splits(101, 20, 21, seed=0, **MIXED)
    assert {k: len(v) for k, v in splits.items()} == {"train": 101, "validation": 20, "test": 21}
    for name, problems in splits.items():
        sizes = [len(p.numbers) for p in problems]
        assert sizes[:4] == [3, 4, 3, 4]
        assert sizes.count(3) - sizes.count(4) == len(problems) % 2
        shares = [p.reachable_share for p in problems]
        assert len(set(shares)) > 5 and max(shares) - min(shares) > 0.2, name
        assert all(is_solvable(p.numbers, p.target) for p in problems)
    keys = [p.key for split in splits.values() for p in split]
    assert len(keys) == len(set(keys))
    assert make_splits(101, 20, 21, seed=0, **MIXED) == splits
    bigger = make_splits(300, 20, 21, seed=0, **MIXED)
    assert bigger["test"] == splits["test"] and bigger["validation"] == splits["validation"]
    assert make_splits(101, 20, 21, seed=1, **MIXED) != splits
    one = dict(MIXED, num_inputs=[3])
    assert make_splits(30, 5, 5, seed=0, **one) == make_splits(30, 5, 5, seed=0, **dict(one, num_inputs=3))


def test_mixed_counts_for_unseen_problems():
    splits = make_splits(40, 10, 10, seed=0, **MIXED)
    seen = {p.key for split in splits.values() for p in split}
    unseen = unseen_problems(31, seen, seed=0, **MIXED)
    sizes = [len(p.numbers) for p in unseen]
    assert (sizes.count(3), sizes.count(4)) == (16, 15) and sizes[:2] == [3, 4]
    assert not {p.key for p in unseen} & seen and len({p.key for p in unseen}) == 31
    assert unseen == unseen_problems(31, seen, seed=0, **MIXED)


@pytest.mark.parametrize(
    "num_inputs, message",
    [
        ([3, 9], r"^num_inputs=\[3, 9\]: each count must be in \[2, 6\]$"),
        ([], r"^num_inputs=\[\] must name at least one count$"),
        ([3, 3], r"^num_inputs=\[3, 3\]: each count must appear once$"),
        ([3, "4"], r"^num_inputs=\[3, '4'\]: each count must be an integer$"),
        (7, r"^num_inputs=7 must be in \[2, 6\]$"),
        ("3", r"^num_inputs='3' must be an integer or a list of integers$"),
    ],
)
def test_bad_input_counts_are_one_line_errors(num_inputs, message):
    with pytest.raises(ValueError, match=message):
        make_splits(4, 0, 0, **dict(MIXED, num_inputs=num_inputs))
    with pytest.raises(ValueError, match=message):
        unseen_problems(4, set(), **dict(MIXED, num_inputs=num_inputs))
