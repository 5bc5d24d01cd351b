"""Tests for apr_jax.countdown.problems."""

import json
import random

import pytest

from apr_jax.countdown.problems import (Problem, generate_problems, load_problems,
                                        make_splits, save_problems, unseen_problems)
from apr_jax.countdown.solver import is_solvable


def test_generate_is_solvable_in_range_and_deterministic():
    a = generate_problems(50, num_inputs=4, seed=3)
    assert a == generate_problems(50, num_inputs=4, seed=3)
    assert a != generate_problems(50, num_inputs=4, seed=4)
    for p in a:
        assert len(p.numbers) == 4 and all(1 <= n <= 99 for n in p.numbers)
        assert 10 <= p.target <= 100
        assert is_solvable(p.numbers, p.target)


@pytest.mark.parametrize("kwargs, word", [
    ({"num_inputs": 1}, "num_inputs"), ({"num_inputs": 7}, "num_inputs"),
    ({"min_number": 10, "max_number": 5}, "min_number"), ({"min_number": 0}, "min_number"),
    ({"min_target": 50, "max_target": 10}, "min_target"),
])
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
    everything = {((a, b), t) for a in range(1, 7) for b in range(a, 7) for t in range(1, 13)
                  if is_solvable((a, b), t)}
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


@pytest.mark.parametrize("line, word", [
    ("{not json", "bad JSON"),
    ('{"numbers": [1, 2]}', "target"),
    ('{"target": 5}', "numbers"),
    ('{"numbers": [1, "2"], "target": 5}', "integers"),
    ('{"numbers": [1, true], "target": 5}', "integers"),
    ('{"numbers": "12", "target": 5}', "list"),
    ('{"numbers": [1, 2], "target": 5.5}', "target"),
    ('{"numbers": [1, -2], "target": 5}', "non-negative"),
    ('[1, 2, 5]', "object"),
])
def test_load_errors_name_file_and_line(tmp_path, line, word):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"numbers": [1, 2], "target": 3})
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: .*{word}"):
        load_problems(str(path))


def _one_at_a_time(sizes, num_inputs, min_number, max_number, min_target, max_target, seed,
                   unique=True):
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
    from apr_jax.countdown import problems
    monkeypatch.setattr(problems, "_DRAW_BATCH", 64)
    num_inputs, min_number, max_number, min_target, max_target = ranges
    kwargs = dict(num_inputs=num_inputs, min_number=min_number, max_number=max_number,
                  min_target=min_target, max_target=max_target, seed=4)
    expected = _one_at_a_time([("test", 25), ("validation", 25), ("train", 150)], *ranges, 4)
    assert problems.make_splits(150, 25, 25, **kwargs) == expected
    if num_inputs != 4:
        return  # one range set is enough for the process pool
    monkeypatch.setattr(problems, "_PARALLEL_MIN", 0)  # checked in two processes, a round ahead
    assert problems.make_splits(150, 25, 25, num_workers=2, **kwargs) == expected
    monkeypatch.setattr(problems, "_DRAW_BATCH", 1)  # each split ends with a round drawn ahead
    assert problems.make_splits(30, 5, 5, num_workers=2, **kwargs) == _one_at_a_time(
        [("test", 5), ("validation", 5), ("train", 30)], *ranges, 4)
    assert generate_problems(60, **kwargs) == _one_at_a_time([("all", 60)], *ranges, 4,
                                                            unique=False)["all"]
