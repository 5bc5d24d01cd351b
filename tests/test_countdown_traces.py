"""Tests for apr_jax.countdown.traces (with search.py and render.py)."""

import dataclasses
import functools
import hashlib
import re
import string

import pytest

from apr_jax import protocol
from apr_jax.countdown.problems import Problem, generate_problems
from apr_jax.countdown.render import (MIN_BUDGET_BUCKET, approx_tokens, budget_bucket,
                                     budget_within, conditioning_prefix, parse_prompt,
                                     problem_prompt)
from apr_jax.countdown.traces import TraceConfig, apr_trace, final_operations, make_trace
from apr_jax.countdown.verifier import verify
from apr_jax.threads import ThreadTree
from configs.default import get_config

ALLOWED = set(string.printable) - set("\t\r\x0b\x0c")
_SPAWN_RE = re.compile(re.escape(protocol.SPAWN_OPEN) + "(.*?)" + re.escape(protocol.SPAWN_CLOSE), re.S)


@functools.lru_cache(maxsize=None)
def _problems(num_inputs: int) -> tuple[Problem, ...]:
    return tuple(generate_problems(40, num_inputs=num_inputs, seed=11))


def _check_tree(tree: ThreadTree, problem: Problem, cfg: TraceConfig) -> None:
    tree.validate()
    assert ThreadTree.from_json(tree.to_json()) == tree
    root = tree.threads[0]
    assert root.stop == "eos" and root.segments[0].role == "prompt"
    for thread in tree.threads:
        assert set(thread.text) <= ALLOWED, "only printable ASCII and newlines"
    for i, thread in enumerate(tree.threads[1:], start=1):
        assert thread.stop == "return"
        assert thread.written_text.endswith(protocol.RETURN_CLOSE)
        assert tree.depth(i) <= cfg.max_depth
    for i, thread in enumerate(tree.threads):
        messages = [m.split(protocol.SEP) for m in _SPAWN_RE.findall(thread.written_text)]
        flat = [m for block in messages for m in block]
        assert all(len(block) <= cfg.max_children for block in messages)
        assert [tree.threads[c].segments[0].text for c in thread.children] == [
            protocol.child_prompt(m) for m in flat]
        assert thread.text.count(protocol.JOIN_OPEN) == len(messages)
    if tree.solution:
        verdict = verify(root.written_text, problem)
        assert verdict.ok, verdict.reason
        assert verdict.operations == tree.solution == final_operations(tree)
    else:
        assert final_operations(tree) == []
        assert not verify(root.written_text, problem).ok


CASES = [(kind, style, n, depth) for kind in ("sosp", "apr") for style in ("terse", "reference")
         for n in (3, 4) for depth in (1, 2)]


@pytest.mark.parametrize("kind, style, num_inputs, max_depth", CASES)
def test_every_trace_is_well_formed_and_successes_verify(kind, style, num_inputs, max_depth):
    cfg = TraceConfig(kind=kind, style=style, max_depth=max_depth, max_children=3,
                      spawn_prob=0.7, condition=True)
    for p in _problems(num_inputs):
        _check_tree(make_trace(p, cfg), p, cfg)


@pytest.mark.parametrize("overrides", [
    {}, {"max_children": 2}, {"spawn_prob": 0.5}, {"max_depth": 2}, {"max_depth": 3, "max_nodes": 9},
    {"beam_size": 2, "max_nodes": 5},
])
def test_sosp_and_apr_solve_the_same_problems_with_the_same_path(overrides):
    sosp = TraceConfig(kind="sosp", **overrides)
    apr = dataclasses.replace(sosp, kind="apr")
    for p in _problems(4) + _problems(3):
        assert make_trace(p, sosp).solution == make_trace(p, apr).solution


def test_search_has_dead_ends_failures_and_budget_cuts():
    trees = [make_trace(p, TraceConfig(kind="sosp")) for p in _problems(4)]
    solved = [t for t in trees if t.solution]
    assert any(" x\n" in t.threads[0].written_text for t in solved)
    assert any(not t.solution for t in trees)
    assert all(t.threads[0].written_text.endswith("ans none\n") for t in trees if not t.solution)
    small = [make_trace(p, TraceConfig(kind="sosp", max_nodes=3)) for p in _problems(4)]
    assert sum(bool(t.solution) for t in small) < len(solved)


