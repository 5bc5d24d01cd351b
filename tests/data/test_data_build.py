"""Dataset cache: contents, reuse, rebuild of a half-built cache, hashing."""

import io
import os
import re

import pytest

from apr_jax.config.loading import load_run_config
from apr_jax.data import build
from apr_jax.data.build import DatasetInfo, build_dataset, cache_dir, config_hash, open_split
from apr_jax.data.tokenizer import Tokenizer
from apr_jax.tasks.countdown.problems import load_problems, make_splits
from apr_jax.tasks.countdown.tfds_builder import generate_traces
from apr_jax.tasks.countdown.traces import make_trace
from apr_jax.threads import ThreadTree


def _config(data_dir, *extra):
    return load_run_config(
        None,
        [
            "task.num_train=200",
            "task.num_validation=30",
            "task.num_test=20",
            f"data.dir={data_dir}",
            "data.num_workers=1",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    config = _config(tmp_path_factory.mktemp("data"))
    log = io.StringIO()
    return config, build_dataset(config, log=log), log.getvalue()


def test_build_writes_a_complete_dataset(built):
    config, info, log = built
    assert info.dir == cache_dir(config) and os.path.basename(info.dir) == config_hash(config)
    assert info.counts == {"train": 200, "validation": 30, "test": 20}
    splits = make_splits(200, 30, 20, num_inputs=3, max_number=20, min_target=10, max_target=50)
    for split, problems in splits.items():
        assert load_problems(info.problem_paths[split]) == problems
        source = open_split(info, split)
        assert len(source) == len(problems)
        tree = source[0]
        assert isinstance(tree, ThreadTree)
        assert sorted(tuple(source[i].problem["numbers"]) for i in range(len(source))) == sorted(
            p.numbers for p in problems
        )
        cfg = config.trace
        assert tree.to_json() == make_trace(tree.problem, cfg).to_json()
    tok = Tokenizer(info.tokenizer_path)
    assert tok.vocab_size <= config.data.vocab_size
    assert info.stats["mean_tokens_per_sequence"] > 10
    assert sum(info.stats["failed"].values()) >= 0
    assert "traces/s" in log and "search failed" in log and "mean" in log
    assert re.search(
        r"in [0-9.]+ s with \d+ workers \(problems [0-9.]+ s, traces [0-9.]+ s, "
        r"tokenizer and statistics [0-9.]+ s\)",
        log,
    ), log
    assert DatasetInfo.load(info.dir) == info
    assert not [d for d in os.listdir(os.path.dirname(info.dir)) if ".building-" in d]


def test_second_build_reuses_the_cache(built, monkeypatch):
    config, info, _ = built
    marker = os.path.join(info.dir, build.MARKER)
    mtime = os.path.getmtime(marker)

    def no_build(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(build, "_build_into", no_build)
    log = io.StringIO()
    again = build_dataset(config, log=log)
    assert again == info and "reusing" in log.getvalue()
    assert os.path.getmtime(marker) == mtime


def test_half_built_cache_is_rebuilt(tmp_path):
    config = _config(tmp_path, "task.num_train=80")
    info = build_dataset(config, log=None)
    os.remove(os.path.join(info.dir, build.MARKER))
    with open(os.path.join(info.dir, "stray"), "w") as f:
        f.write("left over")
    with pytest.raises(ValueError, match="not a complete dataset"):
        DatasetInfo.load(info.dir)
    log = io.StringIO()
    rebuilt = build_dataset(config, log=log)
    assert "removing incomplete" in log.getvalue() and "built" in log.getvalue()
    assert not os.path.exists(os.path.join(rebuilt.dir, "stray"))
    assert rebuilt.counts == info.counts
    assert len(open_split(rebuilt, "train")) == 80


def test_failed_build_leaves_no_cache(tmp_path):
    config = _config(tmp_path, "data.vocab_size=20")
    with pytest.raises(ValueError, match="vocab_size 20 is too small"):
        build_dataset(config, log=None)
    assert os.listdir(tmp_path) == []


def test_hash_covers_task_trace_and_vocab_only(tmp_path):
    base = config_hash(_config(tmp_path))
    assert config_hash(_config(tmp_path, "train.lr=0.1", "data.seq_len=64")) == base
    for change in ("trace.kind=sosp", "task.num_train=201", "data.vocab_size=97", "trace.style=reference"):
        assert config_hash(_config(tmp_path, change)) != base


def test_parallel_traces_match_serial():
    problems = make_splits(130, 0, 0, num_inputs=3, max_number=20, max_target=50)["train"]
    trace = {"kind": "apr", "style": "terse"}
    serial = list(generate_traces(problems, trace, num_workers=1))
    parallel = list(generate_traces(problems, trace, num_workers=2))
    assert parallel == serial
    assert [r[0] for r in serial] == list(range(len(problems)))


def test_empty_split_is_allowed_but_not_iterable(tmp_path):
    from apr_jax.data.pipeline import make_iterator

    config = _config(tmp_path, "task.num_train=40", "task.num_validation=0")
    info = build_dataset(config, log=None)
    assert info.counts["validation"] == 0 and len(open_split(info, "validation")) == 0
    with pytest.raises(ValueError, match="split 'validation' is empty"):
        make_iterator(config, info, "validation", batch_size=2)


def test_streamed_build_holds_problems_and_tokenizer_only(tmp_path):
    stored = build_dataset(_config(tmp_path, "task.num_train=80"), log=None)
    config = _config(tmp_path, "task.num_train=80", "data.traces=streamed")
    log = io.StringIO()
    info = build_dataset(config, log=log)
    assert config_hash(config) != stored.config_hash and info.dir != stored.dir
    assert info.traces == "streamed" and info.tfds_dir == ""
    assert not os.path.exists(os.path.join(info.dir, build.TFDS_SUBDIR))
    assert info.counts == stored.counts and info.trace == config.section("trace")
    for split in info.problem_paths:
        assert load_problems(info.problem_paths[split]) == load_problems(stored.problem_paths[split])
    # The sample of generated trees trains the same tokenizer as the stored build's.
    with open(info.tokenizer_path, "rb") as a, open(stored.tokenizer_path, "rb") as b:
        assert a.read() == b.read()
    assert info.stats["traces"] == 80 and "a sample of 80" in log.getvalue()
    assert DatasetInfo.load(info.dir) == info
