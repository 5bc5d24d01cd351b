"""Data-pipeline throughput: trace generation (per core and multi-process).

    python -m benchmarks.data_throughput [--problems 4000] [--processes 2] [--build-problems 8000]
    python -m benchmarks.data_throughput --problems 0 --build-config configs/countdown4_apr_h200.py \
        --build-problems 0 --pipeline-workers 0 1 2
        # that config's whole dataset (202k problems, streamed traces), phase by phase, and its
        # pipeline with reader threads only and with 1 and 2 worker processes

Each measurement is one function returning a dict, so more stages can be
added as further functions called from ``main``. ``measure_dataset_build``
times the cached dataset build and the grain pipeline.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import Any, Sequence

from apr_jax.config.trace import TraceConfig
from apr_jax.tasks.countdown.problems import Problem, generate_problems
from apr_jax.tasks.countdown.traces import make_trace

COUNTDOWN = {  # name: (num_inputs, max_number, max_target) with numbers from 1, targets from 10
    "countdown4": (4, 99, 100),
    "countdown3": (3, 99, 100),
}


def benchmark_problems(name: str, count: int, seed: int = 0) -> list[Problem]:
    num_inputs, max_number, max_target = COUNTDOWN[name]
    return generate_problems(count, num_inputs=num_inputs, max_number=max_number, max_target=max_target, seed=seed)


def _generate(args: tuple[list[Problem], TraceConfig]) -> tuple[int, int, int]:
    """(traces, total characters, solved) for one chunk of problems."""
    problems, cfg = args
    chars = solved = 0
    for p in problems:
        tree = make_trace(p, cfg)
        chars += sum(len(t.text) for t in tree.threads)
        solved += bool(tree.solution)
    return len(problems), chars, solved


def measure_trace_generation(problems: list[Problem], cfg: TraceConfig) -> dict[str, float]:
    """Traces per wall second and per CPU second (fair on a busy machine) on one
    core, mean characters per trace (all threads) and the solve rate."""
    _generate((problems[:50], cfg))  # warm-up
    start, cpu_start = time.perf_counter(), time.process_time()
    n, chars, solved = _generate((problems, cfg))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "traces_per_s": n / seconds,
        "traces_per_cpu_s": n / cpu_seconds,
        "chars_per_trace": chars / n,
        "solved": solved / n,
    }


def measure_parallel_generation(problems: list[Problem], cfg: TraceConfig, processes: int) -> dict[str, float]:
    """Traces per second with a pool of ``processes`` workers (pool start-up excluded)."""
    chunks = [(problems[i :: processes * 8], cfg) for i in range(processes * 8)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_generate, [(problems[:10], cfg)] * processes)  # start workers
        start = time.perf_counter()
        n = sum(r[0] for r in pool.map(_generate, chunks))
        seconds = time.perf_counter() - start
    return {"traces_per_s": n / seconds, "processes": processes}


def measure_pipeline(config, info, workers: int, num_batches: int = 20) -> dict[str, float]:
    """The grain pipeline's packed training batches with ``workers`` worker
    processes (0: reader threads in this process): seconds to the first batch
    (worker start-up included), then batches and row tokens per second."""
    from apr_jax.data.pipeline import make_iterator

    batch_size = config.train.batch_size
    iterator = make_iterator(config, info, "train", batch_size=batch_size, num_workers=workers)
    start = time.perf_counter()
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    seconds = time.perf_counter() - start
    iterator.close()
    filled = iterator.stats["tokens"] / max(iterator.stats["rows"], 1) / config.data.seq_len
    return {
        "workers": workers,
        "first_batch_s": first,
        "batches_per_s": num_batches / seconds,
        "tokens_per_s": num_batches * batch_size * config.data.seq_len / seconds,
        "fill": filled,
    }


def measure_dataset_build(
    num_train: int,
    num_workers: int,
    config_path: str | None = None,
    overrides: Sequence[str] = (),
    pipeline_workers: Sequence[int] = (0,),
) -> dict[str, Any]:
    """Cold build (problems, then traces written as TFDS records or, streamed,
    a sample for the tokenizer; tokenizer) and cached rebuild of a config (the
    default one unless given) with ``num_train`` problems (0: the config's own
    count), plus the grain pipeline on the result per worker count."""
    import tempfile

    from apr_jax.config.loading import load_run_config
    from apr_jax.data.build import build_dataset

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"data.dir={tmp}", f"data.num_workers={num_workers}", *overrides]
        if num_train:
            overrides.append(f"task.num_train={num_train}")
        config = load_run_config(config_path, overrides)
        start = time.perf_counter()
        info = build_dataset(config, log=None)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        build_dataset(config, log=None)
        cached = time.perf_counter() - start
        pipelines = [measure_pipeline(config, info, w) for w in pipeline_workers]
    phases = {
        f"{k}_s": info.stats[f"{k}_seconds"]
        for k in ("problem", "trace", "tokenizer", "problem_main_cpu", "trace_main_cpu")
    }
    return {
        "build_s": cold,
        "cached_s": cached,
        **phases,
        "traces_mode": info.traces,
        "problems": sum(info.counts.values()),
        "traces": info.stats["traces"],
        "pipelines": pipelines,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=4000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--build-problems",
        type=int,
        default=8000,
        help="training problems for the dataset-build timing (0: the config's own count)",
    )
    parser.add_argument(
        "--build-config", default=None, help="config whose dataset is built (default: configs/default.py)"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="a config override for the build, e.g. data.traces=streamed (repeatable)",
    )
    parser.add_argument(
        "--pipeline-workers",
        type=int,
        nargs="+",
        default=[0],
        help="input-pipeline worker processes to measure (0: reader threads)",
    )
    parser.add_argument("--skip-build", action="store_true", help="no dataset-build timing")
    args = parser.parse_args(argv)
    for name in COUNTDOWN if args.problems else ():
        problems = benchmark_problems(name, args.problems)
        for kind in ("apr", "sosp"):
            cfg = TraceConfig(kind=kind)
            one = measure_trace_generation(problems, cfg)
            print(
                f"{name} {kind:4s} 1 core: {one['traces_per_s']:8.0f} traces/s "
                f"({one['traces_per_cpu_s']:.0f} per CPU-s)  "
                f"{one['chars_per_trace']:6.0f} chars/trace  solved {one['solved']:.1%}"
            )
            if name == "countdown4":
                many = measure_parallel_generation(problems, cfg, args.processes)
                print(f"{name} {kind:4s} {args.processes} procs: {many['traces_per_s']:8.0f} traces/s")
    if not args.skip_build:
        b = measure_dataset_build(
            args.build_problems, args.processes, args.build_config, args.override, args.pipeline_workers
        )
        traces = "traces" if b["traces_mode"] == "stored" else f"a sample of {b['traces']} traces, the rest streamed"
        print(
            f"dataset build ({args.build_config or 'default config'}, {b['problems']} problems, "
            f"{traces}, {args.processes} workers): {b['build_s']:.1f} s cold (problems "
            f"{b['problem_s']:.1f} s, traces {b['trace_s']:.1f} s, tokenizer and statistics "
            f"{b['tokenizer_s']:.1f} s), {b['cached_s']:.2f} s cached"
        )
        serial = b["problem_main_cpu_s"] + b["trace_main_cpu_s"] + b["tokenizer_s"]
        print(
            f"main process alone: {b['problem_main_cpu_s']:.1f} CPU-s drawing problems, "
            f"{b['trace_main_cpu_s']:.1f} CPU-s in the trace phase, {b['tokenizer_s']:.1f} s "
            f"tokenizer and statistics: {serial:.1f} s that no number of workers removes"
        )
        for p in b["pipelines"]:
            where = f"{p['workers']} worker processes" if p["workers"] else "reader threads only"
            print(
                f"grain pipeline, {where}: first batch after {p['first_batch_s']:.1f} s, then "
                f"{p['batches_per_s']:.1f} batches/s, {p['tokens_per_s']:.0f} row tokens/s, "
                f"rows {p['fill']:.1%} filled by packing"
            )


if __name__ == "__main__":
    main()
