"""How well a trained model has learnt its traces' decision to fork: for each
problem, whether the root's first written token is ``<spawn>`` in the
training trace and in the model's greedy choice, read from one forward over
the prompt (no decoding).

    python -m benchmarks.spawn_decision --workdir runs/adaptive [--splits train,test] [--num 1000]

Per split it prints the share of problems whose trace forks at once, the share
the model forks, their agreement, the model's mean P(<spawn>) where the trace
forks and where it does not, and both spawn rates per difficulty quartile
(``task.difficulty``, easiest first). Agreement on the training problems tells
whether the rule was learnt at all; on held-out ones, whether it generalises.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from apr_jax import protocol
from apr_jax.evaluation.loading import load_for_inference
from apr_jax.evaluation.width_stats import quartile_rates
from apr_jax.runtime.checkpoint import CheckpointError
from apr_jax.tasks.registry import get_task


def first_written_tokens(task: Any, tokenizer: Any, problems: Sequence[Any]) -> np.ndarray:
    """The first token each problem's training trace has its root write."""
    trees, _ = task.generate_trees(list(problems), num_workers=1)
    firsts = []
    for tree in trees:
        root = tree.to_sequences(tokenizer)[0]
        firsts.append(int(root.tokens[int(np.argmax(root.loss_mask))]))
    return np.asarray(firsts)


def spawn_probabilities(
    model: Any, tokenizer: Any, prompts: Sequence[str], spawn_id: int, batch: int = 100
) -> np.ndarray:
    """P(``<spawn>``) as the root's first written token, for each prompt."""
    out = []
    for start in range(0, len(prompts), batch):
        ids = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts[start : start + batch]]
        width = max(map(len, ids))
        tokens_BxL = np.zeros((len(ids), width), np.int32)
        segments_BxL = np.zeros_like(tokens_BxL)
        for row, seq in enumerate(ids):
            tokens_BxL[row, : len(seq)] = seq
            segments_BxL[row, : len(seq)] = 1
        positions_BxL = np.broadcast_to(np.arange(width, dtype=np.int32), tokens_BxL.shape)
        logits_BxLxV = model(jnp.asarray(tokens_BxL), jnp.asarray(positions_BxL), jnp.asarray(segments_BxL))
        last_B = np.asarray([len(seq) - 1 for seq in ids])
        log_probs_BxV = jax.nn.log_softmax(logits_BxLxV[np.arange(len(ids)), last_B], axis=-1)
        out.append(np.exp(np.asarray(log_probs_BxV[:, spawn_id])))
    return np.concatenate(out)


def report(name: str, trace_spawns: np.ndarray, p_spawn: np.ndarray, difficulty: Sequence[float]) -> str:
    """One split's lines: rates, agreement, mean probabilities, quartiles."""
    model_spawns = p_spawn > 0.5
    lines = [
        f"{name}: {len(p_spawn)} problems; trace forks {trace_spawns.mean():.1%}, "
        f"model forks {model_spawns.mean():.1%}, "
        f"agreement {(trace_spawns == model_spawns).mean():.1%}; mean P(<spawn>) where the trace forks "
        f"{p_spawn[trace_spawns].mean() if trace_spawns.any() else float('nan'):.2f}, where it does not "
        f"{p_spawn[~trace_spawns].mean() if (~trace_spawns).any() else float('nan'):.2f}"
    ]
    trace_q, model_q = (
        " ".join(
            "   -" if math.isnan(rate) else f"{rate:4.0%}" for rate in quartile_rates(difficulty, spawns)["spawn_rate"]
        )
        for spawns in (trace_spawns, model_spawns)
    )
    lines.append(f"  forks by difficulty quartile, easiest first: trace {trace_q}; model {model_q}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", required=True, help="a trained run (newest checkpoint) or WORKDIR/checkpoints/STEP"
    )
    parser.add_argument("--splits", default="train,test", help="comma-separated splits of the run's task")
    parser.add_argument("--num", type=int, default=1000, help="first N problems of each split")
    args = parser.parse_args(argv)
    try:
        loaded = load_for_inference(args.workdir)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    task = get_task(loaded.config)
    splits = task.splits()
    spawn_id = loaded.tokenizer.encode(protocol.SPAWN_OPEN)
    if len(spawn_id) != 1:
        raise SystemExit(f"error: {protocol.SPAWN_OPEN} is not one token of this run's tokenizer")
    print(f"{args.workdir} (step {loaded.step})")
    for name in args.splits.split(","):
        if name not in splits:
            raise SystemExit(f"error: unknown split {name!r}; the task has {sorted(splits)}")
        problems = splits[name][: args.num]
        firsts = first_written_tokens(task, loaded.tokenizer, problems)
        p_spawn = spawn_probabilities(loaded.model, loaded.tokenizer, [task.prompt(p) for p in problems], spawn_id[0])
        print(report(name, firsts == spawn_id[0], p_spawn, [task.difficulty(p) for p in problems]))


if __name__ == "__main__":
    main()
