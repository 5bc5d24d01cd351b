"""Decode throughput of the multi-thread engine: raw speed and roofline, engine
overhead on replayed real traces, and the engine against the plain sampler.

Default mode (as before): the engine in sequential mode (``max_depth=0``) on
``--threads`` root threads of random prompts with a random-weight
``apr_jax.model`` Transformer; EOS is mapped to an id outside the vocabulary so
every thread writes exactly ``--new_tokens`` tokens. Timing excludes
compilation (a warm-up run first). Roofline: each loop step reads every weight
once per model call plus the live KV slots (the engine's counters), so
    bytes = param_bytes * model_calls + kv_slots_live * layers * 2 * kv_heads * head_dim * dtype_bytes
and the ideal time is bytes / bandwidth (H200 4.8e12 B/s, H100
3.35e12, A100 2.0e12, TPU v5e 8.1e11, TPU v4 1.2e12, CPU nominal 2e10;
override with --bandwidth).

``--replay``: a scripted model (``apr_jax.decode.replay_model``) writes real
APR traces, so engine overhead is measured apart from model quality. Two
settings: the default config's test split (Countdown-3) and ``--c4_problems``
Countdown-4 APR traces with ``configs/countdown4_apr_228m.py``'s task, trace
and eval settings (each with a tokenizer trained here on a few hundred of its
training traces). Per setting it prints: replay exactness (threads equal to
their training rows), the batch's loop steps and wall time, token-forwards
computed per token fed and KV slots read per live slot (the engine's counters;
"n/a" if it has none), and for the first ``--per_rollout`` problems decoded one
at a time: loop steps vs the rollout's critical-path tokens
(``metrics.sequential_tokens``) and its spawn/join events on that path, against
the goal steps <= critical path + 2 per event.

``--compare``: engine (sequential mode) against ``decode.sampler.generate``
writing the same tokens from the same prompts with the same random-weight
Transformer, for the default config's model and a mid-size one (8 layers,
d=512, context 1024): tokens/s and MFU (useful decode FLOPs: 2 per matmul
weight plus causal attention over the tokens before each one) against the peak
of ``apr_jax.model.config.peak_flops_per_device`` (dense bf16 vendor figure;
CPU: this host's measured float32 matmul rate) or ``--peak_flops``.

    python benchmarks/decode_throughput.py                    # d_model 128, 4 layers
    python benchmarks/decode_throughput.py --config configs/default.py
    python benchmarks/decode_throughput.py --replay --c4_problems 32 --per_rollout 16
    python benchmarks/decode_throughput.py --compare --threads 64 --new_tokens 128
    python benchmarks/decode_throughput.py --decode_attention paged --page_size 16   # vs --decode_attention xla

``--decode_attention`` / ``--page_size`` set how the engine's width-1 decode
calls read the KV cache (every mode; under ``--replay`` the scripted model
reads the cache as the CPU would, so only the KV-read counters change):
``xla`` gathers lanes up to a KV-length bucket, ``paged``
runs the platform's Pallas paged kernel (interpreted on the CPU: correct, not
fast), ``auto`` is paged on GPU/TPU where the shapes allow.

Figures only: nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from apr_jax.config.loading import load_run_config
from apr_jax.data.tokenizer import Tokenizer
from apr_jax.decode import metrics
from apr_jax.decode.engine import Engine, EngineConfig, EngineOutput, decode_page_size
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.replay_model import make_replay_model
from apr_jax.decode.sampler import SamplingConfig, bucket_length, generate
from apr_jax.model.config import ModelConfig, peak_flops_per_device
from apr_jax.model.transformer import Transformer
from apr_jax.tasks.countdown.problems import make_splits
from apr_jax.tasks.countdown.traces import make_trace
from apr_jax.threads import ThreadTree

BANDWIDTH = {
    "h200": 4.8e12,
    "h100": 3.35e12,
    "a100": 2.0e12,
    "tpu v5 lite": 8.1e11,
    "tpu v5e": 8.1e11,
    "tpu v4": 1.2e12,
    "cpu": 2e10,
}
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
NEVER = 10**6  # an EOS id outside every vocabulary: threads write their full budget


def device_bandwidth(device: jax.Device) -> float:
    kind = device.device_kind.lower()
    for name, bw in BANDWIDTH.items():
        if name in kind:
            return bw
    return BANDWIDTH["cpu"] if device.platform == "cpu" else float("nan")


def model_config(args) -> ModelConfig:
    if args.config:
        return load_run_config(args.config).model
    return ModelConfig(
        vocab_size=args.vocab,
        num_layers=args.layers,
        d_model=args.d_model,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads or max(1, args.heads // 2),
        d_ff=args.d_ff or 3 * args.d_model,
        max_len=4096,
        param_dtype=args.dtype,
        compute_dtype=args.dtype,
    )


def engine_config(**kw) -> EngineConfig:
    """``EngineConfig(**kw)`` without the fields this engine does not have."""
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    return EngineConfig(**{k: v for k, v in kw.items() if k in known and v is not None})


def attention_settings(args) -> dict[str, Any]:
    """The engine's decode-attention flags that were given."""
    return {k: v for k, v in (("decode_attention", args.decode_attention), ("page_size", args.page_size)) if v}


