"""Inherit-family side of the laptop comparison (`python -m apr_jax.compare`):
configs/compare_apr.py's task, search, model and training tokens, with each
child seeing the root's context up to the fork and the root reading the
children's paths in place (``data.join = "stitch"``). A whole thread tree
trains as one tree sequence (the training log prints their lengths: a few
hundred tokens here), so the rows are 640 long and a step holds 8 of them:
compare_apr's 32 x 160 token slots. A child's context is the root's prefix
plus its own path, so this family's threads need more context than the
message family's 160 (`compare.md`'s caption gives both).
"""

from apr_jax.config.loading import sibling

RUNS_ON = "cpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

compare_apr = sibling(__file__, "compare_apr")


def get_config():
    c = compare_apr.get_config()
    c.name = "compare_inherit"
    c.data.context = "inherit"
    c.data.join = "stitch"
    c.data.seq_len = 640
    c.model.max_len = 640
    c.train.batch_size = 8
    return c
