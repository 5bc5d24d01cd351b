"""Host-side evaluation arithmetic: pass@k, cons@k, sequential tokens,
acceleration, the shape of a thread tree (children, spawn rounds, depth)
and the paired sign test."""

from __future__ import annotations

import collections
import math
from typing import Hashable, Sequence

from apr_jax import protocol
from apr_jax.threads import ThreadTree


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct:
    1 - C(n - c, k) / C(n, k), computed as a stable product."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise ValueError(f"pass_at_k needs ints, got n={n!r} c={c!r} k={k!r}")
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c} n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k} n={n}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def cons_at_k(answers: Sequence[Hashable | None], correct_flags: Sequence[bool]) -> bool:
    """Majority vote: is the most frequent non-None answer correct?

    ``answers[i]`` is sample i's final answer (None when it gave none) and
    ``correct_flags[i]`` whether it is correct. Ties go to the tied answer that
    appears first; its correctness is that of its first sample. No answer at
    all counts as wrong."""
    if len(answers) != len(correct_flags):
        raise ValueError(f"{len(answers)} answers but {len(correct_flags)} correct flags")
    counts = collections.Counter(a for a in answers if a is not None)
    if not counts:
        return False
    best = max(counts.values())
    for answer, flag in zip(answers, correct_flags):
        if answer is not None and counts[answer] == best:
            return bool(flag)
    raise AssertionError("unreachable")


def sign_test_p(only_a: int, only_b: int) -> float:
    """Two-sided exact sign test on paired outcomes: the chance of a split at
    least this uneven between problems only A solved and only B solved, if
    A and B were equally good."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def spawns_from_parents(parent: Sequence[int], spawn_round: Sequence[int]) -> list[list[list[int]]]:
    """``spawns[i][r]``: the children thread i created in its spawn round r,
    from each thread's parent index and the round that created it."""
    spawns: list[list[list[int]]] = [[] for _ in parent]
    for i, (p, r) in enumerate(zip(parent, spawn_round)):
        if p < 0:
            continue
        if not 0 <= p < len(parent) or r < 0:
            raise ValueError(f"thread {i} has bad parent {p} or spawn round {r}")
        while len(spawns[p]) <= r:
            spawns[p].append([])
        spawns[p][r].append(i)
    return spawns


def sequential_tokens(written: Sequence[int], spawns: Sequence[Sequence[Sequence[int]]], root: int = 0) -> int:
    """Tokens on the critical path: a thread's own written tokens plus, for each
    of its spawn rounds, the largest sequential count among that round's children."""
    if len(written) != len(spawns):
        raise ValueError(f"{len(written)} written counts but {len(spawns)} spawn lists")
    visiting: set[int] = set()

    def seq(i: int) -> int:
        if i in visiting:
            raise ValueError(f"thread {i} is its own ancestor")
        visiting.add(i)
        total = written[i] + sum(max((seq(c) for c in rnd), default=0) for rnd in spawns[i])
        visiting.discard(i)
        return total

    return seq(root)


def spawn_measures(parent: Sequence[int], rounds: Sequence[int]) -> dict[str, int]:
    """How wide and deep one sample's thread tree went, from each thread's
    parent index (-1 for the root, thread 0) and the spawn rounds it ran:
    ``children`` (threads spawned, at any depth), ``spawn_rounds`` (spawn
    blocks run by all threads together, a round whose children were all
    dropped included) and ``depth`` (the deepest thread's nesting: 0 when
    nothing spawned, 1 for children of the root, ...)."""
    if len(parent) != len(rounds):
        raise ValueError(f"{len(parent)} parents but {len(rounds)} round counts")
    if not parent or parent[0] != -1:
        raise ValueError("thread 0 must be the root (parent -1)")
    depth = [0] * len(parent)
    for i in range(1, len(parent)):
        node, steps = i, 0
        while node != 0:
            p = parent[node]
            if not 0 <= p < len(parent) or p == node or steps >= len(parent):
                raise ValueError(f"thread {node} has bad parent {p} (or is its own ancestor)")
            node, steps = p, steps + 1
        depth[i] = steps
    if any(r < 0 for r in rounds):
        raise ValueError(f"negative spawn round count in {list(rounds)}")
    return {"children": len(parent) - 1, "spawn_rounds": int(sum(rounds)), "depth": max(depth)}


def acceleration(total_tokens: int, sequential_tokens: int) -> float:
    """Total written tokens over critical-path tokens: 1 for a single thread,
    up to the number of threads when all run side by side; 1 when nothing
    was written."""
    if sequential_tokens <= 0:
        return 1.0
    return total_tokens / sequential_tokens


def tree_spawns(tree: ThreadTree) -> list[list[list[int]]]:
    """Spawn rounds of a tree: from ``meta['spawn_round']`` when the engine wrote
    it, else by counting the messages of each spawn block the parent wrote."""
    if "spawn_round" in tree.meta:
        return spawns_from_parents([t.parent for t in tree.threads], tree.meta["spawn_round"])
    spawns: list[list[list[int]]] = []
    for i, thread in enumerate(tree.threads):
        text, rounds, used = thread.written_text, [], 0
        start = text.find(protocol.SPAWN_OPEN)
        while start >= 0:
            end = text.find(protocol.SPAWN_CLOSE, start)
            if end < 0:
                break
            n = text[start:end].count(protocol.SEP) + 1
            rounds.append(thread.children[used : used + n])
            used += n
            start = text.find(protocol.SPAWN_OPEN, end)
        if used != len(thread.children):
            raise ValueError(f"thread {i}: spawn blocks name {used} children, tree has {len(thread.children)}")
        spawns.append(rounds)
    return spawns
