"""The inherit family's engine on a trained run: cost counters and KV memory.

    python benchmarks/inherit_engine.py --workdir=runs/countdown_inherit --num=50

Decodes the first ``--num`` test problems of a ``data.context=inherit`` run
with its own eval settings and prints, over the batch: token-forwards
computed per token fed, KV slots read per live slot (the engine's counters),
the compiled decode's wall time and written tokens per second (a second run),
loop steps against the rollouts' critical paths, and the KV slots a problem
holds (each token's K/V once) against what an engine that copies every
thread's whole context would hold.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from apr_jax.cli import Command, Flag, int_flag, parse_command_line, run_command
from apr_jax.config.checks import ConfigError
from apr_jax.decode import Engine, ProtocolIds
from apr_jax.decode.engine import efficiency
from apr_jax.evaluation.loading import load_for_inference, problems_for
from apr_jax.evaluation.scoring import engine_config
from apr_jax.tasks.registry import get_task

COMMAND = Command(
    "python benchmarks/inherit_engine.py",
    "Cost counters and KV memory of the inherit family's engine on a trained run's test problems.",
    flags=(
        Flag("workdir", "a data.context=inherit run (its newest checkpoint)", value="DIR", required=True),
        Flag("num", "test problems to decode (default 50)", value="N"),
        Flag("kv_buckets", "KV-length buckets of the engine (default: the run's eval.kv_buckets)", value="N"),
        Flag("split_by_kv_length", "one model call per KV-length bucket (eval.split_by_kv_length)", value=None),
        Flag(
            "decode_attention",
            "xla, paged (the table kernel; interpreted on the CPU) or auto (default: the run's eval.decode_attention)",
            value="NAME",
        ),
    ),
    examples=(
        "python benchmarks/inherit_engine.py --workdir=runs/countdown_inherit --num=50",
        "python benchmarks/inherit_engine.py --workdir=runs/countdown_inherit --kv_buckets=5 --split_by_kv_length",
        "python benchmarks/inherit_engine.py --workdir=runs/countdown_inherit --decode_attention=paged",
    ),
)


def main(argv: list[str]) -> int:
    return run_command(lambda: _main(argv), usage=(ConfigError,), compile_cache=False)


def _main(argv: list[str]) -> None:
    flags, _ = parse_command_line(argv, COMMAND)
    loaded = load_for_inference(flags["workdir"])
    config, tokenizer = loaded.config, loaded.tokenizer
    if config.data.context != "inherit":
        raise ConfigError(f"{flags['workdir']} trained data.context={config.data.context!r}, not 'inherit'")
    num = int_flag(flags, "num", 50, zero_ok=False)
    problems = problems_for({"split": "test"}, config, num)
    task = get_task(config)
    cfg = engine_config(config)
    cfg = dataclasses.replace(
        cfg,
        kv_buckets=int_flag(flags, "kv_buckets", cfg.kv_buckets, zero_ok=False),
        split_by_kv_length=cfg.split_by_kv_length or "split_by_kv_length" in flags,
        decode_attention=flags.get("decode_attention", cfg.decode_attention),
    )
    engine = Engine(loaded.model, cfg, ProtocolIds.from_tokenizer(tokenizer))
    prompts = [tokenizer.encode(task.prompt(p)) for p in problems]
    engine.run(prompts)  # compiles
    start = time.perf_counter()
    out = engine.run(prompts)
    wall = time.perf_counter() - start
    samples = out.flat()
    held = np.asarray([s.kv_slots for s in samples], float)
    unshared = np.asarray([s.kv_slots_unshared for s in samples], float)
    rates = efficiency(out.counters)
    print(
        f"{len(samples)} problems, data.join={config.data.join}, decode_attention={cfg.decode_attention}, "
        f"{out.steps[0]} loop steps in the first batch"
    )
    written = sum(s.written_tokens for s in samples)
    print(f"decode wall (compiled): {wall:.2f} s, {written / wall:.0f} written tokens/s")
    print(f"token-forwards per token fed: {rates['forwards_per_token']:.3f}")
    print(f"KV slots read per live slot: {rates['kv_read_per_live']:.3f}")
    print(
        f"KV slots per problem: held {held.mean():.0f} (each token once), an engine copying contexts "
        f"{unshared.mean():.0f}: {held.mean() / unshared.mean():.2f}x"
    )
    print(f"critical path: mean {np.mean([s.sequential_tokens for s in samples]):.0f} tokens per problem")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
