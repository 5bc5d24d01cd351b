"""SoS+ side of the laptop comparison (`python -m apr_jax.compare`):
configs/compare_apr.py's task, model and training tokens with one sequential
search thread per problem. Training rows are 128 tokens, so the 41% of SoS+
traces that are longer are cut at 128 tokens (the regime's point: the
sequential search does not fit the context)."""

from apr_jax.config import sibling

compare_apr = sibling(__file__, "compare_apr")


def get_config():
    c = compare_apr.get_config()
    c.name = "compare_sosp"
    c.trace.kind = "sosp"
    c.eval.max_depth = 0
    c.eval.max_children = 1
    c.eval.max_rounds = 0
    return c