def test_apr_root_spawns_and_children_return():
    p = Problem((53, 22, 26, 31), 27)
    tree = make_trace(p, TraceConfig(kind="apr"))
    root = tree.threads[0]
    assert [s.role for s in root.segments] == ["prompt", "model", "join", "model"]
    assert root.segments[1].text.startswith(protocol.SPAWN_OPEN)
    returns = root.segments[2].text[len(protocol.JOIN_OPEN):-len(protocol.JOIN_CLOSE)].split(protocol.SEP)
    assert returns[0] == "53-22=31 31/31=1 26+1=27" and "none" in returns
    child = tree.threads[1]
    assert child.segments[0].text == protocol.child_prompt("53-22=31 | 26 31 31 -> 27")
    assert child.segments[1].text.endswith(protocol.return_block("53-22=31 31/31=1 26+1=27"))


def test_max_depth_two_makes_grandchildren():
    trees = [make_trace(p, TraceConfig(kind="apr", max_depth=2)) for p in _problems(4)]
    assert all(max(t.depth(i) for i in range(len(t.threads))) == 2 for t in trees)


def test_spawn_prob_mixes_sequential_and_parallel_roots():
    cfg = TraceConfig(kind="apr", spawn_prob=0.5)
    spawned = [make_trace(p, cfg).num_spawned > 0 for p in _problems(4)]
    assert any(spawned) and not all(spawned)


def test_deterministic_by_seed():
    cfg = TraceConfig(kind="apr", spawn_prob=0.5, max_depth=2)
    a = [make_trace(p, cfg).to_json() for p in _problems(4)]
    assert a == [make_trace(p, cfg).to_json() for p in _problems(4)]
    other = dataclasses.replace(cfg, seed=1)
    assert a != [make_trace(p, other).to_json() for p in _problems(4)]


def test_conditioning_prefixes():
    p = _problems(4)[0]
    apr = make_trace(p, TraceConfig(kind="apr", condition=True))
    assert apr.threads[0].segments[0].text.startswith(f"c{apr.num_spawned} ")
    sosp = make_trace(p, TraceConfig(kind="sosp", condition=True))
    assert re.match(r"b[0-9]+ ", sosp.threads[0].segments[0].text)
    assert conditioning_prefix("apr", 4) == "c4 "
    for q in _problems(4)[:12]:  # the prefix states what the trace does
        sosp = make_trace(q, TraceConfig(kind="sosp", condition=True))
        budget = int(re.match(r"b([0-9]+) ", sosp.threads[0].segments[0].text).group(1))
        written = approx_tokens(sosp.threads[0].written_text)
        assert written <= budget and (budget == MIN_BUDGET_BUCKET or budget < 2 * written)
    with pytest.raises(ValueError, match="conditioning kind"):
        conditioning_prefix("beam", 4)


@pytest.mark.parametrize("tokens", [1, 63, 64, 96, 127, 128, 160, 255, 256, 1000])
def test_budget_within_is_the_largest_trained_bucket_that_fits(tokens):
    budget = budget_within(tokens)
    assert budget_bucket(budget) == budget  # a budget the generators write
    assert budget <= max(tokens, MIN_BUDGET_BUCKET) and 2 * budget > tokens


def test_conditioned_apr_traces_spawn_the_drawn_child_count_once():
    """c<n> is a request: each conditioned trace draws n in 1..max_children and
    its root spawns exactly n children in one round, whatever the search finds."""
    cfg = TraceConfig(kind="apr", condition=True, max_children=3)
    counts = []
    for q in _problems(3) + _problems(4):
        tree = make_trace(q, cfg)
        root = tree.threads[0]
        children = sum(t.parent == 0 for t in tree.threads)
        assert root.segments[0].text.startswith(f"c{children} ")
        assert sum(s.role == "join" for s in root.segments) == 1
        counts.append(children)
    assert set(counts) == {1, 2, 3}
    solved = [make_trace(q, cfg).meta["solved"] for q in _problems(3)]
    unconditioned = [make_trace(q, dataclasses.replace(cfg, condition=False)).meta["solved"]
                     for q in _problems(3)]
    assert sum(solved) < sum(unconditioned)  # fewer children search fewer branches


