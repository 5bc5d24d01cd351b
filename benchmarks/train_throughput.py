"""Train-step throughput: step time, tokens/s and MFU for a config's model.

    python benchmarks/train_throughput.py --config=configs/default.py
    python benchmarks/train_throughput.py --config=configs/countdown4_apr_228m.py \
        --config.train.batch_size=16 --steps=10

Uses random tokens in full rows (no data build), the config's mesh, batch,
sequence length, dtype and attention implementation. MFU = achieved model
FLOP/s (``apr_jax.model.config.flops_per_token``) / (devices x peak FLOP/s).
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np

from apr_jax import config as config_lib
from apr_jax import sharding
from apr_jax.model.config import flops_per_token, num_params, peak_flops_per_device
from apr_jax.optim import learning_rate_schedule
from apr_jax.train_state import build_model_and_optimizer, shardings_of, split
from apr_jax.train_step import make_train_step


def main(argv: list[str]) -> None:
    flags, overrides = config_lib.parse_command_line(argv, allowed=("config", "steps", "vocab"))
    config = config_lib.load_config(flags.get("config"), overrides)
    steps = config_lib.int_flag(flags, "steps", 20, zero_ok=False)
    vocab = config_lib.int_flag(flags, "vocab", config.data.vocab_size, zero_ok=False)
    mesh = sharding.make_mesh(sharding.MeshConfig.from_config(config.mesh))
    model_cfg, model, optimizer = build_model_and_optimizer(config, vocab, mesh)
    graphs, state = split(model, optimizer)
    step_fn = make_train_step(graphs, shardings_of(state),
                              sharding.batch_sharding(mesh), grad_accum=config.train.grad_accum,
                              learning_rate=learning_rate_schedule(config.train))
    B, L = config.train.batch_size, config.data.seq_len
    rng = np.random.default_rng(0)
    batch = sharding.global_batch_from_process({
        "tokens": rng.integers(4, vocab, (B, L)).astype(np.int32),
        "loss_mask": np.ones((B, L), np.int32), "segment_ids": np.ones((B, L), np.int32),
        "positions": np.tile(np.arange(L, dtype=np.int32), (B, 1))}, mesh)
    start = time.time()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.time() - start
    start = time.time()
    for _ in range(steps):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.time() - start) / steps
    tokens_per_s = B * L / step_s
    peak = peak_flops_per_device()
    achieved = tokens_per_s * flops_per_token(model_cfg, L)
    print(f"config {config.name}: {num_params(model_cfg) / 1e6:.2f}M params, batch {B} x {L}, "
          f"{jax.device_count()} x {jax.devices()[0].device_kind}, mesh {dict(mesh.shape)}")
    print(f"compile+first step {compile_s:.1f} s; step {step_s * 1e3:.1f} ms; "
          f"{tokens_per_s:,.0f} tokens/s; {achieved / 1e12:.3f} TFLOP/s achieved")
    if peak:
        print(f"MFU {achieved / (peak * jax.device_count()):.1%} of {peak / 1e12:.3g} TFLOP/s per device")


if __name__ == "__main__":
    main(sys.argv[1:])
