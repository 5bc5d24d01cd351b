"""Wall time of a run's held-out evaluation, the first call (tracing and
compiling included) apart from the calls after it (decoding only).

Calls ``scoring.evaluate_problems`` ``--repeat`` times in one process on the
first ``--num`` problems of ``--split`` and prints each call's wall time and
accuracy. It uses only functions every version of the evaluation has had, so
it also times an older checkout of the engine on the same run:

    python benchmarks/evaluation_wall.py --workdir runs/default --num 100
    git worktree add /tmp/before 851364c
    PYTHONPATH=/tmp/before python benchmarks/evaluation_wall.py --workdir runs/default --num 100
"""

from __future__ import annotations

import argparse
import time

from apr_jax import evaluate
from apr_jax.evaluation import loading, scoring


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a run (its newest checkpoint) or one checkpoint")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    loaded = loading.load_for_inference(args.workdir)
    problems = loading.problems_for({"split": args.split}, loaded.config, args.num)
    print(f"{evaluate.__file__}: {len(problems)} {args.split} problems of {loaded.source}")
    for call in range(args.repeat):
        start = time.perf_counter()
        _, summary = scoring.evaluate_problems(loaded.model, loaded.tokenizer, loaded.config, problems)
        seconds = time.perf_counter() - start
        print(
            f"call {call + 1}: {seconds:.1f} s, accuracy {summary['accuracy']:.1%}, "
            f"{summary['mean_total_tokens']:.0f} tokens per problem",
            flush=True,
        )


if __name__ == "__main__":
    main()
