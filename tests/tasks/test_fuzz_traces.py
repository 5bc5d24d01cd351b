"""Property-based round trips: trace generator -> ThreadTree JSON -> tokenizer
-> training sequences, for random problems and trace settings."""

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apr_jax import protocol
from apr_jax.config.trace import TraceConfig
from apr_jax.data.tokenizer import Tokenizer
from apr_jax.tasks.countdown.problems import Problem, make_splits
from apr_jax.tasks.countdown.solver import is_solvable
from apr_jax.tasks.countdown.traces import final_operations, make_trace
from apr_jax.tasks.countdown.verifier import verify_operations
from apr_jax.threads import ThreadTree

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """Byte fallback on, so every text (not only trace text) round-trips."""
    problems = make_splits(60, 0, 0, num_inputs=3, max_number=20, max_target=50)["train"]
    texts = [
        t.text
        for style in ("terse", "reference")
        for kind in ("apr", "sosp")
        for p in problems[:15]
        for t in make_trace(p, TraceConfig(kind=kind, style=style)).threads
    ]
    return Tokenizer.train(texts, 400, tmp_path_factory.mktemp("tok") / "fuzz.model")


@st.composite
def problems(draw):
    numbers = tuple(draw(st.lists(st.integers(1, 25), min_size=3, max_size=4)))
    target = draw(st.integers(1, 60))
    return Problem(numbers, target)


def _trace_config(probe_nodes: int, condition: bool, **fields) -> TraceConfig:
    """A probe (the search sets the width) or a c<n>/b<n> request, not both."""
    return TraceConfig(probe_nodes=probe_nodes, condition=condition and not probe_nodes, **fields)


TRACE_CONFIGS = st.builds(
    _trace_config,
    kind=st.sampled_from(["apr", "sosp"]),
    style=st.sampled_from(["terse", "reference"]),
    max_children=st.integers(1, 4),
    spawn_prob=st.sampled_from([0.0, 0.5, 1.0]),
    max_depth=st.integers(1, 2),
    beam_size=st.integers(1, 4),
    condition=st.booleans(),
    seed=st.integers(0, 1000),
    max_nodes=st.integers(1, 12),
    probe_nodes=st.sampled_from([0, 0, 1, 2, 4, 12]),
)


@SETTINGS
@given(problem=problems(), cfg=TRACE_CONFIGS)
def test_trace_json_and_tokens_round_trip(tokenizer, problem, cfg):
    tree = make_trace(problem, cfg)
    tree.validate()
    assert ThreadTree.from_json(tree.to_json()) == tree
    answer = final_operations(tree)
    if answer:  # whatever the search wrote as its answer is an exact solution
        assert verify_operations(answer, problem).ok
    elif not is_solvable(problem.numbers, problem.target):
        assert answer == []
    if not cfg.condition:  # unrequested, every setting's search finds the sequential search's path
        sequential = dataclasses.replace(cfg, kind="sosp", probe_nodes=0)
        assert tree.solution == make_trace(problem, sequential).solution
    sequences = tree.to_sequences(tokenizer)
    assert len(sequences) == len(tree.threads)
    for thread, seq in zip(tree.threads, sequences):
        assert tokenizer.decode(seq.tokens) == thread.text
        assert seq.tokens[0] == tokenizer.bos_id and len(seq.tokens) == len(seq.loss_mask)
        expected_mask = [0]
        for segment in thread.segments:
            expected_mask += [int(segment.role == "model")] * len(tokenizer.encode(segment.text))
        if thread.stop == "eos":
            expected_mask.append(1)
        assert seq.loss_mask.tolist() == expected_mask


SOLVABLE = tuple(
    p
    for n in (3, 4)
    for p in make_splits(100, 0, 0, num_inputs=n, max_number=20, min_target=10, max_target=50, seed=1)["train"]
)
PROBE_CONFIGS = st.builds(
    TraceConfig,
    kind=st.just("apr"),
    style=st.sampled_from(["terse", "reference"]),
    max_children=st.integers(1, 4),
    spawn_prob=st.sampled_from([0.5, 1.0]),
    max_depth=st.integers(1, 2),
    beam_size=st.integers(1, 4),
    seed=st.integers(0, 1000),
    max_nodes=st.integers(1, 16),
    probe_nodes=st.integers(1, 4),
)  # small probes: often cut


@SETTINGS
@given(problem=st.sampled_from(SOLVABLE), cfg=PROBE_CONFIGS)
def test_probe_traces_find_the_sequential_path(problem, cfg):
    """Probes cut or whole, at the root or deeper: the path SoS+ finds, verified."""
    tree = make_trace(problem, cfg)
    tree.validate()
    assert tree.solution == make_trace(problem, dataclasses.replace(cfg, kind="sosp")).solution
    if tree.solution:
        assert verify_operations(final_operations(tree), problem).ok


@SETTINGS
@given(parts=st.lists(st.one_of(st.text(max_size=30), st.sampled_from(protocol.RESERVED)), max_size=12))
def test_any_text_round_trips_and_protocol_strings_stay_single_tokens(tokenizer, parts):
    text = "".join(parts)
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    table = tokenizer.protocol_ids
    reserved_ids = set(table.values())
    # Every reserved string occurrence is exactly its one id (never split).
    count = sum(text.count(s) for s in protocol.RESERVED)
    assert sum(i in reserved_ids for i in ids) == count
