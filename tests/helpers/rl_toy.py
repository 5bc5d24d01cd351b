"""The toy GRPO setting shared by the RL end-to-end tests: Countdown-3 with
small numbers and 2 children (the SFT model is ``conftest.sft``) and RL
overrides that make learning visible in a few dozen steps."""

import os

import jax
from flax import nnx

from apr_jax.evaluation.loading import load_for_inference
from helpers.paths import CONFIGS

TOY = [
    "config.task.num_inputs=3",
    "config.task.max_number=6",
    "config.task.min_target=1",
    "config.task.max_target=12",
    "config.task.num_train=160",
    "config.task.num_validation=8",
    "config.task.num_test=8",
    "config.trace.max_children=2",
    "config.trace.beam_size=2",
    "config.trace.max_nodes=4",
    "config.model.num_layers=2",
    "config.model.d_model=64",
    "config.model.num_heads=2",
    "config.model.num_kv_heads=1",
    "config.model.d_ff=128",
    "config.model.max_len=64",
    "config.data.seq_len=64",
    "config.data.num_workers=1",
    "config.data.vocab_size=64",
    "config.eval.num_problems=0",
    "config.eval.max_children=2",
    "config.eval.max_rounds=1",
    "config.eval.tokens_per_thread=40",
    "config.eval.row_buckets=1",
    "config.eval.kv_buckets=1",  # one compiled branch per engine call keeps compiles short
]
RL = [
    "config.rl.prompts_per_step=8",
    "config.rl.samples_per_prompt=4",
    "config.train.lr=3e-3",
    "config.train.warmup_steps=0",
    "config.rl.format_penalty=1.0",
    "config.rl.kl_coef=0.0",
    "config.train.log_every=1",
    "config.rl.temperature=1.0",
    "config.rl.max_threads=0",
    "config.rl.eval_every=0",
    "config.train.grad_accum=8",
]
RL_CONFIG = os.path.join(CONFIGS, "default_rl.py")


def rl_overrides(sft, *extra):
    return TOY + RL + [f"config.data.dir={sft['data']}", f"config.rl.init_from={sft['sft']}", *extra]


def final_params(workdir):
    """(step, params) of the newest checkpoint in ``workdir``, whatever
    topology wrote it."""
    loaded = load_for_inference(workdir)
    return loaded.step, jax.device_get(nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param)))
