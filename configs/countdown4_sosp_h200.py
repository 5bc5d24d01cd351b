"""SoS+ (sequential) baseline for configs/countdown4_apr_h200.py: the same
task, model and training budget on one H200, one search thread per problem."""

from apr_jax.config import sibling

countdown4_apr_h200 = sibling(__file__, "countdown4_apr_h200")


def get_config():
    c = countdown4_apr_h200.get_config()
    c.name = "countdown4_sosp_h200"
    c.trace.kind = "sosp"
    c.eval.max_depth = 0
    c.eval.max_children = 1
    c.eval.max_rounds = 0
    return c
