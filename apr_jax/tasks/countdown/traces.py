"""SoS+ and APR trace generators producing ``ThreadTree``s.

Both run the search of ``search.py`` (same branches, same budgets), so for one
unconditioned config they solve the same problems with the same final path; they differ
only in who writes which part of the search:

- ``sosp_trace``: one thread writes every branch, then the answer line.
- ``apr_trace``: the root expands the problem and spawns one child per kept
  branch (``max_children`` per spawn round; further rounds only if a round
  found nothing). A conditioned trace (``c<n>`` prefix) instead draws n in
  1..``max_children`` and spawns one round of n children per spawn point, so
  it may leave branches unsearched that the sequential search would visit.
  A child at thread depth < ``max_depth`` whose node has three or more
  numbers may itself spawn (grandchildren get the budget the
  sequential search would have left them); otherwise it searches its branch
  and returns the path or a failure message. Each spawn point spawns with
  probability ``spawn_prob`` and otherwise searches sequentially.

With ``probe_nodes`` > 0 (unconditioned APR only) the width follows the
search: each spawn point first *probes*, i.e. searches its best successor's
branch itself, in its own context, written as SoS+ writes it, visiting at
most ``probe_nodes`` of the nodes the sequential search gives that branch. A
probe that reaches the target ends the thread's search (the root writes its
answer and spawns nothing). Otherwise the thread spawns over the successors
the probe left: the ones after the probed one, plus the probed one first when
the probe stopped at its budget with nodes of the branch still unvisited (its
child searches the whole branch again). Every branch is thus searched with the
sequential search's budget, by the probe or by a child, so the search solves
the same problems with the same path as ``probe_nodes`` = 0; it costs the
probe's lines in the spawning thread, and the probe's nodes again in a child
when the probe was cut.

With ``sequential_share`` > 0 (unconditioned APR only) the root's width
follows the problem's oracle difficulty, its reachable share (the share of
distinct first moves after which the target can still be reached,
``apr_jax.tasks.countdown.solver.reachable_share``). A problem whose share is at
least ``sequential_share`` is one a short sequential search settles: the root
searches it alone, and its trace is the SoS+ trace. Below it the root spawns
``ceil(viable_children / share)`` children per round (at most
``max_children``): enough that ``viable_children`` of them are expected to
start on a first move that can still reach the target, so harder problems
fork wider. The share is a function of the prompt, so the choice is the
model's to learn from what it reads.
"""

from __future__ import annotations

import math
import random

from apr_jax import protocol
from apr_jax.config.trace import TraceConfig
from apr_jax.tasks.countdown import render, search
from apr_jax.tasks.countdown.problems import Problem, as_problem
from apr_jax.tasks.countdown.solver import reachable_share
from apr_jax.tasks.countdown.verifier import extract_answer
from apr_jax.threads import Segment, Thread, ThreadTree


def trace_rng(problem: Problem, seed: int) -> random.Random:
    """A generator seeded by (seed, problem) so each trace is deterministic."""
    h = seed * 1_000_003 + problem.target
    for n in problem.numbers:
        h = (h * 1_000_033 + n) % (1 << 61)
    return random.Random(h)


def _budget_prefix(cfg: TraceConfig, kind: str, value: int) -> str:
    return protocol.conditioning_prefix(kind, value) if cfg.condition else ""


def _sequential(problem: Problem, cfg: TraceConfig) -> tuple[str, tuple[str, ...] | None, int]:
    """The whole search as one thread's text, its solution and visit count."""
    root = search.root_node(problem.numbers)
    visits: list[search.Visit] = []
    solution = None
    for node in search.expand(root, problem.target, cfg.beam_size):
        solution = search.explore(node, problem.target, cfg.beam_size, cfg.max_nodes, visits)
        if solution is not None:
            break
    text = render.render_visits(visits, root, problem.target, cfg.style)
    return text + render.answer_line(solution, cfg.style), solution, len(visits)


def _tree(
    problem: Problem, cfg: TraceConfig, threads: list[Thread], solution: tuple[str, ...] | None, visits: int
) -> ThreadTree:
    meta = {"kind": cfg.kind, "style": cfg.style, "solved": solution is not None, "visits": visits}
    return ThreadTree(problem=problem.to_dict(), threads=threads, solution=list(solution or ()), meta=meta)


