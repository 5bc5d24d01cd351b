"""Conversion throughput: seconds and MB/s of ``python -m apr_jax.convert`` on a
synthetic bf16 Llama-shaped checkpoint (random values, written here).

    python benchmarks/convert_throughput.py                       # ~170M parameters, 8 layers
    python benchmarks/convert_throughput.py --layers=32 --d_model=4096 --d_ff=14336 --vocab=128256 \\
        --heads=32 --kv_heads=8 --config.model.param_dtype=bfloat16   # Llama-3-8B shapes (16 GB)

Uses the converter's own path end to end (safetensors memory maps, per-shard
reads, orbax save) under the config's mesh; the tokenizer is a small fixture's.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

from apr_jax.cli import Command, Flag, int_flag, parse_command_line, run_command
from apr_jax.config import loading as config_lib
from apr_jax.config.checks import ConfigError
from apr_jax.convert import convert
from apr_jax.pretrained.safetensors_io import save_file

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "hf", "qwen2")
SHAPE_FLAGS = {"layers": 8, "d_model": 1024, "d_ff": 2816, "heads": 16, "kv_heads": 8, "vocab": 32000}


def write_checkpoint(directory: str, s: dict[str, int]) -> int:
    """A random bf16 Llama checkpoint of shapes ``s``, one file per layer; returns its bytes."""
    rng = np.random.default_rng(0)
    d, f, v, h = s["d_model"], s["d_ff"], s["vocab"], s["d_model"] // s["heads"]

    def w(*shape):
        return (0.02 * rng.standard_normal(shape, np.float32)).astype(ml_dtypes.bfloat16)

    weight_map = {}
    files = {
        "embed.safetensors": {
            "model.embed_tokens.weight": w(v, d),
            "model.norm.weight": w(d),
            "lm_head.weight": w(v, d),
        }
    }
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        files[f"layer{i}.safetensors"] = {
            p + "input_layernorm.weight": w(d),
            p + "post_attention_layernorm.weight": w(d),
            p + "self_attn.q_proj.weight": w(s["heads"] * h, d),
            p + "self_attn.k_proj.weight": w(s["kv_heads"] * h, d),
            p + "self_attn.v_proj.weight": w(s["kv_heads"] * h, d),
            p + "self_attn.o_proj.weight": w(d, s["heads"] * h),
            p + "mlp.gate_proj.weight": w(f, d),
            p + "mlp.up_proj.weight": w(f, d),
            p + "mlp.down_proj.weight": w(d, f),
        }
    for name, tensors in files.items():
        save_file(os.path.join(directory, name), tensors)
        weight_map.update({k: name for k in tensors})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as out:
        json.dump({"weight_map": weight_map}, out)
    with open(os.path.join(directory, "config.json"), "w") as out:
        json.dump(
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "vocab_size": v,
                "hidden_size": d,
                "intermediate_size": f,
                "num_hidden_layers": s["layers"],
                "num_attention_heads": s["heads"],
                "num_key_value_heads": s["kv_heads"],
                "max_position_embeddings": 4096,
                "rope_theta": 500000.0,
                "rms_norm_eps": 1e-5,
                "tie_word_embeddings": False,
            },
            out,
        )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(FIXTURE, name), os.path.join(directory, name))
    return sum(os.path.getsize(os.path.join(directory, n)) for n in files)


COMMAND = Command(
    "python benchmarks/convert_throughput.py",
    "Seconds and MB/s of python -m apr_jax.convert on a synthetic bf16 Llama-shaped checkpoint.",
    flags=(
        Flag("config", "the base config (default configs/default.py)", value="FILE"),
        Flag("layers", f"transformer layers (default {SHAPE_FLAGS['layers']})", value="N"),
        Flag("d_model", f"model width (default {SHAPE_FLAGS['d_model']})", value="N"),
        Flag("d_ff", f"MLP width (default {SHAPE_FLAGS['d_ff']})", value="N"),
        Flag("heads", f"attention heads (default {SHAPE_FLAGS['heads']})", value="N"),
        Flag("kv_heads", f"key/value heads (default {SHAPE_FLAGS['kv_heads']})", value="N"),
        Flag("vocab", f"vocabulary size (default {SHAPE_FLAGS['vocab']})", value="N"),
    ),
    overrides="set one key of the base config, e.g. --config.model.param_dtype=bfloat16",
    examples=(
        "python benchmarks/convert_throughput.py --layers=32 --d_model=4096 --d_ff=14336 "
        "--vocab=128256 --heads=32 --kv_heads=8",
    ),
)


def main(argv: list[str]) -> int:
    """Exit code 2 with one line for a bad command line."""
    return run_command(lambda: _main(argv), usage=(ConfigError,), compile_cache=False)


def _main(argv: list[str]) -> None:
    flags, overrides = parse_command_line(argv, COMMAND)
    shapes = {k: int_flag(flags, k, default, zero_ok=False) for k, default in SHAPE_FLAGS.items()}
    base = config_lib.load_config(flags.get("config"), overrides)
    root = tempfile.mkdtemp(prefix="convert_bench_")
    try:
        hf_dir = os.path.join(root, "hf")
        os.makedirs(hf_dir)
        size = write_checkpoint(hf_dir, shapes)
        start = time.perf_counter()
        convert(hf_dir, os.path.join(root, "out"), base)
        seconds = time.perf_counter() - start
        params = size // 2
        print(
            f"converted {params / 1e6:.0f}M parameters ({size / 1e6:.0f} MB bf16, "
            f"{shapes['layers'] + 1} shards) into {base.model.param_dtype} in "
            f"{seconds:.1f} s: {size / 1e6 / seconds:.0f} MB/s read"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
