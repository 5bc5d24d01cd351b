"""Mean tokens per trace: our sentencepiece tokenizer vs UTF-8 bytes; with
``--contexts``, how often traces outgrow a per-thread context instead.

    python -m benchmarks.tokens_per_trace [--train 600] [--test 200] [--vocab-size 96]
    python -m benchmarks.tokens_per_trace --contexts 128,192,256,384 [--max-nodes 16]
    python -m benchmarks.tokens_per_trace --critical-path [--max-nodes 8]

    python -m benchmarks.tokens_per_trace --width [--probe-nodes 5,16,3] [--sequential-share 0.25] [--test 1000]
    python -m benchmarks.tokens_per_trace --width --beam-size 8 --sequential-share 0.34 --viable-children 2

(the second line: the rule of ``configs/adaptive.py``). ``--width`` compares
fixed-width APR traces (the root spawns one child per kept first operation,
in rounds of ``--max-children``) with traces whose width follows the search
(``trace.probe_nodes``: the root first searches its best branch itself and
spawns only if that misses) or the problem's reachable share
(``trace.sequential_share``: an easy problem is searched by the root alone, a
harder one forks wider), on Countdown-3 and -4 with numbers 1-20 and
targets 10-50: written tokens per trace (all threads, the root's, the
critical path's), the longest root sequence (prompt and joins included: what
must fit ``data.seq_len``), the share solved, the Spearman correlation of
children with difficulty, the share of traces that spawn per difficulty
quartile (easiest first, as the evaluation splits them) and the share of
traces per root child count.

``--critical-path`` prints, per setting and child count n, how a conditioned
APR trace asked for ``c<n>`` splits its written tokens: the root's, a child's,
and the critical path's share of all of them (the sequential/total ratio the
comparison reports for a model that writes its traces).

The ``--contexts`` table has one row per candidate task setting (``SETTINGS``):
the share of SoS+ traces longer than each context, and the mean, 95th
percentile and longest APR thread (the longest sequence of one thread, join
blocks included), with the default config's search and tokenizer size.

A trace's tokens are those of all its thread sequences as ``to_sequences``
builds them (BOS, segments, EOS), so join blocks count in the parent. The
byte-level figure frames each thread the same way (one id per UTF-8 byte).
The tokenizer is trained per row on that row's training traces and measured
on held-out ones.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from apr_jax.config.trace import TraceConfig
from apr_jax.data.tokenizer import Tokenizer
from apr_jax.decode.metrics import sequential_tokens, tree_spawns
from apr_jax.evaluation.width_stats import quartile_rates, spearman
from apr_jax.tasks.countdown.problems import make_splits
from apr_jax.tasks.countdown.solver import reachable_share
from apr_jax.tasks.countdown.traces import apr_trace, make_trace

TASKS = {  # name: make_splits ranges
    "countdown3": dict(num_inputs=3, max_number=20, min_target=10, max_target=50),
    "countdown4": dict(num_inputs=4, max_number=99, min_target=10, max_target=100),
}
SETTINGS = {  # candidate regimes where a sequential trace outgrows the context
    "c3 1-20 t10-50": dict(num_inputs=3, max_number=20, min_target=10, max_target=50),
    "c4 1-10 t10-30": dict(num_inputs=4, max_number=10, min_target=10, max_target=30),
    "c4 1-20 t10-30": dict(num_inputs=4, max_number=20, min_target=10, max_target=30),
    "c4 1-20 t10-50": dict(num_inputs=4, max_number=20, min_target=10, max_target=50),
    "c4 1-99 t10-100": dict(num_inputs=4, max_number=99, min_target=10, max_target=100),
}


def byte_tokens(tree) -> int:
    return sum(len(t.text.encode("utf-8")) + 1 + (t.stop == "eos") for t in tree.threads)


def train_tokenizer(trees, vocab_size: int, model_type: str = "bpe") -> Tokenizer:
    """A sentencepiece tokenizer trained on the threads of ``trees``."""
    with tempfile.TemporaryDirectory() as tmp:
        return Tokenizer.train(
            [t.text for tree in trees for t in tree.threads],
            vocab_size,
            os.path.join(tmp, "m.model"),
            model_type=model_type,
        )


def measure(
    task: str, kind: str, style: str, num_train: int, num_test: int, vocab_size: int, model_type: str = "bpe"
) -> dict[str, float]:
    splits = make_splits(num_train, 0, num_test, seed=0, **TASKS[task])
    cfg = TraceConfig(kind=kind, style=style)
    train = [make_trace(p, cfg) for p in splits["train"]]
    test = [make_trace(p, cfg) for p in splits["test"]]
    tok = train_tokenizer(train, vocab_size, model_type)
    tokens = [sum(len(s.tokens) for s in tree.to_sequences(tok)) for tree in test]
    return {
        "tokens": sum(tokens) / len(test),
        "bytes": sum(byte_tokens(tree) for tree in test) / len(test),
        "threads": sum(len(tree.threads) for tree in test) / len(test),
        "vocab": tok.vocab_size,
    }


def thread_lengths(task: dict, kind: str, num_train: int, num_test: int, vocab_size: int, **trace) -> list[list[int]]:
    """Tokens of every thread sequence of each held-out trace (tokenizer
    trained on the training traces of the same kind)."""
    splits = make_splits(num_train, 0, num_test, seed=0, **task)
    cfg = TraceConfig(kind=kind, **trace)
    train = [make_trace(p, cfg) for p in splits["train"]]
    tok = train_tokenizer(train, vocab_size)
    return [[len(s.tokens) for s in make_trace(p, cfg).to_sequences(tok)] for p in splits["test"]]


def context_table(contexts: list[int], num_train: int, num_test: int, vocab_size: int, **trace) -> None:
    heads = " ".join(f"{'>' + str(c):>6s}" for c in contexts)
    print(f"{'setting':16s} {'sosp mean':>9s} {heads}  {'apr thread mean':>15s} {'p95':>5s} {'max':>5s}")
    for name, task in SETTINGS.items():
        sosp = [max(t) for t in thread_lengths(task, "sosp", num_train, num_test, vocab_size, **trace)]
        apr = sorted(x for t in thread_lengths(task, "apr", num_train, num_test, vocab_size, **trace) for x in t)
        over = " ".join(f"{sum(n > c for n in sosp) / len(sosp):6.0%}" for c in contexts)
        print(
            f"{name:16s} {sum(sosp) / len(sosp):9.0f} {over}  {sum(apr) / len(apr):15.0f} "
            f"{apr[int(0.95 * (len(apr) - 1))]:5d} {apr[-1]:5d}",
            flush=True,
        )


def critical_path_table(num_train: int, num_test: int, vocab_size: int, **trace) -> None:
    """Written tokens of conditioned APR traces per requested child count."""
    print(f"{'setting':16s} {'children':>8s} {'root':>5s} {'child':>6s} {'total':>6s} {'sequential/total':>16s}")
    cfg = TraceConfig(kind="apr", condition=True, **trace)
    for name, task in SETTINGS.items():
        splits = make_splits(num_train, 0, num_test, seed=0, **task)
        train = [make_trace(p, cfg) for p in splits["train"]]
        tok = train_tokenizer(train, vocab_size)
        for n in range(1, cfg.max_children + 1):
            roots, kids, totals, ratios = [], [], [], []
            for problem in splits["test"]:
                tree = apr_trace(problem, cfg, children=n)
                written = [int(s.loss_mask.sum()) for s in tree.to_sequences(tok)]
                roots.append(written[0])
                kids += written[1:]
                totals.append(sum(written))
                ratios.append(sequential_tokens(written, tree_spawns(tree)) / sum(written))
            print(
                f"{name:16s} {n:8d} {sum(roots) / len(roots):5.0f} {sum(kids) / len(kids):6.0f} "
                f"{sum(totals) / len(totals):6.0f} {sum(ratios) / len(ratios):16.2f}",
                flush=True,
            )


WIDTH_SETTINGS = ("c3 1-20 t10-50", "c4 1-20 t10-50")  # the adaptive config's task and a 4-input one


def width_table(
    num_train: int,
    num_test: int,
    vocab_size: int,
    probes: list[int],
    shares: list[float],
    viable_children: float,
    **trace,
) -> None:
    """Fixed width vs the probe and reachable-share rules, on the same held-out problems: mean
    written tokens per trace (all threads, root, critical path), share solved,
    the Spearman correlation of a trace's children with the problem's
    difficulty (1 - reachable share) and the share of traces whose root
    spawns 0, 1, 2, 3, 4, 5+ children."""
    counts = ("0", "1", "2", "3", "4", "5+")
    print(
        f"{'setting':16s} {'rule':9s} {'total':>6s} {'root':>5s} {'seq':>5s} {'root max':>8s} "
        f"{'solved':>6s} {'spearman':>8s} {'spawned by quartile':>19s}  " + " ".join(f"{'c=' + c:>5s}" for c in counts)
    )
    for name in WIDTH_SETTINGS:
        splits = make_splits(num_train, 0, num_test, seed=0, **SETTINGS[name])
        rules = {"fixed": TraceConfig(kind="apr", **trace)}
        rules.update({f"probe {n}": TraceConfig(kind="apr", probe_nodes=n, **trace) for n in probes})
        rules.update(
            {
                f"share {x:g}": TraceConfig(kind="apr", sequential_share=x, viable_children=viable_children, **trace)
                for x in shares
            }
        )
        tok = train_tokenizer([make_trace(p, cfg) for cfg in rules.values() for p in splits["train"]], vocab_size)
        for rule, cfg in rules.items():
            totals, roots, seqs, solved, children = [], [], [], 0, [0] * len(counts)
            longest, threads, difficulty = 0, [], []
            for problem in splits["test"]:
                tree = make_trace(problem, cfg)
                sequences = tree.to_sequences(tok)
                longest = max(longest, len(sequences[0].tokens))
                written = [int(s.loss_mask.sum()) for s in sequences]
                totals.append(sum(written))
                roots.append(written[0])
                seqs.append(sequential_tokens(written, tree_spawns(tree)))
                solved += bool(tree.solution)
                children[min(len(tree.threads[0].children), len(counts) - 1)] += 1
                threads.append(len(tree.threads) - 1)
                difficulty.append(1 - reachable_share(problem.numbers, problem.target))
            n = len(splits["test"])
            by_quartile = " ".join(f"{r:4.0%}" for r in quartile_rates(difficulty, threads)["spawn_rate"])
            print(
                f"{name:16s} {rule:9s} {sum(totals) / n:6.1f} {sum(roots) / n:5.1f} "
                f"{sum(seqs) / n:5.1f} {longest:8d} {solved / n:6.1%} {spearman(threads, difficulty):8.3f} "
                f"{by_quartile:>19s}  " + " ".join(f"{c / n:5.1%}" for c in children),
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--vocab-size", type=int, default=96)
    parser.add_argument("--model-type", default="bpe", choices=("bpe", "unigram"))
    parser.add_argument("--contexts", default="", help="e.g. 128,256: the context table instead")
    parser.add_argument("--max-nodes", type=int, default=16)
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--max-children", type=int, default=4)
    parser.add_argument(
        "--critical-path", action="store_true", help="written tokens and sequential/total per requested child count"
    )
    parser.add_argument(
        "--width", action="store_true", help="fixed width vs trace.probe_nodes: tokens and child counts"
    )
    parser.add_argument("--probe-nodes", default="5,16,3", help="probe budgets --width compares")
    parser.add_argument("--sequential-share", default="0.25", help="trace.sequential_share values --width compares")
    parser.add_argument("--viable-children", type=float, default=0.5, help="trace.viable_children of the share rules")
    args = parser.parse_args(argv)
    if args.width:
        width_table(
            args.train,
            args.test,
            args.vocab_size,
            [int(n) for n in args.probe_nodes.split(",")],
            [float(x) for x in args.sequential_share.split(",")],
            args.viable_children,
            max_nodes=args.max_nodes,
            beam_size=args.beam_size,
            max_children=args.max_children,
        )
        return
    if args.critical_path:
        critical_path_table(
            args.train,
            args.test,
            args.vocab_size,
            max_nodes=args.max_nodes,
            beam_size=args.beam_size,
            max_children=args.max_children,
        )
        return
    if args.contexts:
        context_table(
            [int(c) for c in args.contexts.split(",")],
            args.train,
            args.test,
            args.vocab_size,
            max_nodes=args.max_nodes,
            beam_size=args.beam_size,
            max_children=args.max_children,
        )
        return
    print(
        f"{'task':11s} {'kind':4s} {'style':9s} {'tokens':>8s} {'bytes':>8s} "
        f"{'ratio':>6s} {'threads':>7s} {'vocab':>5s}"
    )
    for task in TASKS:
        for kind in ("sosp", "apr"):
            for style in ("terse", "reference"):
                r = measure(task, kind, style, args.train, args.test, args.vocab_size, args.model_type)
                print(
                    f"{task:11s} {kind:4s} {style:9s} {r['tokens']:8.1f} {r['bytes']:8.1f} "
                    f"{r['bytes'] / r['tokens']:6.2f} {r['threads']:7.2f} {r['vocab']:5d}"
                )


if __name__ == "__main__":
    main()
