"""SoS+ (sequential) baseline for configs/countdown4_apr_h200.py: the same
task, model and training budget on one H200, one search thread per problem."""

from apr_jax.config.loading import sibling

RUNS_ON = "gpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

countdown4_apr_h200 = sibling(__file__, "countdown4_apr_h200")
default_sosp = sibling(__file__, "default_sosp")


def get_config():
    return default_sosp.as_sosp(countdown4_apr_h200.get_config(), "countdown4_sosp_h200")
