"""Countdown-4 APR with the reference's ranges (numbers 1-99, targets 10-100)
on one H200: a ~40M decoder with packed 1024-token rows in bf16, trained in
10 minutes, then evaluated on 1,000 held-out problems.

The schedule is sized to the time limit: ``train.steps`` is the number of
steps that fit in it at ``STEP_SECONDS`` per step, after ``STARTUP_SECONDS``
for the compile, the first step and the checkpoint/validation pauses, so the
warm-up and the cosine decay finish inside the limit; where steps run slower,
the run's step budget (``apr_jax.training.step_budget``) plans the steps that fit and
anneals there. ``STEP_SECONDS`` is stated, not yet measured: 128 x 1024 tokens
x 270 MFLOP/token (``flops_per_token``) = 35.4 PFLOP per step, at an assumed
35% of the H200's 989 TFLOP/s bf16 peak = 0.10 s. ``bash benchmarks/accelerator.sh`` measures it on the
device (``step_ms`` in its summary); put that figure here.

Its traces are streamed (``data.traces``): the build draws the 202,000
problems and trains the tokenizer on a 10,000-tree sample, and the input
pipeline's worker processes generate each trace when it is read. 128 rows x
1024 tokens per 0.10 s step is 1.3M row tokens/s, which the training
process's reader threads alone do not reliably supply, so 4 pipeline workers
generate them (``python -m benchmarks.data_throughput`` measures it; figures
in docs/experiments.md).
"""

from apr_jax.config.loading import sibling

RUNS_ON = "gpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

default = sibling(__file__, "default")

TIME_LIMIT_MINUTES = 10.0
STEP_SECONDS = 0.10
STARTUP_SECONDS = 90.0  # compile + first step (~60 s) and two checkpoints/validations


def steps_that_fit(minutes: float, step_seconds: float = STEP_SECONDS, startup_seconds: float = STARTUP_SECONDS) -> int:
    """Training steps that fit in ``minutes`` at ``step_seconds`` each."""
    return max(1, int((60 * minutes - startup_seconds) / step_seconds))


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
    c.data.traces = "streamed"
    c.data.pipeline_workers = 4

    c.model.num_layers = 8
    c.model.d_model = 640
    c.model.num_heads = 10
    c.model.num_kv_heads = 10
    c.model.d_ff = 1728
    c.model.max_len = 1024
    c.model.compute_dtype = "bfloat16"
    c.model.attention = "auto"

    c.train.batch_size = 128
    c.train.steps = steps_that_fit(TIME_LIMIT_MINUTES)  # 5,100
    c.train.lr = 1e-3
    c.train.warmup_steps = c.train.steps // 20  # 5%: 255
    c.train.b2 = 0.95
    c.train.log_every = 100
    c.train.eval_every = c.train.steps // 2
    c.train.checkpoint_every = c.train.steps // 2
    c.train.time_limit_minutes = TIME_LIMIT_MINUTES

    c.eval.num_problems = 1000
    c.eval.max_children = 8
    c.eval.tokens_per_thread = 1024
    c.eval.batch_problems = 256
    return c
