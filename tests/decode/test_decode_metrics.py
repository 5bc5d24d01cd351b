"""pass@k, cons@k and sequential-token accounting."""

import itertools
import math

import pytest

from apr_jax import protocol
from apr_jax.decode import metrics
from apr_jax.threads import Segment, Thread, ThreadTree


def _brute_pass_at_k(n, c, k):
    flags = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(flags[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 1, 1), (5, 2, 3), (6, 3, 2), (7, 1, 7), (4, 4, 2), (8, 5, 4)])
def test_pass_at_k_matches_enumeration(n, c, k):
    assert metrics.pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k))


def test_pass_at_k_simple_values():
    assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert metrics.pass_at_k(10, 0, 5) == 0.0
    assert metrics.pass_at_k(10, 6, 5) == 1.0
    assert metrics.pass_at_k(100, 1, 10) == pytest.approx(1 - math.comb(99, 10) / math.comb(100, 10))


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_bad_counts(n, c, k):
    with pytest.raises(ValueError):
        metrics.pass_at_k(n, c, k)


def test_cons_at_k_majority_and_ties():
    assert metrics.cons_at_k(["7", "7", "9"], [True, True, False])
    assert not metrics.cons_at_k(["9", "7", "9"], [False, True, False])
    # tie 1-1 between "9" and "7": the first seen ("9") wins
    assert not metrics.cons_at_k(["9", "7"], [False, True])
    assert metrics.cons_at_k(["7", "9"], [True, False])
    # None answers do not vote
    assert metrics.cons_at_k([None, None, "7"], [False, False, True])
    assert not metrics.cons_at_k([None, None], [False, False])
    with pytest.raises(ValueError, match="correct flags"):
        metrics.cons_at_k(["1"], [])


def test_sequential_tokens_on_hand_built_counts():
    # root(10) spawns [1 (5), 2 (8)], then [3 (4)]; 1 spawns [4 (20)].
    written = [10, 5, 8, 4, 20]
    spawns = metrics.spawns_from_parents(parent=[-1, 0, 0, 0, 1], spawn_round=[-1, 0, 0, 1, 0])
    assert spawns == [[[1, 2], [3]], [[4]], [], [], []]
    assert metrics.sequential_tokens(written, spawns) == 10 + max(5 + 20, 8) + 4
    assert metrics.sequential_tokens(written, spawns, root=1) == 25
    with pytest.raises(ValueError, match="own ancestor"):
        metrics.sequential_tokens([1, 1], [[[1]], [[0]]])
    with pytest.raises(ValueError, match="bad parent"):
        metrics.spawns_from_parents([-1, 5], [-1, 0])


def _tree(meta):
    spawn1 = protocol.spawn_block(["a", "b"])
    spawn2 = protocol.spawn_block(["c"])
    root = Thread(
        parent=-1,
        children=[1, 2, 3],
        segments=[
            Segment("prompt", "P"),
            Segment("model", "xx" + spawn1),
            Segment("join", protocol.join_block(["r", "s"])),
            Segment("model", spawn2),
            Segment("join", protocol.join_block(["t"])),
            Segment("model", "done"),
        ],
    )
    kids = [
        Thread(
            parent=0,
            segments=[
                Segment("prompt", protocol.child_prompt(m)),
                Segment("model", "w" * n + protocol.return_block("r")),
            ],
            stop="return",
        )
        for m, n in (("a", 3), ("b", 9), ("c", 1))
    ]
    return ThreadTree(problem={}, threads=[root] + kids, meta=meta)


def written(tree, count_tokens):
    return [count_tokens(t.written_text) for t in tree.threads]


def test_sequential_tokens_of_a_tree_from_spawn_blocks_and_meta():
    count = len  # one token per character
    tree = _tree({})
    assert metrics.tree_spawns(tree) == [[[1, 2], [3]], [], [], []]
    root_written = len(tree.threads[0].written_text)
    kid = [len(t.written_text) for t in tree.threads[1:]]
    expected = root_written + max(kid[0], kid[1]) + kid[2]
    assert metrics.sequential_tokens(written(tree, count), metrics.tree_spawns(tree)) == expected
    # the engine's meta wins over parsing: here all three children in one round
    one_round = _tree({"spawn_round": [-1, 0, 0, 0]})
    assert metrics.sequential_tokens(written(one_round, count), metrics.tree_spawns(one_round)) == root_written + max(
        kid
    )
    broken = _tree({})
    broken.threads[0].children = [1, 2]
    with pytest.raises(ValueError, match="spawn blocks name 3 children"):
        metrics.tree_spawns(broken)


def test_sign_test_p_by_hand():
    assert metrics.sign_test_p(0, 0) == 1.0
    assert metrics.sign_test_p(3, 3) == 1.0  # an even split is no evidence
    assert math.isclose(metrics.sign_test_p(10, 0), 2 / 2**10)
    assert math.isclose(metrics.sign_test_p(1, 4), 2 * (1 + 5) / 2**5)
    assert metrics.sign_test_p(28, 19) == metrics.sign_test_p(19, 28)
    assert 0.2 < metrics.sign_test_p(28, 19) < 0.3


def test_spawn_measures_count_children_rounds_and_depth_by_hand():
    # root spawns [1, 2] then [3] (2 rounds); 1 spawns [4] (1 round); 4 spawns
    # once and every child of that round was dropped (1 round, no thread).
    measures = metrics.spawn_measures(parent=[-1, 0, 0, 0, 1], rounds=[2, 1, 0, 0, 1])
    assert measures == {"children": 4, "spawn_rounds": 4, "depth": 2}
    assert metrics.spawn_measures([-1], [0]) == {"children": 0, "spawn_rounds": 0, "depth": 0}
    # a child numbered before its parent still gets its depth from the chain
    assert metrics.spawn_measures([-1, 2, 0], [1, 0, 1])["depth"] == 2
    with pytest.raises(ValueError, match="own ancestor"):
        metrics.spawn_measures([-1, 2, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="root"):
        metrics.spawn_measures([0, -1], [0, 0])
    with pytest.raises(ValueError, match="round counts"):
        metrics.spawn_measures([-1, 0], [1])
