"""Tests for apr_jax.tasks.countdown.traces (with search.py and render.py)."""

import dataclasses
import functools
import hashlib
import re
import string

import numpy as np
import pytest

from apr_jax import protocol
from apr_jax.config.loading import load_config
from apr_jax.config.trace import TraceConfig
from apr_jax.protocol import MIN_BUDGET_BUCKET, approx_tokens, budget_bucket, budget_within, conditioning_prefix
from apr_jax.tasks.countdown.problems import Problem, generate_problems, make_splits, with_difficulty
from apr_jax.tasks.countdown.render import parse_prompt, problem_prompt
from apr_jax.tasks.countdown.traces import apr_trace, final_operations, make_trace
from apr_jax.tasks.countdown.verifier import verify
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
    for thread in tree.threads:
        messages = [m.split(protocol.SEP) for m in _SPAWN_RE.findall(thread.written_text)]
        flat = [m for block in messages for m in block]
        assert all(len(block) <= cfg.max_children for block in messages)
        assert [tree.threads[c].segments[0].text for c in thread.children] == [protocol.child_prompt(m) for m in flat]
        assert thread.text.count(protocol.JOIN_OPEN) == len(messages)
    if tree.solution:
        verdict = verify(root.written_text, problem)
        assert verdict.ok, verdict.reason
        assert verdict.operations == tree.solution == final_operations(tree)
    else:
        assert final_operations(tree) == []
        assert not verify(root.written_text, problem).ok


CASES = [
    (kind, style, n, depth)
    for kind in ("sosp", "apr")
    for style in ("terse", "reference")
    for n in (3, 4)
    for depth in (1, 2)
]


@pytest.mark.parametrize("kind, style, num_inputs, max_depth", CASES)
def test_every_trace_is_well_formed_and_successes_verify(kind, style, num_inputs, max_depth):
    cfg = TraceConfig(kind=kind, style=style, max_depth=max_depth, max_children=3, spawn_prob=0.7, condition=True)
    for p in _problems(num_inputs):
        _check_tree(make_trace(p, cfg), p, cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"max_children": 2},
        {"spawn_prob": 0.5},
        {"max_depth": 2},
        {"max_depth": 3, "max_nodes": 9},
        {"beam_size": 2, "max_nodes": 5},
    ],
)
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
    returns = root.segments[2].text[len(protocol.JOIN_OPEN) : -len(protocol.JOIN_CLOSE)].split(protocol.SEP)
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
    unconditioned = [make_trace(q, dataclasses.replace(cfg, condition=False)).meta["solved"] for q in _problems(3)]
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
    for phrase in (
        "Current State: 27:[53, 22, 26, 31], Operations: []",
        "Exploring Operation: ",
        "Generated Node #0,0: ",
        "Moving to Node #0,0",
        "27,27 equal: Goal Reached",
        "unequal: No Solution",
    ):
        assert phrase in text


def test_config_reading_and_errors():
    cfg = TraceConfig.from_config(get_config().trace)
    assert (cfg.kind, cfg.style, cfg.max_children) == ("apr", "terse", 4)
    with pytest.raises(ValueError, match="config.trace.kind=.bfs. is not one of apr, sosp"):
        TraceConfig(kind="bfs")
    with pytest.raises(ValueError, match="config.trace.style=.verbose. is not one of terse, reference"):
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
        cfg = TraceConfig.from_config(
            {"kind": kind, "style": style, "max_depth": depth, "max_children": 8, "beam_size": 8}
        )
        for p in generate_problems(30, num_inputs=4, seed=5):
            digest.update(make_trace(p, cfg).to_json().encode())
    assert digest.hexdigest() == "39808b905646b368b71f3cb9922918e8193b88352346226a888c25781929d481"


PROBE = TraceConfig(kind="apr", probe_nodes=16)  # the whole best branch (max_nodes)


def _spawn_messages(tree: ThreadTree) -> list[str]:
    return [m for block in _SPAWN_RE.findall(tree.threads[0].written_text) for m in block.split(protocol.SEP)]


