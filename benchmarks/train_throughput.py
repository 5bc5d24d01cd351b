"""Train-step throughput: step time, tokens/s, MFU and planned memory per
device for a config's model, one row per remat policy.

    python benchmarks/train_throughput.py --config=configs/default.py
    python benchmarks/train_throughput.py --config=configs/default.py --remat=none,dots,full
    python benchmarks/train_throughput.py --config=configs/countdown4_apr_228m.py \
        --config.train.batch_size=16 --steps=10 --json=out.json

Uses random tokens in full rows (no data build), the config's mesh, batch,
sequence length, dtype and attention implementation (``--remat`` lists the
policies to compare; default the config's). MFU = achieved model FLOP/s
(``apr_jax.model.config.flops_per_token``) / (devices x peak FLOP/s); memory
is what XLA plans per device for the compiled step (``apr_jax.aot.memory_report``:
arguments + outputs - aliased + temporaries).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from apr_jax.aot import memory_report
from apr_jax.cli import Command, Flag, int_flag, parse_command_line, run_command
from apr_jax.config.checks import ConfigError
from apr_jax.config.loading import load_run_config
from apr_jax.config.sections import RunConfig
from apr_jax.model.config import REMATS, flops_per_token, num_params, peak_flops_per_device
from apr_jax.runtime import sharding
from apr_jax.training.train_step import build_train_step

GIB = 2**30


def measure(config: RunConfig, vocab: int, steps: int) -> dict[str, Any]:
    """Compiles the config's train step and times ``steps`` steps on random rows."""
    mesh = sharding.make_mesh(config.mesh)
    model_cfg, graphs, state, step_fn = build_train_step(config, vocab, mesh)
    model, _ = graphs.merge(state)
    B, L = config.train.batch_size, config.data.seq_len
    rng = np.random.default_rng(0)
    batch = sharding.global_batch_from_process(
        {
            "tokens": rng.integers(4, vocab, (B, L)).astype(np.int32),
            "loss_mask": np.ones((B, L), np.int32),
            "segment_ids": np.ones((B, L), np.int32),
            "positions": np.tile(np.arange(L, dtype=np.int32), (B, 1)),
        },
        mesh,
    )
    start = time.time()
    schedule_steps = jnp.int32(config.train.steps)
    with jax.set_mesh(mesh):
        compiled = step_fn.lower(state, batch, schedule_steps).compile()
    state, metrics = compiled(state, batch, schedule_steps)
    jax.block_until_ready(metrics)
    compile_s = time.time() - start
    start = time.time()
    for _ in range(steps):
        state, metrics = compiled(state, batch, schedule_steps)
    jax.block_until_ready(metrics)
    step_s = (time.time() - start) / steps
    tokens_per_s = B * L / step_s
    achieved = tokens_per_s * flops_per_token(model_cfg, L)
    peak = peak_flops_per_device()
    return {
        "remat": config.model.remat,
        "attention": model.blocks[0].attn.implementation,
        "params_m": num_params(model_cfg) / 1e6,
        "batch": B,
        "seq_len": L,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "compile_s": compile_s,
        "step_ms": step_s * 1e3,
        "tokens_per_s": tokens_per_s,
        "tflops": achieved / 1e12,
        "peak_tflops": peak / 1e12 if peak else None,
        "mfu": achieved / (peak * jax.device_count()) if peak else None,
        "memory": memory_report(compiled),
        "loss": float(metrics["loss"]),
    }


def format_row(row: dict[str, Any]) -> str:
    mfu = f"{row['mfu']:6.1%}" if row["mfu"] is not None else "   n/a"
    return (
        f"{row['remat']:>5} | {row['attention']:>7} | {row['compile_s']:7.1f} | "
        f"{row['step_ms']:9.1f} | {row['tokens_per_s']:11,.0f} | {row['tflops']:7.3f} | {mfu} | "
        f"{row['memory']['temporaries'] / GIB:8.3f} | {row['memory']['total'] / GIB:8.3f}"
    )


HEADER = "remat | kernel  | compile | step (ms) |    tokens/s | TFLOP/s |    MFU | temp GiB | total GiB"


COMMAND = Command(
    "python benchmarks/train_throughput.py",
    "Train-step time, tokens/s, MFU and planned memory per device, one row per remat policy.",
    flags=(
        Flag("config", "the config file (default configs/default.py)", value="FILE"),
        Flag("steps", "timed steps (default 20)", value="N"),
        Flag("vocab", "vocabulary size of the random tokens (default config.data.vocab_size)", value="N"),
        Flag(
            "remat",
            f"remat policies, comma-separated: {', '.join(REMATS)} (default config.model.remat)",
            value="POLICIES",
        ),
        Flag("json", "also write the rows as JSON", value="FILE"),
    ),
    overrides="set one config key, e.g. --config.train.batch_size=16",
    examples=("python benchmarks/train_throughput.py --config=configs/default.py --remat=none,dots,full",),
)


def main(argv: list[str]) -> int:
    """Exit code 2 with one line for a bad command line; compiles are timed,
    so JAX's persistent compilation cache stays off."""
    return run_command(lambda: _main(argv), usage=(ConfigError,), compile_cache=False)


def _main(argv: list[str]) -> None:
    flags, overrides = parse_command_line(argv, COMMAND)
    config = load_run_config(flags.get("config"), overrides)
    steps = int_flag(flags, "steps", 20, zero_ok=False)
    vocab = int_flag(flags, "vocab", config.data.vocab_size, zero_ok=False)
    remats = [r.strip() for r in flags.get("remat", config.model.remat).split(",") if r.strip()]
    for remat in remats:
        if remat not in REMATS:
            raise ConfigError(f"--remat={remat} is not one of {', '.join(REMATS)}")
    rows = []
    for remat in remats:
        rows.append(measure(config.replace(model=dataclasses.replace(config.model, remat=remat)), vocab, steps))
        if len(rows) == 1:
            r = rows[0]
            print(
                f"config {config.name}: {r['params_m']:.2f}M params, batch {r['batch']} x "
                f"{r['seq_len']}, {r['devices']} x {r['device_kind']}, mesh {config.section('mesh')}, "
                f"{steps} timed steps; MFU against "
                + (f"{r['peak_tflops']:.3g} TFLOP/s per device" if r["peak_tflops"] else "n/a")
            )
            print(HEADER, flush=True)
        print(format_row(rows[-1]), flush=True)
    if flags.get("json"):
        with open(flags["json"], "w") as f:
            json.dump({"config": config.name, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
