"""Adaptive width: the default demo's task, model and schedule, trained on
traces whose width follows the problem's difficulty.

Two parts of the width follow the problem, each from what the root can read:
- **whether to fork**: a problem where at least a third of the distinct first
  moves can still reach the target (``trace.sequential_share``; 7% of this
  task's problems) is searched by the root alone, and its trace is the
  SoS+ trace. The share is a function of the prompt, and one the 0.8M model
  does not learn (``python -m benchmarks.spawn_decision``): it forks on
  nearly every problem.
- **how many children**: a harder one spawns rounds of 4 children over the
  search's 8 best first moves (``trace.beam_size``), and spawns a second
  round only when every child of the first came back with nothing. That
  choice follows the join block the root has just read, and the model learns it.
So the harder the problem, the more children (``apr_jax.tasks.countdown.traces``).

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
    c.trace.beam_size = 8  # first moves searched, in rounds of max_children
    c.trace.sequential_share = 0.34
    c.trace.viable_children = 2.0  # ceil(2 / share) >= max_children: every round spawns 4
    c.eval.num_problems = 200
    c.eval.tokens_per_thread = 256  # room for a root that searches alone and writes the whole SoS+ trace
    return c
