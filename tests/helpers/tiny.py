"""The tiny model and run the tests share: a 2-layer d=32 decoder
(``tiny_model_config``), and ``TINY_RUN``, that decoder on a few hundred easy
Countdown-3 problems, batch 8 of 128-token rows. Modules add their own step
counts and schedules after it (later overrides win)."""

from apr_jax.model.config import ModelConfig

TINY_RUN = [
    "config.task.num_validation=16",
    "config.task.num_test=16",
    "config.model.num_layers=2",
    "config.model.d_model=32",
    "config.model.num_heads=2",
    "config.model.num_kv_heads=1",
    "config.model.d_ff=64",
    "config.model.max_len=128",
    "config.data.seq_len=128",
    "config.data.num_workers=1",
    "config.train.batch_size=8",
    "config.train.eval_batches=1",
    "config.eval.row_buckets=2",
    "config.eval.kv_buckets=1",  # few engine branches: short compiles
]

# Six SFT steps on 240 problems, logged and checkpointed every two.
SIX_STEPS = TINY_RUN + [
    "config.task.num_train=240",
    "config.train.steps=6",
    "config.train.log_every=2",
    "config.train.checkpoint_every=2",
]


def tiny_model_config(**overrides) -> ModelConfig:
    """A 2-layer, d=32 decoder with grouped-query attention (4 heads, 2 KV
    heads) over a 64-token vocabulary and 64 positions; ``overrides`` change
    any field."""
    fields = dict(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, d_ff=64, max_len=64)
    return ModelConfig(**{**fields, **overrides})
