"""Your own task: APR on the bundled arithmetic word-problem traces
(``examples/arithmetic``, written by ``python -m apr_jax.tasks.examples.arithmetic``),
scored by the numeric answer checker. From scratch on the CPU:

    python -m apr_jax.train --config=configs/arithmetic_traces.py

or from a pretrained model: convert it with this config as the base
(``python -m apr_jax.convert --hf_dir=DIR --out=OUT --config=configs/arithmetic_traces.py``)
and train ``--config=OUT/config.py`` (docs/tasks.md)."""

import os

import ml_collections

from apr_jax.config.loading import sibling

RUNS_ON = "cpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)

default = sibling(__file__, "default")
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "arithmetic")


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.name = "arithmetic_traces"
    c.task = ml_collections.ConfigDict()
    c.task.name = "jsonl_traces"
    c.task.train = os.path.join(EXAMPLES, "train.jsonl")
    c.task.validation = os.path.join(EXAMPLES, "validation.jsonl")
    c.task.test = os.path.join(EXAMPLES, "test.jsonl")
    c.task.checker = "numeric"  # exact | numeric | module:function
    c.task.answer_prefix = "Answer:"  # the answer is what follows it on the root's last such line

    c.data.vocab_size = 128
    c.train.steps = 400
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.train.time_limit_minutes = 0.0
    c.eval.num_problems = 32  # the whole test split
    c.eval.max_children = 3
    c.eval.max_rounds = 1
    c.eval.tokens_per_thread = 64
    return c
