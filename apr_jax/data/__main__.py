"""Data command line.

    python -m apr_jax.data problems --numbers 4 --count 1000 --seed 0 --out problems.jsonl
    python -m apr_jax.data traces --kind apr --problems problems.jsonl --out traces.jsonl
    python -m apr_jax.data build --config=configs/default.py [--config.data.vocab_size=128 ...]

Each command's flags are in its ``Command`` below (``--help`` prints them:
``python -m apr_jax.data traces --help``). Every user mistake is one line on
stderr and exit code 2.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

from apr_jax.cli import Command, CommandLine, Flag, int_flag, read_command_line, run_command
from apr_jax.config.checks import ConfigError
from apr_jax.config.trace import KINDS, STYLES
from apr_jax.tasks.countdown.problems import generate_problems, load_problems, save_problems

PROBLEMS = Command(
    "python -m apr_jax.data problems",
    "Write solvable Countdown problems as JSONL.",
    flags=(
        Flag("numbers", "input numbers per problem (default 4)", value="N"),
        Flag("count", "problems to write", value="N", required=True),
        Flag("seed", "random seed (default 0)", value="N"),
        Flag("out", "the JSONL file to write", value="FILE", required=True),
        Flag("min-number", "smallest input number (default 1)", value="N"),
        Flag("max-number", "largest input number (default 99)", value="N"),
        Flag("min-target", "smallest target (default 10)", value="N"),
        Flag("max-target", "largest target (default 100)", value="N"),
    ),
    examples=("python -m apr_jax.data problems --numbers 4 --count 1000 --seed 0 --out problems.jsonl",),
)
TRACES = Command(
    "python -m apr_jax.data traces",
    "Write one search-trace thread tree (JSON) per problem.",
    flags=(
        Flag("kind", f"trace kind: {' or '.join(KINDS)}", value="KIND", required=True),
        Flag("problems", "the problems JSONL (python -m apr_jax.data problems)", value="FILE", required=True),
        Flag("out", "the JSONL file to write", value="FILE", required=True),
        Flag("style", f"how traces are written: {' or '.join(STYLES)} (default terse)", value="STYLE"),
        Flag("max-children", "children per spawn, at most (default 4)", value="N"),
        Flag("max-depth", "spawn depth, at most (default 1)", value="N"),
        Flag("seed", "random seed (default 0)", value="N"),
        Flag("workers", "worker processes (default 1; 0 = one per CPU)", value="N"),
    ),
    examples=("python -m apr_jax.data traces --kind apr --problems problems.jsonl --out traces.jsonl",),
)
BUILD = Command(
    "python -m apr_jax.data build",
    "Build or reuse the dataset cache of a config; print its directory.",
    flags=(Flag("config", "the config file (default configs/default.py)", value="FILE"),),
    overrides="set one config key, e.g. --config.data.vocab_size=128",
    examples=("python -m apr_jax.data build --config=configs/default.py --config.data.vocab_size=128",),
)
COMMAND = Command(
    "python -m apr_jax.data",
    "Countdown problems, search traces and dataset caches.",
    subcommands=(PROBLEMS, TRACES, BUILD),
    examples=PROBLEMS.examples + TRACES.examples + BUILD.examples,
)


def _choice(flags: dict[str, str], name: str, choices: Sequence[str], default: str) -> str:
    value = flags.get(name, default)
    if value not in choices:
        raise ConfigError(f"--{name}: invalid choice: {value!r} (choose from {', '.join(choices)})")
    return value


def _problems(line: CommandLine) -> None:
    """Write solvable Countdown problems as JSONL."""
    flags = line.flags
    problems = generate_problems(
        int_flag(flags, "count", 0),
        num_inputs=int_flag(flags, "numbers", 4),
        min_number=int_flag(flags, "min-number", 1),
        max_number=int_flag(flags, "max-number", 99),
        min_target=int_flag(flags, "min-target", 10),
        max_target=int_flag(flags, "max-target", 100),
        seed=int_flag(flags, "seed", 0),
    )
    save_problems(flags["out"], problems)
    print(f"problems: wrote {len(problems)} to {flags['out']}", file=sys.stderr)


def _traces(line: CommandLine) -> None:
    """Write one thread tree (JSON) per problem."""
    from apr_jax.data.tfds_builder import resolve_num_workers
    from apr_jax.tasks.countdown.tfds_builder import generate_traces

    flags = line.flags
    trace = {
        "kind": _choice(flags, "kind", KINDS, ""),
        "style": _choice(flags, "style", STYLES, "terse"),
        "max_children": int_flag(flags, "max-children", 4),
        "max_depth": int_flag(flags, "max-depth", 1),
        "seed": int_flag(flags, "seed", 0),
    }
    workers = int_flag(flags, "workers", 1)  # 0: one process per CPU
    problems = load_problems(flags["problems"])
    start = time.perf_counter()
    written, failed, skipped = 0, 0, 0
    with open(flags["out"], "w", encoding="utf-8") as out:
        for index, tree_json, solved, error in generate_traces(
            problems, trace, num_workers=resolve_num_workers(workers), check=True, progress="traces"
        ):
            if tree_json is None:
                p = problems[index]
                print(
                    f"{flags['problems']}: skipped problem {index + 1} "
                    f"({' '.join(map(str, p.numbers))} -> {p.target}): {error}",
                    file=sys.stderr,
                )
                skipped += 1
                continue
            out.write(tree_json + "\n")
            written += 1
            failed += int(not solved)
    rate = len(problems) / max(time.perf_counter() - start, 1e-9)
    print(
        f"traces: wrote {written} of {len(problems)} to {flags['out']}; skipped {skipped}; "
        f"search failed {failed}; {rate:.0f} problems/s",
        file=sys.stderr,
    )


def _build(line: CommandLine) -> None:
    """Build or reuse the dataset cache of a config; print its directory."""
    from apr_jax.config.loading import load_run_config
    from apr_jax.data.build import build_dataset

    info = build_dataset(load_run_config(line.flags.get("config"), line.overrides))
    print(info.dir)


COMMANDS = {"problems": _problems, "traces": _traces, "build": _build}


def _run(argv: Sequence[str]) -> None:
    line = read_command_line(argv, COMMAND, error=ConfigError)
    try:
        COMMANDS[line.command.name](line)
    except OSError as e:  # missing input file, unwritable output, ...
        name = f" {e.filename}" if e.filename else ""
        raise ConfigError(f"{e.strerror or e}:{name}") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(lambda: _run(argv), usage=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
