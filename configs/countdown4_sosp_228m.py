"""The reference study's SoS+ (sequential) baseline at 228M: the same model
and schedule as countdown4_apr_228m, one long thread per problem."""

from apr_jax.config.loading import sibling

RUNS_ON = "tpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

countdown4_apr_228m = sibling(__file__, "countdown4_apr_228m")
default_sosp = sibling(__file__, "default_sosp")


def get_config():
    return default_sosp.as_sosp(countdown4_apr_228m.get_config(), "countdown4_sosp_228m")