def sosp_trace(problem: Problem, cfg: TraceConfig, rng: random.Random | None = None) -> ThreadTree:
    """One thread: the whole best-first search with dead ends, then the answer."""
    problem = as_problem(problem)
    text, solution, visits = _sequential(problem, cfg)
    prefix = ""
    if cfg.condition:
        prefix = _budget_prefix(cfg, "sosp", protocol.budget_bucket(protocol.approx_tokens(text)))
    root = Thread(
        parent=-1,
        segments=[Segment("prompt", render.problem_prompt(problem, cfg.style, prefix)), Segment("model", text)],
        stop="eos",
    )
    return _tree(problem, cfg, [root], solution, visits)


class _AprBuilder:
    """Builds the threads of one APR trace."""

    def __init__(self, problem: Problem, cfg: TraceConfig, rng: random.Random, children: int | None = None):
        self.problem, self.cfg, self.rng = problem, cfg, rng
        self.target = problem.target
        self.threads: list[Thread] = []
        self.visits = 0
        # A conditioned trace draws its children per spawn and spawns once, so
        # its c<n> prefix is a request a model can follow, not the search's outcome.
        # A requested count replaces the draw, which still happens so that the
        # rest of the trace takes the same random numbers as the drawn one.
        drawn = rng.randint(1, cfg.max_children) if cfg.condition else cfg.max_children
        self.per_spawn = drawn if children is None else children
        self.rounds = 1 if cfg.condition else None
        self.root_spawns = True
        if cfg.sequential_share:
            share = problem.reachable_share
            if share is None:
                share = reachable_share(problem.numbers, problem.target)
            self.root_spawns = share < cfg.sequential_share
            if self.root_spawns:
                self.per_spawn = min(cfg.max_children, math.ceil(cfg.viable_children / max(share, 1e-9)))

    def may_spawn(self, node: search.Node, depth: int) -> bool:
        """Spawning needs depth left and successors that are not leaves."""
        return depth < self.cfg.max_depth and len(node.numbers) >= 3 and self.rng.random() < self.cfg.spawn_prob

    def write(self, index: int, text: str) -> None:
        """Thread ``index`` writes ``text`` (one model segment with what it just wrote)."""
        segments = self.threads[index].segments
        if text and segments[-1].role == "model":
            segments[-1] = Segment("model", segments[-1].text + text)
        elif text:
            segments.append(Segment("model", text))

    def fork(
        self, index: int, node: search.Node, shared_budget: int | None, depth: int, lead: str
    ) -> tuple[tuple[str, ...] | None, int]:
        """Thread ``index``'s spawn point at ``node``: probe the best successor
        (``probe_nodes`` > 0), then spawn over the successors left (``delegate``).
        Returns (first solution, nodes used as the sequential search counts them)."""
        kids = search.expand(node, self.target, self.cfg.beam_size)
        share = self.cfg.max_nodes if shared_budget is None else shared_budget
        if not self.cfg.probe_nodes or not kids or share <= 0:
            return self.delegate(index, kids, shared_budget, depth, lead)
        solution, visits, whole = self.probe(kids[0], share)
        lead += render.render_visits(visits, node, self.target, self.cfg.style)
        if solution is not None:
            self.write(index, lead)
            return solution, len(visits)
        used = len(visits) if whole else 0  # a cut probe's branch goes to a child in full
        remaining = None if shared_budget is None else shared_budget - used
        before = len(self.threads[index].segments)
        solution, spawned = self.delegate(index, kids[1:] if whole else kids, remaining, depth, lead)
        if len(self.threads[index].segments) == before:  # nothing spawned: the probe is all
            self.write(index, lead)
        return solution, used + spawned

    def probe(self, kid: search.Node, share: int) -> tuple[tuple[str, ...] | None, list[search.Visit], bool]:
        """The spawning thread's own search of ``kid``'s branch, to which the
        sequential search gives ``share`` nodes: at most ``probe_nodes`` of them.
        Returns (solution, visits, whole), ``whole`` when the probe did the
        branch's whole sequential search (found the goal, visited every node
        of the branch, or spent all of ``share``)."""
        budget = min(self.cfg.probe_nodes, share)
        visits: list[search.Visit] = []
        solution = search.explore(kid, self.target, self.cfg.beam_size, budget, visits)
        self.visits += len(visits)
        whole = solution is not None or budget == share or len(visits) < budget
        if not whole:  # the budget is spent: was a node of the branch left?
            ahead: list[search.Visit] = []
            search.explore(kid, self.target, self.cfg.beam_size, budget + 1, ahead)
            whole = len(ahead) == budget
        return solution, visits, whole

    def delegate(
        self, index: int, kids: list[search.Node], shared_budget: int | None, depth: int, lead: str
    ) -> tuple[tuple[str, ...] | None, int]:
        """Spawn rounds from thread ``index`` over ``kids``. With ``shared_budget``
        None every kid gets ``max_nodes``; otherwise kids share it in order, as
        the sequential search would. Returns (first solution, nodes used)."""
        cfg, segments = self.cfg, self.threads[index].segments
        used = 0
        for start in range(0, len(kids), self.per_spawn)[: self.rounds]:
            batch = kids[start : start + self.per_spawn]
            if shared_budget is not None:
                batch = batch if shared_budget - used > 0 else []
            if not batch:
                break
            messages = [render.child_message(k, self.target, cfg.style) for k in batch]
            text = lead + render.render_generated(batch, self.target, cfg.style)
            segments.append(Segment("model", text + protocol.spawn_block(messages)))
            lead = ""
            returns, found = [], None
            for kid, message in zip(batch, messages):
                budget = cfg.max_nodes if shared_budget is None else shared_budget - used
                if budget <= 0:
                    break
                solution, kid_used = self.child(index, kid, message, budget, depth + 1)
                used += kid_used
                returns.append(render.return_message(solution, cfg.style))
                found = found or solution
            if len(returns) < len(messages):  # budget ran out mid-round: spawn fewer
                segments[-1] = Segment("model", text + protocol.spawn_block(messages[: len(returns)]))
            segments.append(Segment("join", protocol.join_block(returns)))
            if found:
                return found, used
        return None, used

    def child(
        self, parent: int, node: search.Node, message: str, budget: int, depth: int
    ) -> tuple[tuple[str, ...] | None, int]:
        """Add one child thread searching ``node``'s branch; (solution, nodes used)."""
        index = len(self.threads)
        thread = Thread(parent=parent, segments=[Segment("prompt", protocol.child_prompt(message))], stop="return")
        self.threads.append(thread)
        self.threads[parent].children.append(index)
        cfg = self.cfg
        if self.may_spawn(node, depth):
            self.visits += 1
            solution, used = self.fork(index, node, budget - 1, depth, "\n")
            self.write(index, protocol.return_block(render.return_message(solution, cfg.style)))
            return solution, used + 1
        visits: list[search.Visit] = []
        solution = search.explore(node, self.target, cfg.beam_size, budget, visits)
        self.visits += len(visits)
        body = render.render_visits(visits[1:], node, self.target, cfg.style)
        thread.segments.append(
            Segment("model", "\n" + body + protocol.return_block(render.return_message(solution, cfg.style)))
        )
        return solution, len(visits)

    def build(self) -> ThreadTree:
        problem, cfg = self.problem, self.cfg
        root = Thread(parent=-1, segments=[Segment("prompt", "")], stop="eos")
        self.threads.append(root)
        root_node = search.root_node(problem.numbers)
        if self.may_spawn(root_node, 0) and self.root_spawns:
            solution, _ = self.fork(0, root_node, None, 0, "")
            self.write(0, render.answer_line(solution, cfg.style))
        else:
            text, solution, visits = _sequential(problem, cfg)
            self.visits += visits
            root.segments.append(Segment("model", text))
        prefix = _budget_prefix(cfg, "apr", len(self.threads) - 1)
        root.segments[0] = Segment("prompt", render.problem_prompt(problem, cfg.style, prefix))
        return _tree(problem, cfg, self.threads, solution, self.visits)


def apr_trace(
    problem: Problem, cfg: TraceConfig, rng: random.Random | None = None, children: int | None = None
) -> ThreadTree:
    """A thread tree: the root spawns children over the search's branches.
    ``children`` sets a conditioned trace's child count (drawn when None)."""
    problem = as_problem(problem)
    if children is not None and not (cfg.condition and 1 <= children <= cfg.max_children):
        raise ValueError(f"children={children} needs trace.condition and 1..{cfg.max_children}")
    return _AprBuilder(problem, cfg, rng or trace_rng(problem, cfg.seed), children).build()


def make_trace(problem: Problem, cfg: TraceConfig, rng: random.Random | None = None) -> ThreadTree:
    """Dispatch on ``cfg.kind``; ``rng`` defaults to ``trace_rng(problem, cfg.seed)``."""
    if cfg.kind == "sosp":
        return sosp_trace(problem, cfg, rng)
    return apr_trace(problem, cfg, rng)


def final_operations(tree: ThreadTree) -> list[str]:
    """The final path the root wrote ([] when it wrote none or 'no solution')."""
    return extract_answer(tree.threads[0].written_text) or []
