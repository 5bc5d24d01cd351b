"""The default demo's SoS+ (sequential) baseline: configs/default.py's task,
model and training budget, one search thread per problem and no spawning.

``as_sosp`` turns any APR config into its SoS+ baseline; the other SoS+
configs build on it."""

import ml_collections

from apr_jax.config.loading import sibling

RUNS_ON = "cpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

default = sibling(__file__, "default")


def as_sosp(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """``c`` (an APR config) with SoS+ traces and an engine that never spawns."""
    c.name = name
    c.trace.kind = "sosp"
    c.eval.max_depth = 0
    c.eval.max_children = 1  # the engine's minimum; max_depth = 0 never spawns
    c.eval.max_rounds = 0
    return c


def get_config():
    return as_sosp(default.get_config(), "default_sosp")
