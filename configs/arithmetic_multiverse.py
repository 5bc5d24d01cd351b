"""The inherit family on your own data: the bundled arithmetic problems written
as Multiverse-style tagged text (``examples/arithmetic_mv``, from
``python -m apr_jax.tasks.examples.arithmetic --format=multiverse``). Each path
sees the problem; the conclusion reads every path in place (``data.join =
"stitch"``); every tree trains as one tree sequence. From scratch on the CPU:

    python -m apr_jax.train --config=configs/arithmetic_multiverse.py
"""

import os

import ml_collections

from apr_jax.config.loading import sibling

RUNS_ON = "cpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

arithmetic = sibling(__file__, "arithmetic_traces")
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "arithmetic_mv")


def get_config() -> ml_collections.ConfigDict:
    c = arithmetic.get_config()
    c.name = "arithmetic_multiverse"
    for split in ("train", "validation", "test"):
        c.task[split] = os.path.join(EXAMPLES, f"{split}.jsonl")
    c.task.format = "multiverse"  # tree | multiverse | threadweaver
    c.task.max_depth = 1  # the deepest nesting of <Parallel> blocks the files may hold
    c.data.context = "inherit"  # message | inherit: a path sees the problem and the outlines
    c.data.join = "stitch"  # stitch | linear: how the conclusion reads the paths
    return c
