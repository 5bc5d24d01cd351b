"""The reference study's SoS+ (sequential) baseline at 228M: the same model
and schedule as countdown4_apr_228m, one long thread per problem."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import countdown4_apr_228m  # noqa: E402


def get_config():
    c = countdown4_apr_228m.get_config()
    c.name = "countdown4_sosp_228m"
    c.trace.kind = "sosp"
    c.eval.max_depth = 0
    c.eval.max_children = 0
    c.eval.max_rounds = 0
    return c