def _search_lines(tree: ThreadTree) -> int:
    return sum(line.startswith(">") for line in tree.threads[0].written_text.splitlines())


def _first_branch(sosp_text: str) -> str:
    """The lines of a SoS+ root's first branch (up to its second depth-1 line or answer)."""
    lines = sosp_text.splitlines(keepends=True)
    end = next(i for i, line in enumerate(lines[1:], 1) if line.startswith(("> ", "ans ")))
    return "".join(lines[:end])


@pytest.mark.parametrize(
    "problem, children",
    [
        (Problem((8, 11, 3), 22), 0),
        (Problem((4, 20, 9), 44), 0),
        (Problem((53, 22, 26, 31), 27), 0),
        (Problem((16, 12, 19), 23), 3),
        (Problem((16, 15, 17, 9), 13), 3),
        (Problem((4, 9, 17), 35), 3),
    ],
)
def test_probe_width_follows_the_problem(problem, children):
    """With a probe the root searches its best branch itself, as SoS+ writes
    it: when that reaches the target it answers without spawning (the SoS+
    trace, exactly); otherwise it spawns for the other kept branches. Fixed
    width spawns 4 on every problem; the answer is the same either way."""
    tree, fixed = make_trace(problem, PROBE), make_trace(problem, TraceConfig(kind="apr"))
    sosp = make_trace(problem, TraceConfig(kind="sosp"))
    _check_tree(tree, problem, PROBE)
    assert fixed.num_spawned == 4 and tree.num_spawned == children
    assert tree.solution == fixed.solution == sosp.solution
    root = tree.threads[0].written_text
    if children == 0:
        assert root == sosp.threads[0].written_text and " goal\n" in root
    else:
        probe = root[: root.index(protocol.SPAWN_OPEN)]
        assert probe == _first_branch(sosp.threads[0].written_text) and " goal\n" not in probe
        assert _spawn_messages(tree) == _spawn_messages(fixed)[1:]


def test_a_cut_probe_hands_its_branch_to_a_child_and_a_finished_one_does_not():
    """The probe visits at most probe_nodes nodes. When it stopped with nodes
    of its branch left, the branch goes to the first child whole (so the
    search still solves what the sequential one solves); a probe that visited
    its whole branch, even in exactly probe_nodes nodes, hands it to no one."""
    p = Problem((3, 7, 11), 40)  # best branch: 11-7=4 [3 4] and its 3 leaves
    fixed = _spawn_messages(make_trace(p, TraceConfig(kind="apr")))
    exact = make_trace(p, TraceConfig(kind="apr", probe_nodes=4))
    assert _search_lines(exact) == 4 and _spawn_messages(exact) == fixed[1:]
    cut = make_trace(p, TraceConfig(kind="apr", probe_nodes=3))
    assert _search_lines(cut) == 3 and _spawn_messages(cut) == fixed
    q = Problem((53, 22, 26, 31), 27)  # the probe's 6 nodes stop one short of the goal
    cut = make_trace(q, TraceConfig(kind="apr", probe_nodes=6))
    assert cut.num_spawned == 4 and " goal\n" not in cut.threads[0].written_text
    assert cut.solution == make_trace(q, PROBE).solution == ["53-22=31", "31/31=1", "26+1=27"]
    assert cut.threads[1].written_text.endswith(protocol.return_block("53-22=31 31/31=1 26+1=27"))


def test_a_probe_that_leaves_no_branch_is_the_sosp_trace():
    """With one kept successor the probe (the whole branch) is the whole search."""
    probe, sosp = TraceConfig(kind="apr", beam_size=1, probe_nodes=16), TraceConfig(kind="sosp", beam_size=1)
    for p in _problems(3) + _problems(4):
        tree = make_trace(p, probe)
        assert tree.num_spawned == 0
        assert tree.threads[0].text == make_trace(p, sosp).threads[0].text