def test_a_requested_child_count_is_the_trace_of_that_draw():
    """apr_trace(children=n) is the conditioned trace that drew n (the rest of
    the trace unchanged), and only conditioned traces take a request."""
    cfg = TraceConfig(kind="apr", condition=True, max_children=3)
    for q in _problems(4)[:8]:
        drawn = make_trace(q, cfg)
        assert apr_trace(q, cfg, children=drawn.num_spawned).to_json() == drawn.to_json()
        for n in (1, 3):
            assert apr_trace(q, cfg, children=n).threads[0].segments[0].text.startswith(f"c{n} ")
    with pytest.raises(ValueError, match="children=2 needs trace.condition"):
        apr_trace(_problems(4)[0], dataclasses.replace(cfg, condition=False), children=2)
    with pytest.raises(ValueError, match="children=4 needs"):
        apr_trace(_problems(4)[0], cfg, children=4)


@pytest.mark.parametrize("style", ["terse", "reference"])
def test_prompt_round_trip(style):
    for p in _problems(4)[:5]:
        assert parse_prompt(problem_prompt(p, style)) == p
        assert parse_prompt(problem_prompt(p, style, "c4 ")) == p
    assert problem_prompt(Problem((12, 7, 3), 33)) == "12 7 3 -> 33\n"
    with pytest.raises(ValueError, match="not a Countdown prompt"):
        parse_prompt("hello")


def test_reference_style_wording():
    tree = make_trace(Problem((53, 22, 26, 31), 27), TraceConfig(kind="sosp", style="reference"))
    text = tree.threads[0].text
    for phrase in ("Current State: 27:[53, 22, 26, 31], Operations: []", "Exploring Operation: ",
                   "Generated Node #0,0: ", "Moving to Node #0,0", "27,27 equal: Goal Reached",
                   "unequal: No Solution"):
        assert phrase in text


def test_config_reading_and_errors():
    cfg = TraceConfig.from_config(get_config().trace)
    assert (cfg.kind, cfg.style, cfg.max_children) == ("apr", "terse", 4)
    with pytest.raises(ValueError, match="trace kind"):
        TraceConfig(kind="bfs")
    with pytest.raises(ValueError, match="trace style"):
        TraceConfig(style="verbose")
    with pytest.raises(ValueError, match="unknown trace config"):
        TraceConfig.from_config({"kind": "apr", "widht": 3})
    with pytest.raises(ValueError, match="spawn_prob"):
        TraceConfig(spawn_prob=1.5)


def test_traces_are_byte_for_byte_those_the_cache_format_pins():
    """Every cached dataset holds these bytes: a change to the search's order,
    the heuristic, the rendering or the tree's JSON shows here. When such a
    change is meant, bump ``FORMAT_VERSION`` in ``apr_jax/data/build.py`` (so
    old caches are rebuilt) and update the digest."""
    digest = hashlib.sha256()
    for kind, style, depth in (("apr", "terse", 1), ("apr", "reference", 2), ("sosp", "terse", 1)):
        cfg = TraceConfig.from_config({"kind": kind, "style": style, "max_depth": depth,
                                       "max_children": 8, "beam_size": 8})
        for p in generate_problems(30, num_inputs=4, seed=5):
            digest.update(make_trace(p, cfg).to_json().encode())
    assert digest.hexdigest() == "39808b905646b368b71f3cb9922918e8193b88352346226a888c25781929d481"


def test_tree_dict_is_the_dataclass_fields_and_shares_nothing():
    tree = make_trace(_problems(4)[0], TraceConfig.from_config({"kind": "apr"}))
    d = tree.to_dict()
    assert d == dataclasses.asdict(tree)
    d["problem"]["numbers"].append(7)
    d["threads"][0]["segments"][0]["text"] = "changed"
    d["meta"]["extra"] = 1
    assert tree == ThreadTree.from_json(tree.to_json())
    assert "extra" not in tree.meta and 7 not in tree.problem["numbers"]
