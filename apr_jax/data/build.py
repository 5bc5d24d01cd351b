"""Build (or reuse) the cached dataset for a config.

    <config.data.dir>/<hash of task + trace + data.vocab_size (+ data.traces)>/
        problems_{train,validation,test}.jsonl
        tokenizer.model
        tfds/<builder>/<version>/...array_record...   (the task's builder; stored traces only)
        info.json          <- written last: the completion marker

With ``data.traces="stored"`` every split's trees are generated here and
written as TFDS records. With ``"streamed"`` (a task that generates its
trees, such as Countdown) only the problems and
the tokenizer are built, from a sample of generated trees, and the input
pipeline generates each tree when it reads it: the build's cost is drawing
the problems, plus a fixed-size sample of traces.

A directory without ``info.json`` is a half-built cache: it is deleted and
rebuilt, never used. The build happens in a temporary sibling directory that
is renamed into place when complete, so readers never see a partial cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import time
from typing import Any, TextIO

import numpy as np

from apr_jax.config.sections import RunConfig
from apr_jax.data.sources import StoredTrees
from apr_jax.data.tfds_builder import SPLITS, resolve_num_workers
from apr_jax.data.tokenizer import Tokenizer, load_tokenizer
from apr_jax.runtime.jsonl import read_jsonl, write_jsonl
from apr_jax.tasks.base import DEFAULT_TASK
from apr_jax.tasks.registry import get_task, task_class

FORMAT_VERSION = 5  # bump when the cache layout or trace encoding changes (5: trace.probe_nodes)
MARKER = "info.json"
TOKENIZER_FILE = "tokenizer.model"
TFDS_SUBDIR = "tfds"
TOKENIZER_SAMPLE_TREES = 10_000  # training trees the tokenizer and stats look at


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Where a built dataset lives and what it holds (all paths absolute)."""

    dir: str
    tfds_dir: str  # "" when the traces are streamed
    tokenizer_path: str
    problem_paths: dict[str, str]
    counts: dict[str, int]
    stats: dict[str, Any]
    config_hash: str
    task: str = DEFAULT_TASK  # the task whose problems the problem files hold
    traces: str = "stored"  # or "streamed": generated from the problems when read
    trace: dict[str, Any] = dataclasses.field(default_factory=dict)  # what streamed traces use

    def to_json(self) -> str:
        """JSON with paths relative to ``dir``, so a cache can be moved."""
        d = dataclasses.asdict(self)
        d["tfds_dir"] = os.path.relpath(self.tfds_dir, self.dir) if self.tfds_dir else ""
        d["tokenizer_path"] = os.path.relpath(self.tokenizer_path, self.dir)
        d["problem_paths"] = {k: os.path.relpath(v, self.dir) for k, v in self.problem_paths.items()}
        del d["dir"]
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def load(cls, directory: str) -> "DatasetInfo":
        """Reads ``directory/info.json``; ValueError if it is not a complete cache."""
        directory = os.path.abspath(directory)
        path = os.path.join(directory, MARKER)
        if not os.path.isfile(path):
            raise ValueError(f"{directory} is not a complete dataset (no {MARKER})")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
            return cls(
                dir=directory,
                tfds_dir=os.path.join(directory, d["tfds_dir"]) if d["tfds_dir"] else "",
                tokenizer_path=os.path.join(directory, d["tokenizer_path"]),
                problem_paths={k: os.path.join(directory, v) for k, v in d["problem_paths"].items()},
                counts={k: int(v) for k, v in d["counts"].items()},
                stats=dict(d["stats"]),
                config_hash=d["config_hash"],
                task=d.get("task", DEFAULT_TASK),
                traces=d.get("traces", "stored"),
                trace=dict(d.get("trace", {})),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a valid dataset info file ({e})") from None


def config_hash(config: RunConfig) -> str:
    """12 hex digits identifying ``task`` + ``trace`` + ``data.vocab_size``
    (+ the content of ``data.tokenizer`` when one is given, and of a task's
    input files; + ``data.traces`` when streamed)."""
    task = config.task.as_dict()
    if task["name"] == DEFAULT_TASK:  # caches built before tasks had names keep their hash
        del task["name"]
    key = {
        "format": FORMAT_VERSION,
        "task": task,
        "trace": config.section("trace"),
        "vocab_size": config.data.vocab_size,
        **get_task(config).cache_key(),
    }
    if config.data.traces != "stored":  # stored caches keep the hash they had before
        key["traces"] = config.data.traces
    given = pretrained_tokenizer_path(config)
    if given:
        with open(given, "rb") as f:
            key["tokenizer_sha256"] = hashlib.sha256(f.read()).hexdigest()
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def pretrained_tokenizer_path(config: RunConfig) -> str | None:
    """``config.data.tokenizer`` (a converted model's tokenizer file), checked; None when unset."""
    path = config.data.tokenizer
    if not path:
        return None
    if not os.path.isfile(path):
        raise ValueError(
            f"config.data.tokenizer={path!r} does not exist (python -m apr_jax.convert writes OUT/tokenizer.apr.json)"
        )
    return os.path.abspath(path)


def cache_dir(config: RunConfig) -> str:
    """Absolute cache directory of ``config`` (``data.dir`` is relative to cwd)."""
    return os.path.join(os.path.abspath(config.data.dir), config_hash(config))


def open_split(info: DatasetInfo, split: str) -> Any:
    """Random-access source of a split's ``ThreadTree``s: read back from the
    stored records, or generated from the split's problems when streamed."""
    if split not in info.counts:
        raise ValueError(f"split {split!r} is not one of {sorted(info.counts)}")
    if info.traces == "streamed":
        return task_class(info.task).streamed_trees(make_problem_source(info, split), info.trace)
    if info.counts[split] == 0:
        return []  # TFDS does not write empty splits
    import tensorflow_datasets as tfds

    try:
        records = tfds.builder_from_directory(info.tfds_dir).as_data_source(split)
    except Exception as e:  # missing or damaged files of a once complete cache
        raise ValueError(
            f"dataset {info.dir} is damaged: cannot open split {split!r} "
            f"({type(e).__name__}); delete that directory to rebuild it"
        ) from None
    return StoredTrees(records)


def make_problem_source(info: DatasetInfo, split: str) -> list[Any]:
    """The problems of a split, in generation order (for evaluation), as the
    dataset's task's problem type."""
    if split not in info.problem_paths:
        raise ValueError(f"split {split!r} is not one of {sorted(info.problem_paths)}")
    return read_jsonl(info.problem_paths[split], task_class(info.task).problem_type.from_dict)


def build_dataset(config: RunConfig, *, force: bool = False, log: TextIO | None | str = "stdout") -> DatasetInfo:
    """Builds the dataset of ``config`` unless a complete cache exists.

    Progress and the summary go to ``log`` (default: the current stdout; None
    for silence).
    """
    if log == "stdout":
        log = sys.stdout
    final_dir = cache_dir(config)
    if not force and os.path.isfile(os.path.join(final_dir, MARKER)):
        info = DatasetInfo.load(final_dir)
        _say(log, f"dataset: reusing {final_dir}")
        return info
    if os.path.exists(final_dir):
        _say(log, f"dataset: removing incomplete or stale cache {final_dir}")
        shutil.rmtree(final_dir)
    work_dir = f"{final_dir}.building-{os.getpid()}"
    if os.path.exists(work_dir):
        shutil.rmtree(work_dir)
    os.makedirs(work_dir)
    try:
        stats = _build_into(config, work_dir, log)
        try:
            os.rename(work_dir, final_dir)
        except OSError:  # another process finished the same cache first
            if not os.path.isfile(os.path.join(final_dir, MARKER)):
                raise
            shutil.rmtree(work_dir)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    info = DatasetInfo.load(final_dir)
    _print_summary(log, info, stats, config.data.seq_len)
    return info


def _build_into(config: RunConfig, work_dir: str, log: TextIO | None) -> dict[str, Any]:
    task = get_task(config)
    streamed = config.data.traces == "streamed"
    if streamed and not task.streams_traces:
        raise ValueError(
            f"config.data.traces='streamed' generates each trace when it is read, but "
            f"task {task.name!r} reads its trees from files: set "
            f"config.data.traces=stored"
        )
    num_workers = resolve_num_workers(config.data.num_workers)
    start, cpu_start = time.perf_counter(), time.process_time()
    if streamed:
        builder, splits = None, task.splits(num_workers)
    else:
        builder = task.dataset_builder(
            data_dir=os.path.join(work_dir, TFDS_SUBDIR), num_workers=num_workers, show_progress=log is not None
        )
        splits = builder.problems()
    problem_paths = {}
    for split, problems in splits.items():
        problem_paths[split] = os.path.join(work_dir, f"problems_{split}.jsonl")
        write_jsonl(problem_paths[split], problems)
    counts = {split: len(splits[split]) for split in SPLITS}
    problem_seconds = time.perf_counter() - start
    problem_cpu = time.process_time() - cpu_start

    # The tokenizer and the length statistics use evenly spaced training trees.
    start, cpu_start = time.perf_counter(), time.process_time()
    step = max(1, counts["train"] // TOKENIZER_SAMPLE_TREES)
    if streamed:  # generate the sample; the pipeline generates the rest when it reads them
        sample = splits["train"][::step]
        trees, num_failed = task.generate_trees(sample, num_workers)
        failed = {"train": num_failed}
        tfds_dir = ""
    else:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()
        with contextlib.redirect_stdout(io.StringIO()):  # TFDS's own chatter
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        failed = {split: int(builder.stats.get(split, {}).get("failed", 0)) for split in SPLITS}
        tfds_dir = builder.data_dir
    trace_seconds = time.perf_counter() - start
    trace_cpu = time.process_time() - cpu_start
    start = time.perf_counter()
    if not streamed:
        source = StoredTrees(builder.as_data_source("train"))
        trees = [source[i] for i in range(0, len(source), step)]
    texts = [thread.text for tree in trees for thread in tree.threads]
    given = pretrained_tokenizer_path(config)
    if given:  # a pretrained model's tokenizer: copied, not trained
        tokenizer_path = os.path.join(work_dir, os.path.basename(given))
        shutil.copyfile(given, tokenizer_path)
        tokenizer = load_tokenizer(tokenizer_path)
    else:
        tokenizer_path = os.path.join(work_dir, TOKENIZER_FILE)
        tokenizer = Tokenizer.train(texts, config.data.vocab_size, tokenizer_path)
    lengths = np.asarray([len(s.tokens) for tree in trees for s in tree.to_sequences(tokenizer)])

    stats = {
        "traces": len(trees) if streamed else sum(counts.values()),  # generated here
        "problem_seconds": problem_seconds,
        "trace_seconds": trace_seconds,
        "tokenizer_seconds": time.perf_counter() - start,
        # This process's own CPU time per phase (the workers' excluded): the
        # serial part that more workers cannot shorten.
        "problem_main_cpu_seconds": problem_cpu,
        "trace_main_cpu_seconds": trace_cpu,
        "workers": num_workers,
        "failed": failed,  # streamed: in the sampled training trees
        "tokenizer_vocab_size": tokenizer.vocab_size,
        "byte_fallback": tokenizer.byte_fallback,
        "sampled_trees": len(trees),
        "sampled_sequences": int(lengths.size),
        "threads_per_tree": float(lengths.size / max(len(trees), 1)),
        "mean_tokens_per_sequence": float(lengths.mean()) if lengths.size else 0.0,
        "max_tokens_per_sequence": int(lengths.max()) if lengths.size else 0,
        "tokens_per_sequence_percentiles": {
            str(q): float(np.percentile(lengths, q)) if lengths.size else 0.0 for q in (50, 90, 99)
        },
    }
    info = DatasetInfo(
        dir=work_dir,
        tfds_dir=tfds_dir,
        tokenizer_path=tokenizer_path,
        problem_paths=problem_paths,
        counts=counts,
        stats=stats,
        config_hash=config_hash(config),
        task=task.name,
        traces=config.data.traces,
        trace=config.section("trace") if streamed else {},
    )
    with open(os.path.join(work_dir, MARKER + ".tmp"), "w", encoding="utf-8") as f:
        f.write(info.to_json())
    os.replace(os.path.join(work_dir, MARKER + ".tmp"), os.path.join(work_dir, MARKER))
    stats["over_seq_len"] = int((lengths > config.data.seq_len).sum())
    return stats


def _say(log: TextIO | None, line: str) -> None:
    if log is not None:
        print(line, file=log, flush=True)


def _print_summary(log: TextIO | None, info: DatasetInfo, stats: dict[str, Any], seq_len: int) -> None:
    if log is None:
        return
    counts = ", ".join(f"{k} {v}" for k, v in info.counts.items())
    failed = ", ".join(f"{k} {v}" for k, v in stats["failed"].items())
    rate = stats["traces"] / max(stats["trace_seconds"], 1e-9)
    seconds = stats["problem_seconds"] + stats["trace_seconds"] + stats["tokenizer_seconds"]
    _say(
        log,
        f"dataset: built {info.dir} in {seconds:.1f} s with {stats['workers']} workers "
        f"(problems {stats['problem_seconds']:.1f} s, traces {stats['trace_seconds']:.1f} s, "
        f"tokenizer and statistics {stats['tokenizer_seconds']:.1f} s)",
    )
    if info.traces == "streamed":
        _say(
            log,
            f"  problems: {counts}; traces/s {rate:.0f} for a sample of {stats['traces']} "
            f"(the input pipeline generates every trace as it reads it); "
            f"search failed in the sample: {failed}",
        )
    else:
        _say(log, f"  problems: {counts}; traces/s {rate:.0f}; search failed: {failed}")
    _say(
        log,
        f"  tokenizer: vocab {stats['tokenizer_vocab_size']}"
        f"{' (byte fallback)' if stats['byte_fallback'] else ''}; "
        f"{stats['threads_per_tree']:.2f} sequences per tree; tokens per sequence: mean "
        f"{stats['mean_tokens_per_sequence']:.1f}, max {stats['max_tokens_per_sequence']}, "
        f"{stats['over_seq_len']}/{stats['sampled_sequences']} sampled longer than "
        f"seq_len {seq_len}",
    )


def build_dataset_once(config: RunConfig) -> DatasetInfo:
    """Process 0 builds (or finds) the cached dataset; the others wait for it,
    so processes sharing a filesystem never build the same cache at once."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_index() == 0:
        info = build_dataset(config, log=sys.stdout)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("apr_jax: dataset built")
    if jax.process_index() != 0:
        info = build_dataset(config, log=None)
    return info
