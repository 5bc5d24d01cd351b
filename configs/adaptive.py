"""Adaptive width: the default demo's task, model and schedule, trained on
traces whose width follows the problem's difficulty.

The root of an easy problem (one where at least a quarter of the distinct
first moves can still reach the target, ``trace.sequential_share``) searches
it alone and writes the SoS+ trace; the root of a harder one spawns
``ceil(0.5 / share)`` children per round, 3 or 4, the harder the wider
(``apr_jax.tasks.countdown.traces``). The share is a function of the prompt, so
whether and how wide to fork is the model's to learn from what it reads.

``python -m benchmarks.tokens_per_trace --width`` prints the traces' widths
and token costs; ``python -m apr_jax.evaluate --workdir=runs/adaptive``
prints how the trained model's width follows difficulty.
"""

from apr_jax.config.loading import sibling

RUNS_ON = "cpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

default = sibling(__file__, "default")


def get_config():
    c = default.get_config()
    c.name = "adaptive"
    c.trace.kind = "apr"
    c.trace.sequential_share = 0.25
    c.trace.viable_children = 0.5
    c.eval.tokens_per_thread = 256  # room for a root that searches alone and writes the whole SoS+ trace
    return c
