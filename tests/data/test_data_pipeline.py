"""grain pipeline: loss masks, packing, per-process shards, exact resume."""

import collections
import pickle

import numpy as np
import pytest

from apr_jax import protocol
from apr_jax.config.loading import load_run_config
from apr_jax.data.build import build_dataset, make_problem_source, open_split
from apr_jax.data.pipeline import FEATURES, TokenizeTree, make_iterator, pack_sequences, tree_dataset
from apr_jax.data.tokenizer import Tokenizer
from apr_jax.tasks.countdown.problems import Problem
from apr_jax.threads import ThreadTree


def _config(data_dir, *extra):
    return load_run_config(
        None,
        [
            "task.num_train=200",
            "task.num_validation=60",
            "task.num_test=40",
            f"data.dir={data_dir}",
            "data.num_workers=1",
            "data.seq_len=128",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    config = _config(tmp_path_factory.mktemp("data"))
    return config, build_dataset(config, log=None)


@pytest.fixture(scope="module")
def tokenizer(built):
    return Tokenizer(built[1].tokenizer_path)


def _trees(info, split):
    source = open_split(info, split)
    return [source[i] for i in range(len(source))]


def _key(tree_or_record):
    problem = tree_or_record["problem"] if isinstance(tree_or_record, dict) else tree_or_record
    return tuple(problem["numbers"]), problem["target"]


# ---- to_sequences: what the model is trained on ------------------------------


def test_apr_loss_mask_spawn_one_join_zero(built, tokenizer):
    tree = next(t for t in _trees(built[1], "validation") if t.num_spawned > 0)
    ids = tokenizer.protocol_ids
    root = tree.to_sequences(tokenizer)[0]
    tokens, mask = root.tokens.tolist(), root.loss_mask.tolist()
    assert tokens[0] == tokenizer.bos_id and mask[0] == 0
    assert tokens[-1] == tokenizer.eos_id and mask[-1] == 1
    prompt_len = len(tokenizer.encode(tree.threads[0].segments[0].text))
    assert mask[1 : 1 + prompt_len] == [0] * prompt_len
    spawn_at, spawn_end = tokens.index(ids["<spawn>"]), tokens.index(ids["</spawn>"])
    join_at, join_end = tokens.index(ids["<join>"]), tokens.index(ids["</join>"])
    assert spawn_at < spawn_end < join_at < join_end
    assert all(mask[i] == 1 for i in range(spawn_at, spawn_end + 1))
    assert all(mask[i] == 0 for i in range(join_at, join_end + 1))
    assert sum(mask) == len(tokenizer.encode(tree.threads[0].written_text)) + 1  # + EOS


def test_child_sequence_starts_with_bos_child_message(built, tokenizer):
    tree = next(t for t in _trees(built[1], "validation") if t.num_spawned > 0)
    root_text = tree.threads[0].text
    messages = root_text.split(protocol.SPAWN_OPEN)[1].split(protocol.SPAWN_CLOSE)[0].split(protocol.SEP)
    sequences = tree.to_sequences(tokenizer)
    for child_index, message in zip(tree.threads[0].children, messages):
        seq = sequences[child_index]
        head = [tokenizer.bos_id, tokenizer.protocol_ids["<child>"]] + tokenizer.encode(message)
        assert seq.tokens[: len(head)].tolist() == head
        assert seq.loss_mask[: len(head)].tolist() == [0] * len(head)
        assert seq.tokens[-1] == tokenizer.protocol_ids["</return>"]  # child ends by returning
        assert seq.loss_mask[-1] == 1


# ---- packing ------------------------------------------------------------------


def _random_sequences(rng, count, max_len):
    out = []
    for _ in range(count):
        n = int(rng.integers(1, max_len))
        out.append((rng.integers(4, 90, n).astype(np.int32), rng.integers(0, 2, n).astype(np.int32)))
    return out


def _segments(rows):
    """Each row's segments as (tokens, mask) in order, checking the layout."""
    out = []
    for r in range(rows["tokens"].shape[0]):
        seg_ids = rows["segment_ids"][r]
        real = seg_ids > 0
        n = int(real.sum())
        assert real[:n].all() and not real[n:].any(), "padding only at the end"
        assert (rows["tokens"][r][~real] == 0).all() and (rows["loss_mask"][r][~real] == 0).all()
        assert (rows["positions"][r][~real] == 0).all()
        assert seg_ids[0] == 1 if n else True
        assert (np.diff(seg_ids[:n]) >= 0).all() and (np.diff(seg_ids[:n]) <= 1).all()
        for s in range(1, int(seg_ids.max()) + 1):
            where = seg_ids == s
            assert (rows["positions"][r][where] == np.arange(where.sum())).all()
            out.append((rows["tokens"][r][where], rows["loss_mask"][r][where]))
    return out


@pytest.mark.parametrize("packing", [True, False])
def test_pack_sequences_keeps_every_token(packing):
    rng = np.random.default_rng(0)
    seq_len = 48
    sequences = _random_sequences(rng, 200, 70)
    pieces = [{"tokens": t, "loss_mask": m, "positions": np.arange(len(t), dtype=np.int32)} for t, m in sequences]
    rows, truncated = pack_sequences(pieces, seq_len, packing=packing)
    assert truncated == sum(len(t) > seq_len for t, _ in sequences)
    segments = _segments(rows)
    assert len(segments) == len(sequences)
    for (tokens, mask), (got_tokens, got_mask) in zip(sequences, segments):
        np.testing.assert_array_equal(got_tokens, tokens[:seq_len])
        np.testing.assert_array_equal(got_mask, mask[:seq_len])
    if packing:
        assert rows["tokens"].shape[0] < len(sequences)
        assert rows["segment_ids"].max() > 1
    else:
        assert rows["tokens"].shape[0] == len(sequences) and rows["segment_ids"].max() == 1


def test_iterator_covers_one_epoch_exactly(built, tokenizer):
    config, info = built
    it = make_iterator(config, info, "validation", batch_size=1, num_epochs=1)
    batches = list(it)
    assert batches and all(b[k].shape == (1, 128) and b[k].dtype == np.int32 for b in batches for k in FEATURES)
    got = collections.Counter()
    for b in batches:
        for tokens, mask in _segments(b):
            got[(tuple(tokens.tolist()), tuple(mask.tolist()))] += 1
    want = collections.Counter()
    truncated = 0
    for tree in _trees(info, "validation"):
        for s in tree.to_sequences(tokenizer):
            truncated += len(s.tokens) > 128
            want[(tuple(s.tokens[:128].tolist()), tuple(s.loss_mask[:128].tolist()))] += 1
    assert got == want
    assert it.stats["truncated"] == truncated
    assert it.stats["sequences"] == sum(want.values())


def test_truncation_is_counted(built, tokenizer):
    config, info = built
    short = load_run_config(
        None,
        [
            "task.num_train=200",
            "task.num_validation=60",
            "task.num_test=40",
            f"data.dir={config.data.dir}",
            "data.seq_len=32",
        ],
    )
    it = make_iterator(short, info, "validation", batch_size=2, num_epochs=1)
    rows = sum(1 for _ in it) * 2
    lengths = [len(s.tokens) for t in _trees(info, "validation") for s in t.to_sequences(tokenizer)]
    assert it.stats["truncated"] == sum(n > 32 for n in lengths) > 0
    assert rows <= it.stats["rows"] <= rows + 1  # the last, partial batch is dropped


# ---- shuffling and sharding ---------------------------------------------------


def test_shards_are_disjoint_and_cover_each_epoch(built):
    info = built[1]
    everything = sorted(_key(t.to_dict()) for t in _trees(info, "validation"))
    for count in (1, 3, 4):
        per_epoch = [[], []]
        for index in range(count):
            ds = tree_dataset(info, "validation", process_index=index, process_count=count, seed=7, num_epochs=2)
            assert len(ds) == 2 * len(range(index, len(everything), count))
            half = len(ds) // 2
            for epoch in (0, 1):
                per_epoch[epoch] += [_key(ds[i].to_dict()) for i in range(epoch * half, (epoch + 1) * half)]
        for keys in per_epoch:
            assert sorted(keys) == everything  # disjoint (no repeats) and covering


def test_shuffle_depends_on_seed_and_epoch(built):
    info = built[1]

    def order(seed, epochs=2):
        ds = tree_dataset(info, "validation", seed=seed, num_epochs=epochs)
        return [_key(ds[i].to_dict()) for i in range(len(ds))]

    a, b = order(1), order(2)
    n = len(a) // 2
    assert a == order(1)
    assert a != b
    assert a[:n] != a[n:] and sorted(a[:n]) == sorted(a[n:])


# ---- checkpointing ------------------------------------------------------------


def _batches(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same_batches(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for k in FEATURES:
            np.testing.assert_array_equal(g[k], w[k])


@pytest.mark.parametrize("packing", [True, False])
def test_restored_iterator_yields_the_same_batches(built, packing):
    config, info = built
    config = _config(config.data.dir, f"data.packing={packing}")

    def fresh():
        return make_iterator(config, info, "validation", batch_size=4, num_epochs=3, seed=3)

    batches_per_epoch = sum(1 for _ in fresh()) // 3
    for skip in (0, 1, 5, batches_per_epoch - 1):  # the last crosses an epoch boundary
        original = fresh()
        for _ in range(skip):
            next(original)
        state = original.get_state()
        expected = [next(original) for _ in range(4)]
        restored = fresh()
        next(restored)  # some other position first
        restored.set_state(pickle.loads(pickle.dumps(state)))
        _assert_same_batches(_batches(restored, len(expected)), expected)
        assert restored.stats == original.stats


def test_epochs_limit_and_train_repeats(built):
    config, info = built
    one = sum(1 for _ in make_iterator(config, info, "validation", batch_size=2, num_epochs=1))
    two = sum(1 for _ in make_iterator(config, info, "validation", batch_size=2, num_epochs=2))
    assert one > 0 and two >= 2 * one
    assert one == sum(1 for _ in make_iterator(config, info, "validation", batch_size=2))
    train = make_iterator(config, info, "train", batch_size=8)
    for _ in range(3 * info.counts["train"] // 8):  # well past one epoch
        next(train)


def test_bad_arguments(built):
    config, info = built
    with pytest.raises(ValueError, match="split"):
        make_iterator(config, info, "dev", batch_size=2)
    with pytest.raises(ValueError, match="process_index"):
        make_iterator(config, info, "train", batch_size=2, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="batch_size"):
        make_iterator(config, info, "train", batch_size=0)
    with pytest.raises(ValueError, match="split"):
        make_problem_source(info, "dev")


def test_problem_source_and_tokenize_tree_pickle(built, tokenizer):
    info = built[1]
    problems = make_problem_source(info, "test")
    assert len(problems) == info.counts["test"] and all(isinstance(p, Problem) for p in problems)
    assert sorted(p.key for p in problems) == sorted(Problem.from_dict(t.problem).key for t in _trees(info, "test"))
    fn = pickle.loads(pickle.dumps(TokenizeTree(tokenizer)))
    tree = open_split(info, "test")[0]
    got = fn(tree)
    want = tree.to_sequences(tokenizer)
    assert [g["tokens"].tolist() for g in got] == [w.tokens.tolist() for w in want]


# ---- streamed traces and worker processes ----------------------------------------


@pytest.fixture(scope="module")
def streamed(built):
    config = _config(built[0].data.dir, "data.traces=streamed")
    return config, build_dataset(config, log=None)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Stored and streamed builds of traces that draw random numbers (a
    conditioned trace draws its child count, a spawn point whether to spawn),
    so a streamed trace made with another problem's seed differs."""
    data_dir = tmp_path_factory.mktemp("drawn")
    draws = ("trace.condition=true", "trace.spawn_prob=0.7")
    stored = build_dataset(_config(data_dir, *draws), log=None)
    streamed = build_dataset(_config(data_dir, *draws, "data.traces=streamed"), log=None)
    return stored, streamed


def test_streamed_trees_are_the_stored_ones(drawn):
    """A streamed split generates, tree for tree, what the stored build wrote
    (in problem order rather than the records' order)."""
    stored_info, streamed_info = drawn
    assert streamed_info.traces == "streamed" and streamed_info.dir != stored_info.dir
    for split in ("train", "validation", "test"):
        generated = [t.to_json() for t in _trees(streamed_info, split)]
        assert sorted(generated) == sorted(t.to_json() for t in _trees(stored_info, split))
        assert [ThreadTree.from_json(t).problem for t in generated] == [
            p.to_dict() for p in make_problem_source(streamed_info, split)
        ]


def test_worker_processes_yield_the_same_batches_and_resume_exactly(streamed):
    """Two pipeline worker processes give the batches of the training process's
    own reader threads, and their saved state (through JSON, as checkpoints
    store it) resumes exactly."""
    import json

    config, info = streamed

    def fresh(workers):
        return make_iterator(config, info, "validation", batch_size=4, num_epochs=2, seed=3, num_workers=workers)

    in_process = fresh(0)
    want = _batches(in_process, 8)
    in_process.close()
    original = fresh(2)
    _assert_same_batches(_batches(original, 3), want[:3])
    state = json.loads(json.dumps(original.get_state()))
    _assert_same_batches(_batches(original, 5), want[3:])
    original.close()
    restored = fresh(2)
    next(restored)  # some other position first
    restored.set_state(state)
    _assert_same_batches(_batches(restored, 5), want[3:])
    assert restored.stats == original.stats
    restored.close()
