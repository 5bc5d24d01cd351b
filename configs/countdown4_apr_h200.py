"""Countdown-4 APR with the reference's ranges (numbers 1-99, targets 10-100)
on one H200: a ~40M decoder with packed 1024-token rows in bf16, trained for
at most 10 minutes (the step count is an upper bound; the time limit stops it),
then evaluated on 1,000 held-out problems."""

from apr_jax.config import sibling

default = sibling(__file__, "default")


def get_config():
    c = default.get_config()
    c.name = "countdown4_apr_h200"
    c.task.num_inputs = 4
    c.task.max_number = 99
    c.task.min_target = 10
    c.task.max_target = 100
    c.task.num_train = 200_000
    c.task.num_validation = 1000
    c.task.num_test = 1000

    c.trace.kind = "apr"
    c.trace.max_children = 8
    c.trace.beam_size = 8

    c.data.vocab_size = 256
    c.data.seq_len = 1024

    c.model.num_layers = 8
    c.model.d_model = 640
    c.model.num_heads = 10
    c.model.num_kv_heads = 10
    c.model.d_ff = 1728
    c.model.max_len = 1024
    c.model.compute_dtype = "bfloat16"
    c.model.attention = "auto"

    c.train.batch_size = 128
    c.train.steps = 12_000
    c.train.lr = 1e-3
    c.train.warmup_steps = 300
    c.train.b2 = 0.95
    c.train.log_every = 100
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    c.train.time_limit_minutes = 10.0

    c.eval.num_problems = 1000
    c.eval.max_children = 8
    c.eval.tokens_per_thread = 1024
    c.eval.batch_problems = 256
    return c
