"""Data command line.

    python -m apr_jax.data problems --numbers 4 --count 1000 --seed 0 --out problems.jsonl
    python -m apr_jax.data traces --kind apr --problems problems.jsonl --out traces.jsonl
    python -m apr_jax.data build --config=configs/default.py [--config.data.vocab_size=128 ...]

Every user mistake is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from apr_jax.countdown.problems import generate_problems, load_problems, save_problems
from apr_jax.countdown.traces import KINDS
from apr_jax.countdown.render import STYLES

USAGE_ERROR = 2


class UsageError(Exception):
    """A mistake by the user, reported in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the whole usage first
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> _Parser:
    parser = _Parser(prog="python -m apr_jax.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = commands.add_parser("problems", help="write solvable Countdown problems as JSONL")
    p.add_argument("--numbers", type=int, default=4, help="inputs per problem")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output JSONL path")
    p.add_argument("--min-number", type=int, default=1)
    p.add_argument("--max-number", type=int, default=99)
    p.add_argument("--min-target", type=int, default=10)
    p.add_argument("--max-target", type=int, default=100)

    t = commands.add_parser("traces", help="write one thread tree (JSON) per problem")
    t.add_argument("--kind", choices=KINDS, required=True)
    t.add_argument("--problems", required=True, help="input problems JSONL")
    t.add_argument("--out", required=True, help="output JSONL path")
    t.add_argument("--style", choices=STYLES, default="terse")
    t.add_argument("--max-children", type=int, default=4)
    t.add_argument("--max-depth", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=1, help="processes (0 = one per CPU)")

    b = commands.add_parser("build", help="build or reuse the dataset cache of a config",
                            prefix_chars="\x00")  # flags are parsed by apr_jax.config
    b.add_argument("flags", nargs="*")
    return parser


def _problems(args: argparse.Namespace) -> None:
    problems = generate_problems(
        args.count, num_inputs=args.numbers, min_number=args.min_number,
        max_number=args.max_number, min_target=args.min_target,
        max_target=args.max_target, seed=args.seed)
    save_problems(args.out, problems)
    print(f"problems: wrote {len(problems)} to {args.out}", file=sys.stderr)


def _traces(args: argparse.Namespace) -> None:
    from apr_jax.data.tfds_builder import generate_traces, resolve_num_workers
    problems = load_problems(args.problems)
    trace = {"kind": args.kind, "style": args.style, "max_children": args.max_children,
             "max_depth": args.max_depth, "seed": args.seed}
    start = time.perf_counter()
    written, failed, skipped = 0, 0, 0
    with open(args.out, "w", encoding="utf-8") as out:
        for index, tree_json, solved, error in generate_traces(
                problems, trace, num_workers=resolve_num_workers(args.workers),
                check=True, progress="traces"):
            if tree_json is None:
                p = problems[index]
                print(f"{args.problems}: skipped problem {index + 1} "
                      f"({' '.join(map(str, p.numbers))} -> {p.target}): {error}", file=sys.stderr)
                skipped += 1
                continue
            out.write(tree_json + "\n")
            written += 1
            failed += int(not solved)
    rate = len(problems) / max(time.perf_counter() - start, 1e-9)
    print(f"traces: wrote {written} of {len(problems)} to {args.out}; skipped {skipped}; "
          f"search failed {failed}; {rate:.0f} problems/s", file=sys.stderr)


def _build(args: argparse.Namespace) -> None:
    from apr_jax.config import load_config, parse_command_line
    from apr_jax.data.build import build_dataset
    flags, overrides = parse_command_line(args.flags, allowed=("config",))
    config = load_config(flags.get("config"), overrides)
    info = build_dataset(config)
    print(info.dir)


def main(argv: Sequence[str] | None = None) -> int:
    from apr_jax.config import ConfigError
    try:
        args = _parser().parse_args(argv)
        {"problems": _problems, "traces": _traces, "build": _build}[args.command](args)
    except (UsageError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as e:  # missing input file, unwritable output, ...
        name = f" {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}:{name}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