def describe_attention(model: Transformer, cfg: EngineConfig) -> str:
    page = decode_page_size(cfg, model.decode_page_size)
    return f"decode attention {cfg.decode_attention}: " + (f"paged, {page}-slot pages" if page else "xla gather")


def random_prompts(vocab_size: int, count: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(13, vocab_size, size=length).tolist() for _ in range(count)]


def timed(fn, *args) -> tuple[Any, float]:
    """``fn(*args)`` and its wall seconds (results are host arrays, so finished)."""
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


# ---- default mode: sequential throughput and roofline ---------------------
def throughput(args) -> None:
    mcfg = model_config(args)
    model = Transformer(mcfg, rngs=nnx.Rngs(0))
    max_context = bucket_length(args.prompt_len + args.new_tokens + 2)
    ecfg = engine_config(
        max_depth=0,
        tokens_per_thread=args.new_tokens,
        max_context=max_context,
        sampling=SamplingConfig(temperature=1.0),
        **attention_settings(args),
    )
    engine = Engine(model, ecfg, ProtocolIds(eos=NEVER))
    print(describe_attention(model, ecfg))
    prompts = random_prompts(mcfg.vocab_size, args.threads, args.prompt_len)
    _, compile_and_run_s = timed(engine.run, prompts, jax.random.key(0))
    out, seconds = timed(engine.run, prompts, jax.random.key(1))

    tokens = sum(s.written_tokens for s in out.flat())
    steps = sum(out.steps)
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model)))
    dtype_bytes = jax.numpy.dtype(mcfg.compute_dtype).itemsize
    slot_bytes = mcfg.num_layers * 2 * mcfg.num_kv_heads * mcfg.head_dim * dtype_bytes
    kv_bytes = out.counters["kv_slots_live"] * slot_bytes  # the live slots: the least any decoder reads
    device = jax.devices()[0]
    bandwidth = args.bandwidth or device_bandwidth(device)
    ideal_s = (param_bytes * out.counters["model_calls"] + kv_bytes) / bandwidth
    result = {
        "device": device.device_kind,
        "d_model": mcfg.d_model,
        "layers": mcfg.num_layers,
        "heads": mcfg.num_heads,
        "threads": args.threads,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "max_context": max_context,
        "tokens": tokens,
        "steps": steps,
        "seconds": round(seconds, 3),
        "compile_and_first_run_s": round(compile_and_run_s, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "ms_per_step": round(1e3 * seconds / steps, 3),
        "param_bytes": param_bytes,
        "kv_live_bytes": kv_bytes,
        "bandwidth_Bps": bandwidth,
        "kv_read_per_live": round(out.counters["kv_slots_read"] / out.counters["kv_slots_live"], 2),
        "roofline_fraction": round(ideal_s / seconds, 4),
    }
    print(json.dumps(result))
    print(
        f"{tokens / seconds:,.0f} tokens/s, {1e3 * seconds / steps:.2f} ms/step "
        f"({steps} steps x {args.threads} rows), {100 * result['roofline_fraction']:.1f}% of the "
        f"{bandwidth / 1e9:.0f} GB/s roofline on {device.device_kind}"
    )


# ---- --replay: engine overhead on real traces ------------------------------
@dataclasses.dataclass
class ReplaySetting:
    name: str
    tokenizer: Tokenizer
    trees: list[ThreadTree]
    engine: EngineConfig


def replay_setting(
    name: str,
    config_path: str,
    num_test: int | None,
    num_train_for_tokenizer: int,
    exact_split: bool,
    overrides: dict[str, Any],
) -> ReplaySetting:
    """Traces of a config's task/trace settings and its eval engine config.
    ``exact_split``: draw the config's own splits (its test split, first
    ``num_test`` problems); otherwise a small split with the same task settings."""
    c = load_run_config(config_path)
    t = c.task
    counts = (t.num_train, t.num_validation, t.num_test) if exact_split else (num_train_for_tokenizer, 0, num_test)
    splits = make_splits(
        *counts,
        num_inputs=t.num_inputs,
        min_number=t.min_number,
        max_number=t.max_number,
        min_target=t.min_target,
        max_target=t.max_target,
        seed=t.seed,
    )
    trace_cfg = c.trace
    train = splits["train"]
    sample = train[:: max(1, len(train) // num_train_for_tokenizer)][:num_train_for_tokenizer]
    texts = [th.text for p in sample for th in make_trace(p, trace_cfg).threads]
    path = os.path.join(tempfile.mkdtemp(prefix="replay_tok_"), "t.model")
    tok = Tokenizer.train(texts, int(c.data.vocab_size), path)
    test = splits["test"][:num_test] if num_test else splits["test"]
    trees = [make_trace(p, trace_cfg) for p in test]
    base = EngineConfig.from_eval_config(c.eval, int(c.model.max_len))
    kw = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    kw.update({k: v for k, v in overrides.items() if v})
    return ReplaySetting(name, tok, trees, engine_config(**kw))


def critical_path(tree: ThreadTree, written: Sequence[int]) -> tuple[int, int]:
    """(critical-path written tokens, spawn + join events on that path)."""
    spawns = metrics.tree_spawns(tree)

    def walk(i: int) -> tuple[int, int]:
        tokens, events = written[i], 0
        for rnd in spawns[i]:
            best = max((walk(c) for c in rnd), default=(0, 0))
            tokens, events = tokens + best[0], events + best[1] + 2
        return tokens, events

    cp = walk(0)
    assert cp[0] == metrics.sequential_tokens(written, spawns)
    return cp


def exact_threads(out: EngineOutput, rows: list[list[tuple[list[int], list[int]]]]) -> tuple[int, int]:
    """Threads whose tokens and model mask equal their trace row (same thread
    order: root, then children in spawn order), and all threads."""
    same = total = 0
    for n, per_tree in enumerate(rows):
        got = out.samples[n][0].threads
        total += len(per_tree)
        for i, (tokens, mask) in enumerate(per_tree):
            same += i < len(got) and got[i].tokens == tokens and [int(r == "model") for r in got[i].roles] == mask
    return same, total


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def replay(setting: ReplaySetting, per_rollout: int) -> dict[str, Any]:
    """Run the whole setting as one evaluation, then ``per_rollout`` problems
    alone; print and return the figures."""
    tok, cfg = setting.tokenizer, setting.engine
    seqs = [[s for s in tree.to_sequences(tok)] for tree in setting.trees]
    rows = [[(s.tokens.tolist(), s.loss_mask.tolist()) for s in per] for per in seqs]
    longest = max(len(r[0]) for per in rows for r in per)
    if longest > cfg.max_context:
        cfg = dataclasses.replace(cfg, max_context=bucket_length(longest))
    model = make_replay_model(
        [r[0] for per in rows for r in per], vocab_size=tok.vocab_size, max_len=cfg.max_context, fallback_id=tok.eos_id
    )
    ids = ProtocolIds.from_tokenizer(tok)
    prompts = [tok.encode(tree.threads[0].segments[0].text) for tree in setting.trees]
    engine = Engine(model, cfg, ids)
    _, first_s = timed(engine.run, prompts, jax.random.key(0))
    out, seconds = timed(engine.run, prompts, jax.random.key(0))
    same, total = exact_threads(out, rows)
    written = [[sum(m) for _, m in per] for per in rows]
    paths = [critical_path(tree, w) for tree, w in zip(setting.trees, written)]
    counters = getattr(out, "counters", None) or {}
    useful = counters.get("tokens_useful", counters.get("tokens_fed"))
    fwd = counters["forwards_computed"] / useful if counters.get("forwards_computed") and useful else None
    kv = (
        counters["kv_slots_read"] / counters["kv_slots_live"]
        if counters.get("kv_slots_read") and counters.get("kv_slots_live")
        else None
    )
    tokens_fed = sum(len(r[0]) for per in rows for r in per)
    result = {
        "setting": setting.name,
        "problems": len(prompts),
        "threads": total,
        "exact_threads": same,
        "max_context": cfg.max_context,
        "lanes": getattr(cfg, "lanes", None),
        "prefill_chunk": getattr(cfg, "prefill_chunk", None),
        "batch_problems": cfg.batch_problems,
        "row_buckets": getattr(cfg, "row_buckets", None),
        "kv_buckets": getattr(cfg, "kv_buckets", None),
        "split_by_kv_length": getattr(cfg, "split_by_kv_length", None),
        "batch_steps": int(sum(out.steps)),
        "longest_critical_path": max(p[0] for p in paths),
        "seconds": round(seconds, 3),
        "compile_and_first_run_s": round(first_s, 2),
        "written_tokens": int(sum(map(sum, written))),
        "context_tokens": tokens_fed,
        "forwards_per_token": fwd,
        "kv_read_per_live": kv,
        "counters": counters,
    }
    print(
        f"[{setting.name}] {len(prompts)} problems, {total} threads ({same} equal to their trace "
        f"rows), max_context {cfg.max_context}, lanes {result['lanes']} "
        f"(0: all), prefill_chunk {result['prefill_chunk']}, batch_problems {cfg.batch_problems}, "
        f"row/KV buckets {result['row_buckets']}/{result['kv_buckets']}"
        f"{', split by KV length' if result['split_by_kv_length'] else ''}"
    )
    print(
        f"  whole run: {result['batch_steps']} loop steps in {len(out.steps)} batch(es); longest critical "
        f"path {result['longest_critical_path']} tokens; {seconds:.2f} s "
        f"({result['written_tokens'] / seconds:,.0f} written tokens/s; "
        f"first run with compile {first_s:.1f} s)"
    )
    print(
        f"  token-forwards computed per token fed: {fmt(fwd)} (goal <= 1.5); "
        f"KV slots read per live slot: {fmt(kv)} (goal <= 2)"
    )

    if per_rollout:
        single = dataclasses.replace(cfg, batch_problems=0)
        if hasattr(single, "lanes"):
            single = dataclasses.replace(single, lanes=0)
        alone = Engine(model, single, ids)
        n = min(per_rollout, len(prompts))
        alone.run(prompts[:1], jax.random.key(0))  # compile
        steps, differ, start = [], 0, time.perf_counter()
        for i in range(n):
            o = alone.run(prompts[i : i + 1], jax.random.key(0))
            steps.append(int(sum(o.steps)))
            differ += o.samples[0][0].sequential_tokens != paths[i][0]
        per_s = (time.perf_counter() - start) / n
        cp = np.asarray([p[0] for p in paths[:n]])
        ev = np.asarray([p[1] for p in paths[:n]])
        st = np.asarray(steps)
        over = st - (cp + 2 * ev)
        result.update(
            {
                "per_rollout": n,
                "mean_steps": float(st.mean()),
                "mean_critical_path": float(cp.mean()),
                "mean_events": float(ev.mean()),
                "mean_steps_over_path": float((st / cp).mean()),
                "within_goal": int((over <= 0).sum()),
                "max_over_goal": int(over.max()),
                "engine_path_differs": int(differ),
                "seconds_per_rollout": round(per_s, 3),
            }
        )
        print(
            f"  {n} rollouts alone: loop steps mean {st.mean():.1f} (min {st.min()}, max {st.max()}) vs "
            f"critical path mean {cp.mean():.1f} tokens (x{(st / cp).mean():.2f}), spawn/join events on it "
            f"mean {ev.mean():.1f}; steps <= path + 2/event for {(over <= 0).sum()}/{n} "
            f"(worst {over.max():+d} steps); {per_s:.2f} s per rollout"
            + (f"; {differ} rollouts' engine critical path differs from the trace's" if differ else "")
        )
        print(f"    steps - critical path per rollout: {(st - cp).tolist()}")
    print(json.dumps(result))
    return result


# ---- --compare: engine vs plain sampler --------------------------------------
def decode_flops_per_token(cfg: ModelConfig, context: float) -> float:
    """Forward FLOPs of one decoded token attending over ``context`` tokens:
    2 per matmul weight (blocks + output head) plus QK^T and AV."""
    d, h = cfg.d_model, cfg.head_dim
    block = cfg.num_layers * (d * cfg.num_heads * h * 2 + d * cfg.num_kv_heads * h * 2 + 3 * d * cfg.d_ff)
    return 2.0 * (block + d * cfg.vocab_size) + 4.0 * cfg.num_layers * cfg.num_heads * h * context


def compare(
    name: str,
    mcfg: ModelConfig,
    threads: int,
    prompt_len: int,
    new_tokens: int,
    peak: float | None,
    attention: dict[str, Any],
) -> dict[str, Any]:
    """Engine (sequential mode) and ``sampler.generate`` writing ``new_tokens``
    per thread from the same prompts with the same random-weight model."""
    model = Transformer(mcfg, rngs=nnx.Rngs(0))
    prompts = random_prompts(mcfg.vocab_size, threads, prompt_len)
    sampling = SamplingConfig(temperature=1.0)
    max_context = min(bucket_length(prompt_len + new_tokens + 2), mcfg.max_len)
    if prompt_len + new_tokens + 2 > max_context:
        raise ValueError(f"prompt_len + new_tokens + 2 exceeds the {name} model's context {mcfg.max_len}")
    ecfg = engine_config(
        max_depth=0, tokens_per_thread=new_tokens, max_context=max_context, sampling=sampling, **attention
    )
    engine = Engine(model, ecfg, ProtocolIds(eos=NEVER))
    print(f"[{name}] {describe_attention(model, ecfg)}")
    bos_prompts = [[2] + p for p in prompts]  # the engine adds BOS itself

    def run_engine(key):
        return sum(s.written_tokens for s in engine.run(prompts, key).flat())

    def run_sampler(key):
        return int(
            generate(model, bos_prompts, new_tokens, stop_ids=(NEVER,), sampling=sampling, key=key).lengths.sum()
        )

    flops = decode_flops_per_token(mcfg, prompt_len + 1 + new_tokens / 2)
    out = {
        "model": name,
        "layers": mcfg.num_layers,
        "d_model": mcfg.d_model,
        "threads": threads,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "max_context": max_context,
        "peak_flops": peak,
        "flops_per_token": flops,
    }
    for label, fn in (("sampler", run_sampler), ("engine", run_engine)):
        _, warm_s = timed(fn, jax.random.key(0))
        tokens, seconds = timed(fn, jax.random.key(1))
        rate = tokens / seconds
        out[label] = {
            "tokens": tokens,
            "seconds": round(seconds, 3),
            "compile_and_first_run_s": round(warm_s, 2),
            "tokens_per_s": round(rate, 1),
            "mfu": (rate * flops / peak) if peak else None,
        }
    ratio = out["engine"]["tokens_per_s"] / out["sampler"]["tokens_per_s"]
    out["engine_over_sampler"] = round(ratio, 3)
    print(
        f"[{name}: {mcfg.num_layers} layers, d={mcfg.d_model}, {threads} threads x {new_tokens} tokens] "
        + "; ".join(
            f"{k} {out[k]['tokens_per_s']:,.0f} tokens/s, MFU {fmt(out[k]['mfu'] and 100 * out[k]['mfu'], '.3f')}%"
            for k in ("sampler", "engine")
        )
        + f"; engine/sampler {ratio:.2f} (goal >= 0.8)"
    )
    print(json.dumps(out))
    return out


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
    p.add_argument("--replay", action="store_true", help="engine overhead on replayed real traces")
    p.add_argument("--c3_problems", type=int, default=0, help="default config's test problems; 0: all")
    p.add_argument("--c4_problems", type=int, default=32, help="Countdown-4 APR problems; 0: skip")
    p.add_argument("--per_rollout", type=int, default=16, help="problems also decoded one at a time")
    p.add_argument("--lanes", type=int, default=0, help="engine KV lanes; 0: the engine's default")
    p.add_argument("--prefill_chunk", type=int, default=0, help="0: the engine's default")
    p.add_argument(
        "--long_prefill_chunks",
        type=lambda v: tuple(int(w) for w in v.split(",") if w),
        default=(),
        help="ascending widths for longer queues, e.g. 16,64; empty: none",
    )
    p.add_argument("--row_buckets", type=int, default=0, help="0: the engine's default")
    p.add_argument("--kv_buckets", type=int, default=0, help="0: the engine's default")
    p.add_argument("--split_by_kv_length", action="store_true", help="one model call per KV bucket")
    p.add_argument(
        "--decode_attention",
        default="",
        choices=("", "xla", "paged", "auto"),
        help="engine decode reads (every mode); empty: the engine's default",
    )
    p.add_argument("--page_size", type=int, default=0, help="paged kernel page size; 0: the engine's default")
    p.add_argument("--compare", action="store_true", help="engine vs plain sampler, two model sizes")
    p.add_argument("--peak_flops", type=float, default=0.0, help="FLOP/s for MFU; 0: from the device")
    args = p.parse_args()

    if not (args.replay or args.compare):
        throughput(args)
        return
    print(f"device: {jax.devices()[0].device_kind}")
    if args.replay:
        overrides = {
            k: getattr(args, k)
            for k in (
                "lanes",
                "prefill_chunk",
                "long_prefill_chunks",
                "row_buckets",
                "kv_buckets",
                "split_by_kv_length",
            )
        }
        overrides.update(attention_settings(args))
        settings = [
            replay_setting(
                "countdown3 default test split",
                os.path.join(CONFIG_DIR, "default.py"),
                args.c3_problems or None,
                400,
                True,
                overrides,
            )
        ]
        if args.c4_problems:
            settings.append(
                replay_setting(
                    "countdown4 apr",
                    os.path.join(CONFIG_DIR, "countdown4_apr_228m.py"),
                    args.c4_problems,
                    200,
                    False,
                    overrides,
                )
            )
        for s in settings:
            replay(s, args.per_rollout)
    if args.compare:
        peak = args.peak_flops or peak_flops_per_device()
        print(
            f"peak for MFU: {fmt(peak and peak / 1e12, '.3f')} TFLOP/s "
            f"({'--peak_flops' if args.peak_flops else 'apr_jax.model.config.peak_flops_per_device'})"
        )
        default = load_run_config(os.path.join(CONFIG_DIR, "default.py"))
        small = default.model
        mid = ModelConfig(
            vocab_size=default.data.vocab_size,
            num_layers=8,
            d_model=512,
            num_heads=8,
            num_kv_heads=4,
            d_ff=1536,
            max_len=1024,
            param_dtype=args.dtype,
            compute_dtype=args.dtype,
        )
        for name, mcfg in (("default", small), ("mid", mid)):
            compare(name, mcfg, args.threads, args.prompt_len, args.new_tokens, peak, attention_settings(args))


if __name__ == "__main__":
    main()
