"""Tree sequences against plain packed rows of the same tokens: train-step
time and tokens/s of the inherit family's tree mask.

    python benchmarks/tree_throughput.py --config=configs/default.py
    python benchmarks/tree_throughput.py --config=configs/default.py --config.data.join=linear --steps=30

Builds (or reuses) the config's dataset, lays its first training trees out as
tree sequences (``data.context=inherit`` with the config's ``data.join``),
packs them into the config's rows, and times the train step twice on the
very same rows: once with the tree mask, once as plain packed rows (each
tree one segment, causal). tokens/s counts real (non-padding) tokens; the
ratio is tree / plain.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from apr_jax.cli import Command, Flag, int_flag, parse_command_line, run_command
from apr_jax.config.checks import ConfigError
from apr_jax.config.loading import load_run_config
from apr_jax.config.sections import RunConfig
from apr_jax.data.build import build_dataset_once, open_split
from apr_jax.data.pipeline import TREE_FEATURES, TokenizeTree, pack_sequences
from apr_jax.data.tokenizer import load_tokenizer
from apr_jax.model.config import flops_per_token, peak_flops_per_device
from apr_jax.runtime import sharding
from apr_jax.training.train_step import build_train_step


def tree_batches(config: RunConfig, batches: int) -> tuple[list[dict[str, np.ndarray]], int]:
    """``batches`` batches of the config's rows packed with tree sequences
    of its training trees, and the vocabulary size."""
    info = build_dataset_once(config)
    tokenizer = load_tokenizer(info.tokenizer_path)
    tokenize = TokenizeTree(tokenizer, "inherit", config.data.join)
    source = open_split(info, "train")
    B, L = config.train.batch_size, config.data.seq_len
    pieces, rows = [], None
    for index in range(len(source)):
        pieces.extend(tokenize(source[index]))
        rows, _ = pack_sequences(pieces, L, packing=True, pad_id=tokenizer.pad_id)
        if len(rows["tokens"]) > B * batches:
            break
    if rows is None or len(rows["tokens"]) <= B * batches:
        raise ConfigError(f"the training split holds fewer than {batches} batches of tree sequences")
    return [{k: v[i * B : (i + 1) * B] for k, v in rows.items()} for i in range(batches)], tokenizer.vocab_size


def time_steps(config: RunConfig, vocab: int, batches: list[dict[str, np.ndarray]], steps: int) -> float:
    """Seconds per train step over ``batches`` in turn (compile excluded)."""
    mesh = sharding.make_mesh(config.mesh)
    _, _, state, step_fn = build_train_step(config, vocab, mesh)
    placed = [sharding.global_batch_from_process(b, mesh) for b in batches]
    schedule_steps = jnp.int32(config.train.steps)
    with jax.set_mesh(mesh):
        compiled = step_fn.lower(state, placed[0], schedule_steps).compile()
    state, metrics = compiled(state, placed[0], schedule_steps)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = compiled(state, placed[i % len(placed)], schedule_steps)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def measure(config: RunConfig, steps: int) -> dict[str, Any]:
    batches, vocab = tree_batches(config, batches=4)
    real = sum(int((b["segment_ids"] > 0).sum()) for b in batches) / len(batches)
    plain = [{k: v for k, v in b.items() if k not in TREE_FEATURES} for b in batches]
    tree_s = time_steps(config, vocab, batches, steps)
    plain_s = time_steps(config, vocab, plain, steps)
    peak = peak_flops_per_device()
    model_cfg = config.model_for(vocab)
    out = {"join": config.data.join, "real_tokens_per_batch": real}
    for name, seconds in (("tree", tree_s), ("plain", plain_s)):
        tokens_per_s = real / seconds
        out[name] = {
            "step_ms": seconds * 1e3,
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * flops_per_token(model_cfg, config.data.seq_len) / (peak * jax.device_count())
            if peak
            else None,
        }
    out["ratio"] = plain_s / tree_s
    return out


COMMAND = Command(
    "python benchmarks/tree_throughput.py",
    "Train-step tokens/s of tree sequences (the inherit family's mask) against plain packed rows of the same tokens.",
    flags=(
        Flag("config", "the config file (default configs/default.py)", value="FILE"),
        Flag("steps", "timed steps of each kind (default 20)", value="N"),
    ),
    overrides="set one config key, e.g. --config.data.join=linear",
    examples=("python benchmarks/tree_throughput.py --config=configs/default.py",),
)


def main(argv: list[str]) -> int:
    return run_command(lambda: _main(argv), usage=(ConfigError,), compile_cache=False)


def _main(argv: list[str]) -> None:
    flags, overrides = parse_command_line(argv, COMMAND)
    config = load_run_config(flags.get("config"), ["config.eval.num_problems=0", *overrides])
    steps = int_flag(flags, "steps", 20, zero_ok=False)
    row = measure(config, steps)
    print(
        f"{jax.devices()[0].device_kind} x {jax.device_count()}, batch {config.train.batch_size} x "
        f"{config.data.seq_len}, {row['real_tokens_per_batch']:.0f} real tokens per batch, join={row['join']}"
    )
    print("rows  | step (ms) |  tokens/s |   MFU")
    for name in ("tree", "plain"):
        r = row[name]
        mfu = f"{r['mfu']:6.1%}" if r["mfu"] is not None else "   n/a"
        print(f"{name:5} | {r['step_ms']:9.1f} | {r['tokens_per_s']:9,.0f} | {mfu}")
    print(f"tree / plain tokens/s: {row['ratio']:.3f}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
