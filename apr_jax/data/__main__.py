"""Data command line.

    python -m apr_jax.data problems --numbers 4 --count 1000 --seed 0 --out problems.jsonl
    python -m apr_jax.data traces --kind apr --problems problems.jsonl --out traces.jsonl
    python -m apr_jax.data build --config=configs/default.py [--config.data.vocab_size=128 ...]

Commands and flags: ``problems`` (--numbers --count --seed --out --min-number
--max-number --min-target --max-target), ``traces`` (--kind --problems --out
--style --max-children --max-depth --seed --workers, 0 workers = one per CPU),
``build`` (--config and --config.* overrides). Every user mistake is one line
on stderr and exit code 2.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

from apr_jax.cli import run_command
from apr_jax.config import ConfigError, int_flag, parse_command_line
from apr_jax.countdown.problems import generate_problems, load_problems, save_problems
from apr_jax.countdown.render import STYLES
from apr_jax.countdown.traces import KINDS

PROBLEM_FLAGS = ("numbers", "count", "seed", "out", "min-number", "max-number", "min-target",
                 "max-target")
TRACE_FLAGS = ("kind", "problems", "out", "style", "max-children", "max-depth", "seed", "workers")


def _required(flags: dict[str, str], *names: str) -> None:
    for name in names:
        if name not in flags:
            raise ConfigError(f"--{name} is required")


def _choice(flags: dict[str, str], name: str, choices: Sequence[str], default: str) -> str:
    value = flags.get(name, default)
    if value not in choices:
        raise ConfigError(f"--{name}: invalid choice: {value!r} (choose from {', '.join(choices)})")
    return value


def _problems(argv: Sequence[str]) -> None:
    """Write solvable Countdown problems as JSONL."""
    flags, _ = parse_command_line(argv, allowed=PROBLEM_FLAGS)
    _required(flags, "count", "out")
    problems = generate_problems(
        int_flag(flags, "count", 0), num_inputs=int_flag(flags, "numbers", 4),
        min_number=int_flag(flags, "min-number", 1), max_number=int_flag(flags, "max-number", 99),
        min_target=int_flag(flags, "min-target", 10), max_target=int_flag(flags, "max-target", 100),
        seed=int_flag(flags, "seed", 0))
    save_problems(flags["out"], problems)
    print(f"problems: wrote {len(problems)} to {flags['out']}", file=sys.stderr)


def _traces(argv: Sequence[str]) -> None:
    """Write one thread tree (JSON) per problem."""
    from apr_jax.data.tfds_builder import generate_traces, resolve_num_workers
    flags, _ = parse_command_line(argv, allowed=TRACE_FLAGS)
    _required(flags, "kind", "problems", "out")
    trace = {"kind": _choice(flags, "kind", KINDS, ""), "style": _choice(flags, "style", STYLES, "terse"),
             "max_children": int_flag(flags, "max-children", 4),
             "max_depth": int_flag(flags, "max-depth", 1), "seed": int_flag(flags, "seed", 0)}
    workers = int_flag(flags, "workers", 1)  # 0: one process per CPU
    problems = load_problems(flags["problems"])
    start = time.perf_counter()
    written, failed, skipped = 0, 0, 0
    with open(flags["out"], "w", encoding="utf-8") as out:
        for index, tree_json, solved, error in generate_traces(
                problems, trace, num_workers=resolve_num_workers(workers),
                check=True, progress="traces"):
            if tree_json is None:
                p = problems[index]
                print(f"{flags['problems']}: skipped problem {index + 1} "
                      f"({' '.join(map(str, p.numbers))} -> {p.target}): {error}", file=sys.stderr)
                skipped += 1
                continue
            out.write(tree_json + "\n")
            written += 1
            failed += int(not solved)
    rate = len(problems) / max(time.perf_counter() - start, 1e-9)
    print(f"traces: wrote {written} of {len(problems)} to {flags['out']}; skipped {skipped}; "
          f"search failed {failed}; {rate:.0f} problems/s", file=sys.stderr)


def _build(argv: Sequence[str]) -> None:
    """Build or reuse the dataset cache of a config; print its directory."""
    from apr_jax.data.build import build_dataset
    from apr_jax.run_config import load_run_config
    flags, overrides = parse_command_line(argv, allowed=("config",))
    info = build_dataset(load_run_config(flags.get("config"), overrides))
    print(info.dir)


COMMANDS = {"problems": _problems, "traces": _traces, "build": _build}


def _run(argv: Sequence[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        got = f", got {argv[0]!r}" if argv else ""
        raise ConfigError(f"give a command: {', '.join(COMMANDS)}{got}")
    try:
        COMMANDS[argv[0]](argv[1:])
    except OSError as e:  # missing input file, unwritable output, ...
        name = f" {e.filename}" if e.filename else ""
        raise ConfigError(f"{e.strerror or e}:{name}") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(lambda: _run(argv), usage=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
