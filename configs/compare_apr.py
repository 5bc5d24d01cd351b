"""APR side of the laptop comparison with SoS+ (`python -m apr_jax.compare`):
a regime where the context binds on 2 CPU cores.

Countdown-4 with numbers 1-10 and targets 10-30, the default model and its
256-token context. Measured with `python -m benchmarks.tokens_per_trace
--contexts 128,192,256,384` (default search: beam 4, 16 nodes per branch):
63% of SoS+ traces are longer than 256 tokens (80% > 128, 50% > 384; mean
396), while the longest APR thread is 203 tokens (95th percentile 186). It is
the smallest candidate setting with at least 30% of SoS+ traces over the
context (Countdown-3 has none over 256). Both runs train 800 steps of 16 packed
256-token rows (3.3M tokens, no time limit, so the budgets are equal); each
takes 7-12 minutes on 2 CPU cores. Both are conditioned (`c<children>` /
`b<token budget>` prefixes), which the compute sweeps use.
"""

from apr_jax.config import sibling

default = sibling(__file__, "default")


def get_config():
    c = default.get_config()
    c.name = "compare_apr"
    c.task.num_inputs = 4
    c.task.min_number = 1
    c.task.max_number = 10
    c.task.min_target = 10
    c.task.max_target = 30
    c.task.num_train = 8000  # of about 10,800 solvable problems in these ranges
    c.task.num_validation = 200
    c.task.num_test = 400

    c.trace.kind = "apr"
    c.trace.condition = True

    c.data.seq_len = 256
    c.model.max_len = 256

    c.train.steps = 800
    c.train.time_limit_minutes = 0.0  # equal training tokens: both runs finish their steps

    c.eval.num_problems = 200
    c.eval.tokens_per_thread = 224
    c.eval.batch_problems = 50
    return c