def test_probe_gives_a_mix_of_widths_on_random_countdown3():
    """Probe traces on the demo's task: some spawn nothing, some several."""
    config = load_config(None)
    cfg, task = TraceConfig(kind="apr", probe_nodes=5), config.task
    problems = make_splits(
        300,
        0,
        0,
        num_inputs=task.num_inputs,
        max_number=task.max_number,
        min_target=task.min_target,
        max_target=task.max_target,
        seed=3,
    )["train"]
    counts = []
    for p in problems:
        tree = make_trace(p, cfg)
        _check_tree(tree, p, cfg)
        assert tree.solution == make_trace(p, TraceConfig(kind="sosp")).solution
        counts.append(tree.num_spawned)
    assert sum(c == 0 for c in counts) >= 0.2 * len(counts)
    assert sum(c >= 2 for c in counts) >= 0.2 * len(counts)


PROBE_CASES = [
    (style, n, depth, probe)
    for style in ("terse", "reference")
    for n in (3, 4)
    for depth in (1, 2)
    for probe in (3, 16)
]


@pytest.mark.parametrize("style, num_inputs, max_depth, probe_nodes", PROBE_CASES)
def test_probe_traces_are_well_formed_and_solve_what_sosp_solves(style, num_inputs, max_depth, probe_nodes):
    """Every spawn point probes (children too, at max_depth 2), cut or not,
    with spawning points drawn: well-formed, verified, the SoS+ answers."""
    cfg = TraceConfig(
        kind="apr", style=style, max_depth=max_depth, max_children=3, spawn_prob=0.7, probe_nodes=probe_nodes
    )
    sosp = TraceConfig(kind="sosp", style=style)
    widths = set()
    for p in _problems(num_inputs):
        tree = make_trace(p, cfg)
        _check_tree(tree, p, cfg)
        assert tree.solution == make_trace(p, sosp).solution
        widths.add(tree.num_spawned)
    assert 0 in widths and len(widths) >= 2


def test_probe_config_checks():
    with pytest.raises(ValueError, match=r"config.trace.probe_nodes=-1 must be >= 0"):
        TraceConfig(probe_nodes=-1)
    with pytest.raises(ValueError, match="do not combine"):
        TraceConfig(probe_nodes=4, condition=True)


def test_probe_traces_are_byte_for_byte_those_the_cache_format_pins():
    """The probe setting's bytes (``FORMAT_VERSION`` 5 added it; the pin
    above still holds for every setting without a probe)."""
    digest = hashlib.sha256()
    for style, depth, probe in (("terse", 1, 16), ("terse", 2, 6), ("reference", 2, 3)):
        cfg = TraceConfig(kind="apr", style=style, max_depth=depth, probe_nodes=probe)
        for num_inputs in (3, 4):
            for p in generate_problems(30, num_inputs=num_inputs, seed=5):
                digest.update(make_trace(p, cfg).to_json().encode())
    assert digest.hexdigest() == "40679f468548552558c486c27ce179ac8230fb3029fd5de1fba0d7c77360082b"


@pytest.mark.parametrize(
    "numbers, target, share, children",
    [
        ((93, 92, 65), 64, 1 / 3, 0),  # a short sequential search settles it: the root alone
        ((74, 80, 37), 40, 0.2, 3),  # ceil(0.5 / 0.2)
        ((4, 48, 6), 32, 2 / 11, 3),
        ((12, 25, 4), 73, 0.1, 4),  # ceil(0.5 / 0.1) = 5, at most max_children
    ],
)
def test_width_follows_the_reachable_share(numbers, target, share, children):
    """``trace.sequential_share``: easy problems are searched alone (the SoS+
    trace), harder ones fork ``ceil(viable_children / share)`` wide."""
    cfg = TraceConfig(kind="apr", sequential_share=0.25, viable_children=0.5)
    problem = with_difficulty(Problem(numbers, target))
    assert problem.reachable_share == pytest.approx(share)
    tree = make_trace(problem, cfg)
    _check_tree(tree, problem, cfg)
    assert tree.num_spawned == children
    if children == 0:
        assert tree.threads[0].text == make_trace(problem, TraceConfig(kind="sosp")).threads[0].text
    else:  # the first round spawns that many of the fixed trace's children, in its order
        fixed = make_trace(problem, TraceConfig(kind="apr"))
        assert tree.threads[0].written_text.split("</spawn>")[0] == "<sep>".join(
            fixed.threads[0].written_text.split("</spawn>")[0].split("<sep>")[:children]
        )


