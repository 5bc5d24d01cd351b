"""APR side of the laptop comparison with SoS+ (`python -m apr_jax.compare`):
a regime where the context binds on 2 CPU cores.

Countdown-4 with numbers 1-10 and targets 10-30, the default demo's 0.8M
model with a 160-token context, and a search of at most 8 nodes per root
branch (beam 4). The root spawns one child per first operation, so a child
searches three numbers, writing more than the root writes for it (the
critical path is then well under half of all tokens). Most SoS+ traces of
this task are longer than the 160-token context, while APR threads fit it:
`compare.md`'s caption gives the shares. Countdown-3 (the default demo's task)
binds less and its children write little more than their messages. Measured
figures of both: docs/experiments.md.

Both runs train 1200 steps of 32 packed 160-token rows (6.1M tokens, no time
limit, so the budgets are equal). Both are conditioned (`c<children>` /
`b<token budget>` prefixes), which the compute sweeps use; a conditioned APR
trace draws 1-4 children and spawns once (`apr_jax.tasks.countdown.traces`).
"""

from apr_jax.config.loading import sibling

RUNS_ON = "cpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

default = sibling(__file__, "default")


def get_config():
    c = default.get_config()
    c.name = "compare_apr"
    c.task.num_inputs = 4
    c.task.max_number = 10
    c.task.max_target = 30
    c.task.num_train = 8000  # of about 10,800 solvable problems in these ranges

    c.trace.kind = "apr"
    c.trace.max_children = 4
    c.trace.max_nodes = 8
    c.trace.condition = True

    c.data.seq_len = 160
    c.model.max_len = 160

    c.train.batch_size = 32
    c.train.steps = 1200
    c.train.time_limit_minutes = 0.0  # equal training tokens: both runs finish their steps

    c.eval.num_problems = 200
    c.eval.max_children = 4
    c.eval.tokens_per_thread = 160
    c.eval.batch_problems = 100
    return c
