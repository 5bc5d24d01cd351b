"""GRPO on top of the default SFT run (``runs/default``): Countdown-3 APR on a
2-core CPU. Train the SFT model first (``python -m apr_jax.train``), then

    python -m apr_jax.train --config=configs/default_rl.py --workdir=runs/default_rl

The ``train`` section here holds the RL optimizer and loop settings (lr, steps
in RL steps, logging, checkpoints); the engine limits are the ``eval`` section's."""

import ml_collections

from apr_jax.config.loading import sibling
from apr_jax.config.sections import RLConfig, section_defaults

RUNS_ON = "cpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

default = sibling(__file__, "default")


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.name = "default_rl"
    c.mode = "rl"
    c.rl = section_defaults(RLConfig)  # every key's meaning: apr_jax.config.sections.RLConfig
    c.rl.init_from = "runs/default"
    c.rl.prompts_per_step = 32  # prompts per RL step (16 and 32 compared: docs/experiments.md)
    c.rl.samples_per_prompt = 8
    c.rl.temperature = 0.6  # sampling temperature of the rollouts
    c.rl.skip_flat_groups = True
    c.rl.eval_every = 10
    c.rl.eval_problems = 100  # first 100 validation problems, greedy

    c.train.steps = 80  # RL steps (what they reach: docs/experiments.md)
    c.train.lr = 5e-5  # the RL learning rate (a run at 1e-4: docs/experiments.md)
    c.train.warmup_steps = 5
    c.train.min_lr_ratio = 1.0  # constant after warm-up
    c.train.weight_decay = 0.0
    c.train.grad_accum = (
        64  # microbatches of 32 x 8 x 9 / 64 = 36 rows (empty ones skipped: fine-grained for packed rows)
    )
    c.train.log_every = 5
    c.train.checkpoint_every = 25
    c.train.time_limit_minutes = 0.0
    c.eval.num_problems = 0
    return c
