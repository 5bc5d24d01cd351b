"""The reference study's SoS+ (sequential) baseline at 228M: the same model
and schedule as countdown4_apr_228m, one long thread per problem."""

from apr_jax.config import sibling

countdown4_apr_228m = sibling(__file__, "countdown4_apr_228m")


def get_config():
    c = countdown4_apr_228m.get_config()
    c.name = "countdown4_sosp_228m"
    c.trace.kind = "sosp"
    c.eval.max_depth = 0
    c.eval.max_children = 1  # the engine's minimum; max_depth = 0 never spawns
    c.eval.max_rounds = 0
    return c
