"""The default demo's SoS+ (sequential) baseline: configs/default.py's task,
model and training budget, one search thread per problem and no spawning."""

from apr_jax.config import sibling

default = sibling(__file__, "default")


def get_config():
    c = default.get_config()
    c.name = "default_sosp"
    c.trace.kind = "sosp"
    c.eval.max_depth = 0
    c.eval.max_children = 1
    c.eval.max_rounds = 0
    return c
