"""APR side of the laptop comparison with SoS+ (`python -m apr_jax.compare`):
a regime where the context binds on 2 CPU cores.

The default demo's Countdown-3 task and model with a 128-token context, and
APR traces of at most 3 children per spawn. Measured with
`python -m benchmarks.tokens_per_trace --contexts 96,128,160 --train 2000
--test 500` (and `--max-children 3`): 41% of SoS+ traces are longer than
128 tokens (60% > 96, 30% > 160; mean 118), while with 3 children the
longest thread of an APR trace (its root) is over 128 tokens for 5.6% of
problems (42% with the default 4 children, whose join blocks are longer).
Countdown-4 binds harder (63% of SoS+ traces over 256) but the 0.8M model does
not learn it in a CPU budget (0% held-out APR accuracy after 800 steps), so
the comparison uses the task that it does learn. Both runs train 800 steps of
32 packed 128-token rows (3.3M tokens, the default demo's budget, no time
limit, so the budgets are equal). Both are conditioned (`c<children>` /
`b<token budget>` prefixes), which the compute sweeps use; a conditioned APR
trace draws 1-3 children and spawns once (`apr_jax.countdown.traces`).
"""

from apr_jax.config import sibling

default = sibling(__file__, "default")


def get_config():
    c = default.get_config()
    c.name = "compare_apr"

    c.trace.kind = "apr"
    c.trace.max_children = 3
    c.trace.condition = True

    c.data.seq_len = 128
    c.model.max_len = 128

    c.train.batch_size = 32
    c.train.steps = 800
    c.train.time_limit_minutes = 0.0  # equal training tokens: both runs finish their steps

    c.eval.num_problems = 200
    c.eval.max_children = 3
    c.eval.tokens_per_thread = 128
    c.eval.batch_problems = 100
    return c
