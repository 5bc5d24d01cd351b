"""The contract between training and decoding: a scripted model that writes
real APR Countdown traces' model tokens drives the engine, and every thread the
engine builds equals the trace's ``to_sequences`` row, tokens and loss mask.

The default config's traces are edited to cover two limits: a child that ends
with ``<eos>`` instead of returning and a child cut at ``tokens_per_thread``;
the engine joins both as ``<trunc>``, so their parent's join block is edited to
match. Deeper traces (grandchildren, two spawn rounds, no spawn at all) run
unedited."""

import jax
import numpy as np
import pytest

from apr_jax import protocol
from apr_jax.config.trace import TraceConfig
from apr_jax.data.tokenizer import Tokenizer
from apr_jax.decode.engine import Engine, EngineConfig
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.replay_model import make_replay_model
from apr_jax.tasks.countdown.problems import make_splits
from apr_jax.tasks.countdown.traces import make_trace
from apr_jax.threads import ThreadTree
from configs.default import get_config

NUM_PROBLEMS = 6
MAX_CONTEXT = 256
EOS_CHILD = (0, 1)  # (problem, thread): ends with <eos> instead of returning
CUT_CHILD = (1, 2)  # (problem, thread): written past tokens_per_thread


def _join_entries(parent) -> list[tuple[int, int]]:
    """(join segment index, entry index) of each child in the parent's join blocks, in child order."""
    out = []
    for s, seg in enumerate(parent.segments):
        if seg.role == "join":
            body = seg.text[len(protocol.JOIN_OPEN) : -len(protocol.JOIN_CLOSE)]
            out.extend((s, e) for e in range(len(body.split(protocol.SEP))))
    assert len(out) == len(parent.children)
    return out


def _join_as_trunc(tree: ThreadTree, child: int) -> None:
    """Rewrite the parent's join block entry for ``child`` as ``<trunc>``."""
    parent = tree.threads[tree.threads[child].parent]
    s, e = _join_entries(parent)[parent.children.index(child)]
    seg = parent.segments[s]
    entries = seg.text[len(protocol.JOIN_OPEN) : -len(protocol.JOIN_CLOSE)].split(protocol.SEP)
    entries[e] = protocol.TRUNC
    seg.text = protocol.join_block(entries)


