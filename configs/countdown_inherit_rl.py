"""GRPO on top of the inherit-family demo (``runs/countdown_inherit``): the
default RL recipe (``configs/default_rl.py``) with the inherit family's data
and model settings. Each rollout trains as one tree sequence, as its trees do
in SFT (``apr_jax.rl.tree_pack``). Train the SFT model first, then

    python -m apr_jax.train --config=configs/countdown_inherit.py --workdir=runs/countdown_inherit
    python -m apr_jax.train --config=configs/countdown_inherit_rl.py --workdir=runs/countdown_inherit_rl
"""

import ml_collections

from apr_jax.config.loading import sibling

RUNS_ON = "cpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

default_rl = sibling(__file__, "default_rl")
countdown_inherit = sibling(__file__, "countdown_inherit")


def get_config() -> ml_collections.ConfigDict:
    c = default_rl.get_config()
    sft = countdown_inherit.get_config()
    c.name = "countdown_inherit_rl"
    c.data.context, c.data.join = sft.data.context, sft.data.join
    c.data.seq_len = sft.data.seq_len  # the update's rows: one or more rollouts' tree sequences each
    c.model.max_len = sft.model.max_len
    c.rl.init_from = "runs/countdown_inherit"
    c.train.grad_accum = 32  # 32 x 8 rollouts = 256 tree-sequence rows: 8 rows of 512 per microbatch
    return c