def test_adaptive_config_width_follows_difficulty_by_what_the_root_reads():
    """configs/adaptive.py on its task: the traces' child counts follow the
    oracle difficulty (Spearman > 0.5), a root that forks spawns 4 children per
    round and a second round exactly when every child of the first came back
    with nothing, and every trace solves what SoS+ with the same search solves."""
    config = load_config("configs/adaptive.py")
    cfg, task = TraceConfig.from_config(config.trace), config.task
    problems = make_splits(
        400,
        0,
        0,
        num_inputs=task.num_inputs,
        max_number=task.max_number,
        min_target=task.min_target,
        max_target=task.max_target,
        seed=3,
    )["train"]
    sosp = dataclasses.replace(cfg, kind="sosp", sequential_share=0.0)
    children, difficulty, rounds_seen = [], [], set()
    for p in problems:
        tree = make_trace(p, cfg)
        _check_tree(tree, p, cfg)
        assert tree.solution == make_trace(p, sosp).solution
        root = tree.threads[0]
        joins = [
            seg.text.removeprefix(protocol.JOIN_OPEN).removesuffix(protocol.JOIN_CLOSE).split(protocol.SEP)
            for seg in root.segments
            if seg.role == "join"
        ]
        rounds = protocol.spawn_messages(root.written_text)
        assert len(rounds) == len(joins)
        assert all(len(r) == cfg.max_children for r in rounds[:-1])
        for first_round in joins[:-1]:  # another round only after one that found nothing
            assert all(ret == "none" for ret in first_round)
        rounds_seen.add(len(rounds))
        children.append(tree.num_spawned)
        difficulty.append(1 - p.reachable_share)
    rank = lambda x: np.argsort(np.argsort(np.asarray(x) + 1e-9 * np.arange(len(x))))
    assert np.corrcoef(rank(children), rank(difficulty))[0, 1] > 0.5
    assert rounds_seen == {0, 1, 2}


def test_share_width_config_checks():
    with pytest.raises(ValueError, match=r"config.trace.sequential_share=1.5 must be in \[0, 1\]"):
        TraceConfig(sequential_share=1.5)
    with pytest.raises(ValueError, match="config.trace.viable_children=.* must be positive"):
        TraceConfig(viable_children=0)
    with pytest.raises(ValueError, match="do not combine"):
        TraceConfig(sequential_share=0.25, condition=True)


def test_share_width_traces_are_byte_for_byte_those_the_cache_format_pins():
    digest = hashlib.sha256()
    for share, viable in ((0.25, 0.5), (0.5, 1.0)):
        cfg = TraceConfig(kind="apr", sequential_share=share, viable_children=viable)
        for num_inputs in (3, 4):
            for p in generate_problems(30, num_inputs=num_inputs, seed=5):
                digest.update(make_trace(p, cfg).to_json().encode())
    assert digest.hexdigest() == "339cd8b81204629a6b213c0a42410ae56b480098e573ca9d2f35fbdeee204a81"


def test_tree_dict_is_the_dataclass_fields_and_shares_nothing():
    tree = make_trace(_problems(4)[0], TraceConfig.from_config({"kind": "apr"}))
    d = tree.to_dict()
    assert d == dataclasses.asdict(tree)
    d["problem"]["numbers"].append(7)
    d["threads"][0]["segments"][0]["text"] = "changed"
    d["meta"]["extra"] = 1
    assert tree == ThreadTree.from_json(tree.to_json())
    assert "extra" not in tree.meta and 7 not in tree.problem["numbers"]
