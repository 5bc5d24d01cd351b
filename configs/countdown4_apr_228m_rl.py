"""GRPO with the reference study's settings on the 228M APR model: 64 prompts
x 5 samples per step, lr 1e-5, clip 0.2, KL 0.001, binary correctness reward;
starts from ``runs/countdown4_apr_228m`` (configs/countdown4_apr_228m.py).

    python -m apr_jax.train --config=configs/countdown4_apr_228m_rl.py \\
        --workdir=runs/countdown4_apr_228m_rl
"""

from apr_jax.config.loading import sibling
from apr_jax.config.sections import RLConfig, section_defaults

RUNS_ON = "tpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

countdown4_apr_228m = sibling(__file__, "countdown4_apr_228m")


def get_config():
    c = countdown4_apr_228m.get_config()
    c.name = "countdown4_apr_228m_rl"
    c.mode = "rl"
    c.rl = section_defaults(RLConfig)
    c.rl.init_from = "runs/countdown4_apr_228m"
    c.rl.prompts_per_step = 64
    c.rl.samples_per_prompt = 5
    c.rl.temperature = 1.0
    c.rl.clip_low = 0.2
    c.rl.clip_high = 0.2
    c.rl.kl_coef = 0.001
    c.rl.inner_epochs = 1
    c.rl.minibatches = 1
    c.rl.condition_children = (10,)  # the model was trained with c<children> prefixes
    c.rl.rollout_chunks = 8  # 8 prompts x 5 samples x 21 slots per engine run

    c.train.steps = 1000  # RL steps
    c.train.lr = 1e-5
    c.train.warmup_steps = 0
    c.train.min_lr_ratio = 1.0
    c.train.weight_decay = 0.0
    c.train.grad_accum = 16  # microbatches of 6720 / 16 = 420 rows x 4096 tokens
    c.train.log_every = 1
    c.train.checkpoint_every = 50
    c.train.time_limit_minutes = 0.0  # a pod run trains all its steps
    c.eval.num_problems = 0
    return c
