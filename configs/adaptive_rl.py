"""GRPO that prices compute, on top of the adaptive-width demo
(``runs/adaptive``, ``configs/adaptive.py``): the default RL recipe with a
cost per total token and a bonus for a shorter critical path, both relative
to the group's correct rollouts (``rl.token_cost``, ``rl.latency_weight``;
docs/rl.md), so a rollout that solves a problem with fewer children earns
more than one that spawns four. Train the SFT model first, then

    python -m apr_jax.train --config=configs/adaptive.py --workdir=runs/adaptive
    python -m apr_jax.train --config=configs/adaptive_rl.py --workdir=runs/adaptive_rl
"""

import ml_collections

from apr_jax.config.loading import sibling

RUNS_ON = "cpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

default_rl = sibling(__file__, "default_rl")
adaptive = sibling(__file__, "adaptive")


def get_config() -> ml_collections.ConfigDict:
    c = default_rl.get_config()
    sft = adaptive.get_config()
    c.name = "adaptive_rl"
    c.trace = sft.trace  # the SFT run's traces (its dataset and identity)
    c.eval.tokens_per_thread = sft.eval.tokens_per_thread
    c.rl.init_from = "runs/adaptive"
    c.rl.token_cost = 0.3
    c.rl.latency_weight = 0.1
    return c
