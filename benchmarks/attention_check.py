"""Packed-attention check on this machine: which kernel ``model.attention=auto``
runs, whether it agrees with XLA attention (outputs on real tokens and q/k/v
gradients, packed rows with padding) and how long forward + backward take.

    python benchmarks/attention_check.py                      # 228M-like heads
    python benchmarks/attention_check.py --shapes=2x64x4x16 --kernel=triton  # CPU: interpreted

Shapes are BxTxNxH (batch, length, heads, head_dim; KV heads = heads). XLA is
timed only where its logits fit ``attention.DENSE_LIMIT_BYTES``. Prints one
line per shape and, with ``--json``, writes the rows.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from apr_jax.model import attention

# Custom-call names that show which kernel a compiled program runs.
KERNEL_MARKS = {"triton": "xla.gpu.triton", "splash": "tpu_custom_call", "cudnn": "__cudnn$fmha"}


def packed_segments(batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of random-length segments (1, 2, ...) ending in padding (0)."""
    seg = np.zeros((batch, length), np.int32)
    for b in range(batch):
        pos, s = 0, 1
        while pos < length - length // 8:
            n = int(rng.integers(max(2, length // 16), max(3, length // 4)))
            seg[b, pos : pos + n] = s
            pos, s = pos + n, s + 1
        seg[b, length - length // 8 :] = 0
    return seg


def value_and_grads(implementation: str, segments: jax.Array):
    """Jitted (output, dq/dk/dv) of a weighted sum over real tokens."""
    real = (segments != 0)[:, :, None, None]

    def loss(q, k, v):
        out = attention.packed_attention(q, k, v, segments, implementation).astype(jnp.float32)
        return jnp.sum(jnp.where(real, out, 0.0) ** 2), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def seconds_per_call(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def check(shape: tuple[int, int, int, int], dtype: jnp.dtype, kernel: str, repeats: int) -> dict:
    b, t, n, h = shape
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(3))
    segments = jnp.asarray(packed_segments(b, t, rng))
    kernel = attention.resolve_implementation(kernel, dtype, jax.default_backend())
    flash = value_and_grads(kernel, segments)
    hlo = flash.lower(q, k, v).compile().as_text()
    mark = KERNEL_MARKS.get(kernel)
    row = {
        "shape": "x".join(map(str, shape)),
        "dtype": jnp.dtype(dtype).name,
        "kernel": kernel,
        "kernel_calls": hlo.count(mark) if mark else None,
        "t_by_t_arrays": bool(re.search(rf"\b{t}x{t}x", hlo)) if kernel != "xla" else True,
        "kernel_ms": 1e3 * seconds_per_call(flash, q, k, v, repeats=repeats),
    }
    if b * n * t * t * 4 <= attention.DENSE_LIMIT_BYTES:
        reference = value_and_grads("xla", segments)
        (_, out), grads = flash(q, k, v)
        (_, out_ref), grads_ref = reference(q, k, v)
        real = np.asarray(segments != 0)
        scale = lambda x: float(jnp.max(jnp.abs(x.astype(jnp.float32)))) + 1e-9
        row["max_out_diff"] = float(np.max(np.abs(np.asarray(out)[real] - np.asarray(out_ref)[real])))
        row["max_rel_grad_diff"] = max(
            float(jnp.max(jnp.abs(a.astype(jnp.float32) - r.astype(jnp.float32)))) / scale(r)
            for a, r in zip(grads, grads_ref)
        )
        row["xla_ms"] = 1e3 * seconds_per_call(reference, q, k, v, repeats=repeats)
    return row


def format_row(row: dict) -> str:
    line = (
        f"{row['shape']} {row['dtype']}: kernel {row['kernel']} "
        f"({row['kernel_calls']} kernel calls, T x T arrays: {row['t_by_t_arrays']}); "
        f"fwd+bwd {row['kernel_ms']:.2f} ms"
    )
    if "xla_ms" in row:
        line += (
            f", xla {row['xla_ms']:.2f} ms; max |out diff| {row['max_out_diff']:.3g}, "
            f"max rel grad diff {row['max_rel_grad_diff']:.3g}"
        )
    else:
        line += "; xla not run (logits over the dense limit)"
    return line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="4x1024x16x64,2x4096x16x64,16x4096x16x64")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--kernel", default="auto", help="auto (this platform's) or a model.attention name")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="")
    args = p.parse_args()
    print(
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}): "
        f"model.attention={args.kernel} -> "
        f"{attention.resolve_implementation(args.kernel, jnp.dtype(args.dtype), jax.default_backend())}",
        flush=True,
    )
    rows = []
    for text in args.shapes.split(","):
        shape = tuple(int(x) for x in text.split("x"))
        rows.append(check(shape, jnp.dtype(args.dtype), args.kernel, args.repeats))
        print(format_row(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