def _model_segment(thread):
    (seg,) = [s for s in thread.segments if s.role == "model"]
    return seg


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """Tokenizer, edited test-split trees, the expected (tokens, mask, stop) per
    thread, and tokens_per_thread."""
    c = get_config()
    t = c.task
    splits = make_splits(
        120,
        0,
        NUM_PROBLEMS,
        num_inputs=t.num_inputs,
        min_number=t.min_number,
        max_number=t.max_number,
        min_target=t.min_target,
        max_target=t.max_target,
        seed=t.seed,
    )
    cfg = TraceConfig.from_config(c.trace)
    texts = [th.text for p in splits["train"] for th in make_trace(p, cfg).threads]
    tok = Tokenizer.train(texts, c.data.vocab_size, tmp_path_factory.mktemp("tok") / "t.model")
    trees = [make_trace(p, cfg) for p in splits["test"]]

    # (a) a child that writes <eos> where it would have returned.
    tree, child = trees[EOS_CHILD[0]], trees[EOS_CHILD[0]].threads[EOS_CHILD[1]]
    seg = _model_segment(child)
    seg.text = seg.text[: seg.text.rindex(protocol.RETURN_OPEN)]
    child.stop = "eos"
    _join_as_trunc(tree, EOS_CHILD[1])

    # (b) a child that writes far more than the others; tokens_per_thread cuts it.
    written = [int(s.loss_mask.sum()) for tr in trees for s in tr.to_sequences(tok)]
    limit = max(written) + 2  # every other thread ends 2+ tokens before its limit
    tree, child = trees[CUT_CHILD[0]], trees[CUT_CHILD[0]].threads[CUT_CHILD[1]]
    seg = _model_segment(child)
    lines = seg.text[: seg.text.rindex(protocol.RETURN_OPEN)]
    seg.text = lines * (2 * limit // max(len(tok.encode(lines)), 1) + 1) + seg.text
    _join_as_trunc(tree, CUT_CHILD[1])

    expected = []
    for n, tr in enumerate(trees):
        rows = []
        for i, (th, s) in enumerate(zip(tr.threads, tr.to_sequences(tok))):
            tokens, mask, stop = s.tokens.tolist(), s.loss_mask.tolist(), th.stop
            if (n, i) == CUT_CHILD:
                assert sum(mask) > limit + 5
                end = int(np.searchsorted(np.cumsum(mask), limit)) + 1  # through the limit-th written token
                tokens, mask, stop = tokens[:end], mask[:end], "token_limit"
            rows.append((tokens, mask, stop))
        expected.append(rows)
    return tok, trees, expected, limit


def _check_unambiguous(rows) -> None:
    """Wherever a sequence's next token is model-written, every sequence with
    that prefix agrees on it (else the replay could not tell them apart)."""
    following: dict[tuple, set] = {}
    model_keys = set()
    for s in rows:
        seq = s.tokens.tolist()
        for p in range(len(seq) - 1):
            key = tuple(seq[: p + 1])
            following.setdefault(key, set()).add(seq[p + 1])
            if s.loss_mask[p + 1]:
                model_keys.add(key)
    assert all(len(following[k]) == 1 for k in model_keys)


def _run(setting, engine_cfg: EngineConfig):
    tok, trees, expected = setting[:3]
    rows = [s for tr in trees for s in tr.to_sequences(tok)]
    _check_unambiguous(rows)
    model = make_replay_model(
        [s.tokens for s in rows], vocab_size=tok.vocab_size, max_len=MAX_CONTEXT, fallback_id=tok.eos_id
    )
    prompts = [tok.encode(tr.threads[0].segments[0].text) for tr in trees]
    out = Engine(model, engine_cfg, ProtocolIds.from_tokenizer(tok)).run(prompts, jax.random.key(0))
    return trees, expected, out


def _assert_same_threads(trees, expected, out) -> None:
    assert len(out.samples) == len(trees)
    for n, (tree, rows) in enumerate(zip(trees, expected)):
        (sample,) = out.samples[n]
        assert sample.limits_hit["dropped_pool"] == 0 and sample.limits_hit["dropped_children"] == 0
        assert len(sample.threads) == len(tree.threads), f"problem {n}"

        def visit(i_tree: int, i_engine: int) -> None:
            got = sample.threads[i_engine]
            tokens, mask, stop = rows[i_tree]
            where = f"problem {n} thread {i_tree}"
            assert got.tokens == tokens, where
            assert [int(r == "model") for r in got.roles] == mask, where
            assert got.stop == stop, where
            kids = tree.threads[i_tree].children
            assert len(got.children) == len(kids), where
            for a, b in zip(kids, got.children):
                visit(a, b)

        visit(0, 0)


def _cfg(limit: int, **kw) -> EngineConfig:
    return EngineConfig(
        max_children=4, max_rounds=2, max_depth=1, tokens_per_thread=limit, max_context=MAX_CONTEXT, **kw
    )


def test_setting_covers_the_limits(setting):
    tok, trees, expected, _ = setting
    stops = [stop for rows in expected for _, _, stop in rows]
    assert stops.count("token_limit") == 1 and stops.count("eos") == NUM_PROBLEMS + 1
    assert expected[EOS_CHILD[0]][EOS_CHILD[1]][2] == "eos"
    assert expected[CUT_CHILD[0]][CUT_CHILD[1]][2] == "token_limit"
    trunc = tok.encode(protocol.TRUNC)
    for n, _ in (EOS_CHILD, CUT_CHILD):
        assert trunc[0] in expected[n][0][0] and len(trunc) == 1
    assert all(len(tr.threads) > 2 for tr in trees)


def test_every_thread_equals_its_training_sequence(setting):
    trees, expected, out = _run(setting, _cfg(setting[3]))
    _assert_same_threads(trees, expected, out)


@pytest.mark.parametrize("lanes, chunk, long_chunks", [(5, 1, ()), (11, 4, (8, 16))])
def test_every_thread_equals_its_training_sequence_with_few_lanes(setting, lanes, chunk, long_chunks):
    """A KV pool smaller than all the threads at once (lanes are reused) and
    forced tokens fed ``chunk`` at a time (or in the narrowest of
    ``long_chunks`` that holds a longer queue)."""
    cfg = _cfg(
        setting[3], lanes=lanes, prefill_chunk=chunk, long_prefill_chunks=long_chunks, row_buckets=3, kv_buckets=2
    )
    assert lanes < NUM_PROBLEMS * cfg.lanes_per_group
    trees, expected, out = _run(setting, cfg)
    _assert_same_threads(trees, expected, out)


def test_paged_reads_replay_every_thread_and_read_fewer_slots(setting):
    """With ``eval.decode_attention=paged`` width-1 calls read each row's
    pages below its own length: the same threads, fewer KV slots read."""
    common = dict(lanes=11, prefill_chunk=4, row_buckets=3, kv_buckets=2)
    trees, expected, gathered = _run(setting, _cfg(setting[3], **common))
    _, _, paged = _run(setting, _cfg(setting[3], decode_attention="paged", page_size=8, **common))
    _assert_same_threads(trees, expected, paged)
    read = {
        name: out.counters["kv_slots_read"] / out.counters["kv_slots_live"]
        for name, out in (("xla", gathered), ("paged", paged))
    }
    assert read["paged"] < read["xla"], read
    assert paged.counters["kv_slots_live"] == gathered.counters["kv_slots_live"]


@pytest.fixture(scope="module")
def nested(tmp_path_factory):
    """Depth-2 traces with two spawn rounds (and one root that never spawns),
    their tokenizer, and the expected rows."""
    splits = make_splits(60, 0, 60, num_inputs=4, min_number=1, max_number=30, min_target=10, max_target=60, seed=0)
    cfg = TraceConfig(max_depth=2, max_children=2, spawn_prob=0.7)
    texts = [th.text for p in splits["train"] for th in make_trace(p, cfg).threads]
    tok = Tokenizer.train(texts, 96, tmp_path_factory.mktemp("tok") / "n.model")
    pool = [make_trace(p, cfg) for p in splits["test"]]

    def rounds(tree):
        return max(th.written_text.count(protocol.SPAWN_OPEN) for th in tree.threads)

    deep = [t for t in pool if rounds(t) == 2 and max(map(t.depth, range(len(t.threads)))) == 2]
    flat = sorted((t for t in pool if len(t.threads) == 1), key=lambda t: len(t.threads[0].text))
    trees = deep[:3] + flat[:1]
    assert len(trees) == 4
    expected = [
        [(s.tokens.tolist(), s.loss_mask.tolist(), th.stop) for th, s in zip(tr.threads, tr.to_sequences(tok))]
        for tr in trees
    ]
    assert max(len(r[0]) for rows in expected for r in rows) < MAX_CONTEXT
    return tok, trees, expected


@pytest.mark.parametrize("lanes, chunk", [(7, 3)])
def test_nested_threads_equal_their_training_sequences(nested, lanes, chunk):
    """Children that spawn grandchildren, parents that spawn twice; with 7
    lanes one problem's worst case at a time."""
    cfg = EngineConfig(
        max_children=2,
        max_rounds=2,
        max_depth=2,
        tokens_per_thread=MAX_CONTEXT,
        max_context=MAX_CONTEXT,
        lanes=lanes,
        prefill_chunk=chunk,
        row_buckets=3,
        kv_buckets=2,
    )
    trees, expected, out = _run(nested, cfg)
    _assert_same_threads(trees, expected, out)
