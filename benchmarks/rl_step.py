"""Time of one GRPO step split into rollout, reward and update, the share
of padded (wasted) thread slots in the fixed-shape rollout and of padding
tokens in the update's forwards.

Runs ``run_rl`` for ``--steps`` steps in a scratch workdir (logging every
step) and reports the mean over the steps after the first (which compiles).
It starts from ``config.rl.init_from``; with ``--sft_steps N`` and no
checkpoint there, it first trains an N-step SFT model into the scratch dir.

``--compare`` instead times the two update paths on the same rollouts: each
step rolls out once and runs the packed update (``rl.packed_update=True``,
host packing included) and the one-thread-per-row update on copies of the
policy, alternating which goes first; the policy continues from the one the
config selects. It prints each path's update time per rollout, padding share
and the largest loss difference between them.

    python benchmarks/rl_step.py --config configs/default_rl.py --steps 4
    python benchmarks/rl_step.py --config configs/default_rl.py --sft_steps 50 \\
        --config.rl.prompts_per_step=4
    python benchmarks/rl_step.py --compare --steps 5 --config.rl.init_from=runs/default
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apr_jax.config.sections import load_run_config  # noqa: E402
from apr_jax.rl.train_rl import make_task, run_rl  # noqa: E402
from apr_jax.training.run import run_training  # noqa: E402

PATHS = {True: "packed", False: "one thread per row"}


def compare_updates(config, workdir: str, steps: int) -> None:
    """Both update paths on the same rollouts, alternating (module docstring)."""
    task = make_task(config, workdir)
    rollouts = config.rl.prompts_per_step * config.rl.samples_per_prompt
    seconds = {True: [], False: []}
    padding = {True: [], False: []}
    loss_diff = []
    for step in range(steps):
        collected = task.collect()
        if collected.keep_N is not None and not collected.keep_N.any():
            continue
        results = {}
        for packed in (True, False) if step % 2 else (False, True):
            state = jax.block_until_ready(jax.tree.map(jnp.copy, task.state))  # the update donates it
            start = time.perf_counter()
            with jax.set_mesh(task.mesh):
                state, metrics = task.update(state, task.update_batch(collected, packed), task.schedule_updates())
                metrics = jax.device_get(metrics)
            results[packed] = (state, metrics, time.perf_counter() - start)
        task.state = results[bool(config.rl.packed_update)][0]
        loss = {p: float(results[p][1]["loss"]) for p in results}
        loss_diff.append((abs(loss[True] - loss[False]), abs(loss[False])))
        if step:  # the first step compiles both
            for p in results:
                seconds[p].append(results[p][2])
                padding[p].append(float(results[p][1]["update_padding"]))
        print(
            f"step {step}: "
            + ", ".join(
                f"{PATHS[p]} {results[p][2]:.3f} s (padding {float(results[p][1]['update_padding']):.1%})"
                for p in results
            ),
            flush=True,
        )
    if not seconds[True]:
        print("no timed step updated (every group flat); run more --steps")
        return
    print(f"GRPO update ({rollouts} rollouts, {len(seconds[True])} timed steps after the first, same rollouts):")
    for p in (False, True):
        print(
            f"  {PATHS[p]:20s} {np.mean(seconds[p]):8.3f} s  {1e3 * np.mean(seconds[p]) / rollouts:7.2f} "
            f"ms per rollout  padding share {np.mean(padding[p]):5.1%}"
        )
    diff, size = max(loss_diff)
    print(
        f"  speed-up {np.mean(seconds[False]) / np.mean(seconds[True]):.2f}x; largest loss difference "
        f"{diff:.1e} (at a loss of {size:.1e}; float32 sums in another order)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default_rl.py")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sft_steps", type=int, default=0)
    parser.add_argument("--workdir", default="")
    parser.add_argument(
        "--compare", action="store_true", help="time the packed and the one-thread-per-row update on the same rollouts"
    )
    args, overrides = parser.parse_known_args()
    overrides = [o.removeprefix("--") for o in overrides]
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step compiles)")
    workdir = args.workdir or tempfile.mkdtemp(prefix="rl_bench_")
    config = load_run_config(
        args.config,
        overrides
        + [
            f"config.train.steps={args.steps}",
            "config.train.log_every=1",
            "config.rl.eval_every=0",
            f"config.train.checkpoint_every={args.steps + 1}",
        ],
    )
    if args.sft_steps and not os.path.isdir(os.path.join(config.rl.init_from, "checkpoints")):
        sft_dir = os.path.join(workdir, "sft")
        sft = load_run_config(
            args.config,
            overrides
            + [
                "config.mode=sft",
                f"config.train.steps={args.sft_steps}",
                "config.eval.num_problems=0",
                f"config.train.checkpoint_every={args.sft_steps}",
                f"config.train.eval_every={args.sft_steps}",
            ],
        )
        run_training(sft, sft_dir)
        config.rl.init_from = sft_dir
    rl_dir = os.path.join(workdir, "rl")
    if args.compare:
        compare_updates(config, rl_dir, args.steps)
        return
    run_rl(config, rl_dir)
    rows = [json.loads(line) for line in open(os.path.join(rl_dir, "metrics.jsonl"))][1:]
    mean = {
        k: float(np.mean([r[k] for r in rows]))
        for k in ("rollout_s", "reward_s", "update_s", "padded_slots", "total_tokens", "threads")
    }
    updated = [r["update_padding"] for r in rows if "update_padding" in r]
    step_s = mean["rollout_s"] + mean["reward_s"] + mean["update_s"]
    rl = config.rl
    print(
        f"RL step ({rl.prompts_per_step} prompts x {rl.samples_per_prompt} samples, "
        f"mean of {len(rows)} steps after the first):"
    )
    for name in ("rollout_s", "reward_s", "update_s"):
        print(f"  {name[:-2]:8s} {mean[name]:8.3f} s  ({mean[name] / step_s:5.1%})")
    print(f"  total    {step_s:8.3f} s")
    print(f"  padded thread slots: {mean['padded_slots']:.1%} (threads per rollout {mean['threads']:.2f})")
    rollouts = rl.prompts_per_step * rl.samples_per_prompt
    path = "packed" if rl.packed_update else "one thread per row"
    print(
        f"  update ({path}): {1e3 * mean['update_s'] / rollouts:.2f} ms per rollout, padding share "
        + (f"{np.mean(updated):.1%}" if updated else "- (no step updated)")
    )
    written = mean["total_tokens"] * rl.prompts_per_step * rl.samples_per_prompt
    print(f"  written tokens per step {written:.0f}, {written / step_s:.0f} tokens/s end to end")


if __name__ == "__main__":
    main()
