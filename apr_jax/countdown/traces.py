"""SoS+ and APR trace generators producing ``ThreadTree``s.

Both run the search of ``search.py`` (same branches, same budgets), so for one
unconditioned config they solve the same problems with the same final path; they differ
only in who writes which part of the search:

- ``sosp_trace``: one thread writes every branch, then the answer line.
- ``apr_trace``: the root expands the problem and spawns one child per kept
  branch (``max_children`` per spawn round; further rounds only if a round
  found nothing). A conditioned trace (``c<n>`` prefix) instead draws n in
  1..``max_children`` and spawns one round of n children per spawn point, so
  it may leave branches unsearched that the sequential search would visit. A child at thread depth < ``max_depth`` whose node has
  three or more numbers may itself spawn (grandchildren get the budget the
  sequential search would have left them); otherwise it searches its branch
  and returns the path or a failure message. Each spawn point spawns with
  probability ``spawn_prob`` and otherwise searches sequentially.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from apr_jax import protocol
from apr_jax.countdown import render, search
from apr_jax.countdown.problems import Problem, as_problem
from apr_jax.countdown.verifier import extract_answer
from apr_jax.threads import Segment, Thread, ThreadTree

KINDS = ("apr", "sosp")


@dataclasses.dataclass(frozen=True)
class TraceConfig:
    kind: str = "apr"  # apr | sosp
    style: str = "terse"  # terse | reference
    max_children: int = 4  # children per spawn round
    spawn_prob: float = 1.0  # probability that a spawn point spawns
    max_depth: int = 1  # thread nesting depth (1 = children do not spawn)
    beam_size: int = 4  # successors kept per expanded node
    condition: bool = False  # prefix the prompt with c<children> (drawn per trace) / b<token budget>
    seed: int = 0
    max_nodes: int = 16  # nodes one root branch may visit (leaves included)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"trace kind {self.kind!r} is not one of {KINDS}")
        render.check_style(self.style)
        for name in ("max_children", "max_depth", "beam_size", "max_nodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"trace {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.spawn_prob <= 1.0:
            raise ValueError(f"trace spawn_prob must be in [0, 1], got {self.spawn_prob}")

    @classmethod
    def from_config(cls, trace: Any) -> "TraceConfig":
        """From the ``trace`` section of a config (ConfigDict or mapping)."""
        values = dict(trace.to_dict() if hasattr(trace, "to_dict") else trace)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown trace config field(s) {unknown}; known: {sorted(fields)}")
        return cls(**values)


def trace_rng(problem: Problem, seed: int) -> random.Random:
    """A generator seeded by (seed, problem) so each trace is deterministic."""
    h = seed * 1_000_003 + problem.target
    for n in problem.numbers:
        h = (h * 1_000_033 + n) % (1 << 61)
    return random.Random(h)


def _budget_prefix(cfg: TraceConfig, kind: str, value: int) -> str:
    return render.conditioning_prefix(kind, value) if cfg.condition else ""


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


def _tree(problem: Problem, cfg: TraceConfig, threads: list[Thread],
          solution: tuple[str, ...] | None, visits: int) -> ThreadTree:
    meta = {"kind": cfg.kind, "style": cfg.style, "solved": solution is not None,
            "visits": visits}
    return ThreadTree(problem=problem.to_dict(), threads=threads,
                      solution=list(solution or ()), meta=meta)


def sosp_trace(problem: Problem, cfg: TraceConfig, rng: random.Random | None = None) -> ThreadTree:
    """One thread: the whole best-first search with dead ends, then the answer."""
    problem = as_problem(problem)
    text, solution, visits = _sequential(problem, cfg)
    prefix = ""
    if cfg.condition:
        prefix = _budget_prefix(cfg, "sosp", render.budget_bucket(render.approx_tokens(text)))
    root = Thread(parent=-1, segments=[
        Segment("prompt", render.problem_prompt(problem, cfg.style, prefix)),
        Segment("model", text)], stop="eos")
    return _tree(problem, cfg, [root], solution, visits)


class _AprBuilder:
    """Builds the threads of one APR trace."""

    def __init__(self, problem: Problem, cfg: TraceConfig, rng: random.Random,
                 children: int | None = None):
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

    def may_spawn(self, node: search.Node, depth: int) -> bool:
        """Spawning needs depth left and successors that are not leaves."""
        return (depth < self.cfg.max_depth and len(node.numbers) >= 3
                and self.rng.random() < self.cfg.spawn_prob)

    def delegate(self, index: int, kids: list[search.Node], shared_budget: int | None,
                 depth: int, lead: str) -> tuple[tuple[str, ...] | None, int]:
        """Spawn rounds from thread ``index`` over ``kids``. With ``shared_budget``
        None every kid gets ``max_nodes``; otherwise kids share it in order, as
        the sequential search would. Returns (first solution, nodes used)."""
        cfg, segments = self.cfg, self.threads[index].segments
        used = 0
        for start in range(0, len(kids), self.per_spawn)[:self.rounds]:
            batch = kids[start:start + self.per_spawn]
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
                segments[-1] = Segment("model", text + protocol.spawn_block(messages[:len(returns)]))
            segments.append(Segment("join", protocol.join_block(returns)))
            if found:
                return found, used
        return None, used

    def child(self, parent: int, node: search.Node, message: str, budget: int,
              depth: int) -> tuple[tuple[str, ...] | None, int]:
        """Add one child thread searching ``node``'s branch; (solution, nodes used)."""
        index = len(self.threads)
        thread = Thread(parent=parent, segments=[Segment("prompt", protocol.child_prompt(message))],
                        stop="return")
        self.threads.append(thread)
        self.threads[parent].children.append(index)
        cfg = self.cfg
        if self.may_spawn(node, depth):
            self.visits += 1
            kids = search.expand(node, self.target, cfg.beam_size)
            solution, used = self.delegate(index, kids, budget - 1, depth, "\n")
            used += 1
            thread.segments.append(Segment("model", protocol.return_block(
                render.return_message(solution, cfg.style))))
            return solution, used
        visits: list[search.Visit] = []
        solution = search.explore(node, self.target, cfg.beam_size, budget, visits)
        self.visits += len(visits)
        body = render.render_visits(visits[1:], node, self.target, cfg.style)
        thread.segments.append(Segment("model", "\n" + body + protocol.return_block(
            render.return_message(solution, cfg.style))))
        return solution, len(visits)

    def build(self) -> ThreadTree:
        problem, cfg = self.problem, self.cfg
        root = Thread(parent=-1, segments=[Segment("prompt", "")], stop="eos")
        self.threads.append(root)
        root_node = search.root_node(problem.numbers)
        if self.may_spawn(root_node, 0):
            kids = search.expand(root_node, self.target, cfg.beam_size)
            solution, _ = self.delegate(0, kids, None, 0, "")
            root.segments.append(Segment("model", render.answer_line(solution, cfg.style)))
        else:
            text, solution, visits = _sequential(problem, cfg)
            self.visits += visits
            root.segments.append(Segment("model", text))
        prefix = _budget_prefix(cfg, "apr", len(self.threads) - 1)
        root.segments[0] = Segment("prompt", render.problem_prompt(problem, cfg.style, prefix))
        return _tree(problem, cfg, self.threads, solution, self.visits)


def apr_trace(problem: Problem, cfg: TraceConfig, rng: random.Random | None = None,
              children: int | None = None) -> ThreadTree:
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
