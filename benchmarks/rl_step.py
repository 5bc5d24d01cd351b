"""Time of one GRPO step split into rollout, reward and update, and the share
of padded (wasted) thread slots in the fixed-shape rollout.

Runs ``run_rl`` for ``--steps`` steps in a scratch workdir (logging every
step) and reports the mean over the steps after the first (which compiles).
It starts from ``config.rl.init_from``; with ``--sft_steps N`` and no
checkpoint there, it first trains an N-step SFT model into the scratch dir.

    python benchmarks/rl_step.py --config configs/default_rl.py --steps 4
    python benchmarks/rl_step.py --config configs/default_rl.py --sft_steps 50 \\
        --config.rl.prompts_per_step=4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apr_jax import train  # noqa: E402
from apr_jax.config import load_config  # noqa: E402
from apr_jax.rl.train_rl import run_rl  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default_rl.py")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sft_steps", type=int, default=0)
    parser.add_argument("--workdir", default="")
    args, overrides = parser.parse_known_args()
    overrides = [o.removeprefix("--") for o in overrides]
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step compiles)")
    workdir = args.workdir or tempfile.mkdtemp(prefix="rl_bench_")
    config = load_config(args.config, overrides + [f"config.train.steps={args.steps}",
                                                   "config.train.log_every=1", "config.rl.eval_every=0",
                                                   f"config.train.checkpoint_every={args.steps + 1}"])
    if args.sft_steps and not os.path.isdir(os.path.join(config.rl.init_from, "checkpoints")):
        sft_dir = os.path.join(workdir, "sft")
        sft = load_config(args.config, overrides + [
            "config.mode=sft", f"config.train.steps={args.sft_steps}", "config.eval.num_problems=0",
            f"config.train.checkpoint_every={args.sft_steps}", f"config.train.eval_every={args.sft_steps}"])
        train.run(sft, sft_dir)
        config.rl.init_from = sft_dir
    rl_dir = os.path.join(workdir, "rl")
    run_rl(config, rl_dir)
    rows = [json.loads(line) for line in open(os.path.join(rl_dir, "metrics.jsonl"))][1:]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in
            ("rollout_s", "reward_s", "update_s", "padded_slots", "total_tokens", "threads")}
    step_s = mean["rollout_s"] + mean["reward_s"] + mean["update_s"]
    rl = config.rl
    print(f"RL step ({rl.prompts_per_step} prompts x {rl.samples_per_prompt} samples, "
          f"mean of {len(rows)} steps after the first):")
    for name in ("rollout_s", "reward_s", "update_s"):
        print(f"  {name[:-2]:8s} {mean[name]:8.3f} s  ({mean[name] / step_s:5.1%})")
    print(f"  total    {step_s:8.3f} s")
    print(f"  padded thread slots: {mean['padded_slots']:.1%} (threads per rollout {mean['threads']:.2f})")
    written = mean["total_tokens"] * rl.prompts_per_step * rl.samples_per_prompt
    print(f"  written tokens per step {written:.0f}, {written / step_s:.0f} tokens/s end to end")


if __name__ == "__main__":
    main()
