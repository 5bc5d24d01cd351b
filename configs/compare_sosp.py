"""SoS+ side of the laptop comparison (`python -m apr_jax.compare`):
configs/compare_apr.py's task, search, model and training tokens with one
sequential search thread per problem. Training rows are 160 tokens, so the
SoS+ traces that are longer are cut at 160 tokens (the regime's point: the
sequential search does not fit the context)."""

from apr_jax.config.loading import sibling

RUNS_ON = "cpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

compare_apr = sibling(__file__, "compare_apr")
default_sosp = sibling(__file__, "default_sosp")


def get_config():
    return default_sosp.as_sosp(compare_apr.get_config(), "compare_sosp")
