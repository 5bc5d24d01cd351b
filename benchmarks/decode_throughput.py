"""Decode throughput of the multi-thread engine, and its fraction of the
memory-bandwidth roofline.

Runs the engine in sequential mode (``max_depth=0``) on ``--threads`` root
threads of random prompts with a random-weight ``apr_jax.model`` Transformer;
EOS is mapped to an id outside the vocabulary so every thread writes exactly
``--new_tokens`` tokens. Timing excludes compilation (a warm-up run first).

Roofline: each loop step reads every weight once plus the whole fixed-size KV
cache (every row attends over its full ``max_context`` slots), so
    bytes_per_step = param_bytes + layers * rows * max_context * 2 * kv_heads * head_dim * dtype_bytes
and the ideal step time is bytes_per_step / bandwidth. Bandwidths (B/s): H200
4.8e12, H100 3.35e12, A100 2.0e12, TPU v5e 8.1e11, TPU v4 1.2e12, CPU nominal
2e10 (two DDR4 channels; override with --bandwidth).

    python benchmarks/decode_throughput.py                    # d_model 128, 4 layers
    python benchmarks/decode_throughput.py --config configs/default.py
    python benchmarks/decode_throughput.py --d_model 1024 --layers 18 --heads 16 --threads 256
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import jax
import numpy as np
from flax import nnx

from apr_jax.decode.engine import Engine, EngineConfig
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.sampler import SamplingConfig, bucket_length
from apr_jax.model.config import ModelConfig
from apr_jax.model.transformer import Transformer

BANDWIDTH = {"h200": 4.8e12, "h100": 3.35e12, "a100": 2.0e12, "tpu v5 lite": 8.1e11,
             "tpu v5e": 8.1e11, "tpu v4": 1.2e12, "cpu": 2e10}


def device_bandwidth(device: jax.Device) -> float:
    kind = device.device_kind.lower()
    for name, bw in BANDWIDTH.items():
        if name in kind:
            return bw
    return BANDWIDTH["cpu"] if device.platform == "cpu" else float("nan")


def model_config(args) -> ModelConfig:
    if args.config:
        spec = importlib.util.spec_from_file_location("bench_config", args.config)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        cfg = module.get_config()
        return ModelConfig.from_config(cfg.model, vocab_size=cfg.data.vocab_size)
    return ModelConfig(vocab_size=args.vocab, num_layers=args.layers, d_model=args.d_model,
                       num_heads=args.heads, num_kv_heads=args.kv_heads or max(1, args.heads // 2),
                       d_ff=args.d_ff or 3 * args.d_model, max_len=4096,
                       param_dtype=args.dtype, compute_dtype=args.dtype)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="", help="experiment config file; its model section is used")
    p.add_argument("--d_model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv_heads", type=int, default=0, help="0: heads // 2")
    p.add_argument("--d_ff", type=int, default=0, help="0: 3 * d_model")
    p.add_argument("--vocab", type=int, default=96)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--threads", type=int, default=64, help="rows decoded together")
    p.add_argument("--prompt_len", type=int, default=16)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--bandwidth", type=float, default=0.0, help="B/s; 0: from the device kind")
    args = p.parse_args()

    mcfg = model_config(args)
    model = Transformer(mcfg, rngs=nnx.Rngs(0))
    max_context = bucket_length(args.prompt_len + args.new_tokens + 2)
    ecfg = EngineConfig(max_depth=0, tokens_per_thread=args.new_tokens, max_context=max_context,
                        sampling=SamplingConfig(temperature=1.0))
    ids = ProtocolIds(eos=10 ** 6)  # never sampled: every thread writes new_tokens
    engine = Engine(model, ecfg, ids)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(13, mcfg.vocab_size, size=args.prompt_len)) for _ in range(args.threads)]

    t0 = time.perf_counter()
    engine.run(prompts, jax.random.key(0))
    compile_and_run_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = engine.run(prompts, jax.random.key(1))
    seconds = time.perf_counter() - t0

    tokens = sum(s.written_tokens for s in out.flat())
    steps = sum(out.steps)
    state = nnx.state(model)
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    dtype_bytes = jax.numpy.dtype(mcfg.compute_dtype).itemsize
    kv_bytes = mcfg.num_layers * args.threads * max_context * 2 * mcfg.num_kv_heads * mcfg.head_dim * dtype_bytes
    device = jax.devices()[0]
    bandwidth = args.bandwidth or device_bandwidth(device)
    ideal_step_s = (param_bytes + kv_bytes) / bandwidth
    result = {
        "device": device.device_kind, "d_model": mcfg.d_model, "layers": mcfg.num_layers,
        "heads": mcfg.num_heads, "threads": args.threads, "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens, "max_context": max_context,
        "tokens": tokens, "steps": steps, "seconds": round(seconds, 3),
        "compile_and_first_run_s": round(compile_and_run_s, 2),
        "tokens_per_s": round(tokens / seconds, 1), "ms_per_step": round(1e3 * seconds / steps, 3),
        "param_bytes": param_bytes, "kv_cache_bytes": kv_bytes, "bandwidth_Bps": bandwidth,
        "roofline_fraction": round(ideal_step_s / (seconds / steps), 4),
    }
    print(json.dumps(result))
    print(f"{tokens / seconds:,.0f} tokens/s, {1e3 * seconds / steps:.2f} ms/step "
          f"({steps} steps x {args.threads} rows), {100 * result['roofline_fraction']:.1f}% of the "
          f"{bandwidth / 1e9:.0f} GB/s roofline on {device.device_kind}")


if __name__ == "__main__":
    main()
