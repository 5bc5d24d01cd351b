"""The default Countdown demo in the inherit family: a child sees the root's
whole context up to the fork instead of its message alone, the root reads
the children's paths in place (``data.join = "stitch"``), and every thread
tree trains as one tree sequence (about 300 tokens for Countdown-3, so the
rows are 512 long). On the CPU:

    python -m apr_jax.train --config=configs/countdown_inherit.py
"""

import ml_collections

from apr_jax.config.loading import sibling

RUNS_ON = "cpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

default = sibling(__file__, "default")


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.name = "countdown_inherit"
    c.data.context = "inherit"  # message | inherit
    c.data.join = "stitch"  # stitch | linear
    c.data.seq_len = 512  # a whole tree per row (tree sequences of Countdown-3: mean 302, max 348 tokens)
    c.model.max_len = 512
    c.train.batch_size = 12  # about the default's trees per step (a tree fills most of a 512 row)
    return c
