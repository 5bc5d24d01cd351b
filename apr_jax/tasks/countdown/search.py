"""The symbolic search behind every trace: heuristic depth-first search.

The root node is expanded, its successors are ordered best-first by a
heuristic and the best ``beam_size`` are kept. Each kept successor is a
*branch*; a branch is searched depth-first (children again ordered
best-first and cut to ``beam_size``) and may visit at most ``max_nodes``
nodes (leaves included). The search stops at the first leaf equal to the
target.

SoS+ writes all branches in one thread; APR hands each branch to a child
thread (and, deeper, each sub-branch to a grandchild with the budget the
sequential search would have left for it). Both call ``explore`` on the same
branches with the same budgets, so they solve exactly the same problems and
return the same solution path.
"""

from __future__ import annotations

from typing import NamedTuple

from apr_jax.tasks.countdown.ops import results

INNER, GOAL, DEAD = 0, 1, -1  # visit status: inner node, leaf == target, leaf != target


class Node(NamedTuple):
    """A search state (a tuple, so building the many never visited is cheap)."""

    numbers: tuple[int, ...]  # remaining numbers, the newest result last
    operations: tuple[str, ...]  # path from the root
    index: tuple[int, ...]  # (0,) for the root; child i of n is n.index + (i,)

    @property
    def is_leaf(self) -> bool:
        return len(self.numbers) == 1


Visit = tuple[Node, int]  # (node, INNER | GOAL | DEAD)


def _cost(n: int, target: int) -> int:
    """The heuristic, lower is better: a number costs its distance to the
    target, or (when smaller) how far it is from dividing the target; a state
    costs the sum over its numbers (a leaf: its distance)."""
    if n >= target:
        return n - target
    if n > 1:
        r = target % n
        return min(target - n, r, n - r)
    return target - n


def expand(node: Node, target: int, beam_size: int) -> list[Node]:
    """The best ``beam_size`` distinct successors of ``node``, best first."""
    nums = node.numbers
    n = len(nums)
    ops, index = node.operations, node.index
    if n == 2:  # successors are leaves: each result is its own state
        kept = sorted((abs(value - target), k, value, symbol) for k, (value, symbol) in enumerate(results(*nums)))[
            :beam_size
        ]
        x, y = max(nums), min(nums)
        return [
            Node((value,), ops + (f"{x}{symbol}{y}={value}",), index + (k,))
            for k, (_, _, value, symbol) in enumerate(kept)
        ]
    scored: list[tuple[int, int, tuple[int, ...], int, str, int, int]] = []
    seen: set[tuple[int, ...]] = set()
    for i in range(n):
        for j in range(i + 1, n):
            rest = nums[:i] + nums[i + 1 : j] + nums[j + 1 :]
            rest_cost = sum(_cost(r, target) for r in rest)
            x, y = (nums[i], nums[j]) if nums[i] >= nums[j] else (nums[j], nums[i])
            for value, symbol in results(x, y):
                new = rest + (value,)
                key = tuple(sorted(new))
                if key in seen:
                    continue
                seen.add(key)
                scored.append((rest_cost + _cost(value, target), len(scored), new, x, symbol, y, value))
    scored.sort()
    return [
        Node(new, ops + (f"{x}{symbol}{y}={value}",), index + (k,))  # text for kept ones only
        for k, (_, _, new, x, symbol, y, value) in enumerate(scored[:beam_size])
    ]


def explore(node: Node, target: int, beam_size: int, budget: int, visits: list[Visit]) -> tuple[str, ...] | None:
    """Depth-first search of ``node``'s subtree visiting at most ``budget`` nodes.
    Appends every visit to ``visits``; returns the solution path or None."""
    if budget <= 0:
        return None
    if node.is_leaf:
        goal = node.numbers[0] == target
        visits.append((node, GOAL if goal else DEAD))
        return node.operations if goal else None
    start = len(visits)
    visits.append((node, INNER))
    for child in expand(node, target, beam_size):
        left = budget - (len(visits) - start)
        if left <= 0:
            break
        found = explore(child, target, beam_size, left, visits)
        if found is not None:
            return found
    return None


def root_node(numbers: tuple[int, ...]) -> Node:
    return Node(tuple(numbers), (), (0,))
