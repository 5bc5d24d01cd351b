"""Default: APR on an easy Countdown-3, sized to run end to end on a 2-core CPU.

Every key not set here keeps the default written, with its meaning, in
``apr_jax/config/sections.py`` (data, train, eval, rl), ``apr_jax/model/config.py``
(model), ``apr_jax/tasks/countdown/traces.py`` (trace) and ``apr_jax/runtime/sharding.py``
(mesh); ``python -m apr_jax.train --print_config`` prints the whole config."""

import ml_collections

from apr_jax.config.sections import default_config

RUNS_ON = "cpu"  # what it is sized for: cpu (a laptop), gpu (one GPU) or tpu (a pod slice)


def get_config() -> ml_collections.ConfigDict:
    c = default_config()
    c.name = "default"
    c.mode = "sft"  # sft | rl

    c.task = ml_collections.ConfigDict()
    c.task.name = "countdown"  # countdown | jsonl_traces (your own traces: configs/arithmetic_traces.py)
    c.task.num_inputs = 3
    c.task.min_number = 1
    c.task.max_number = 20
    c.task.min_target = 10
    c.task.max_target = 50
    c.task.num_train = 8000  # about all the unique solvable problems in these ranges
    c.task.num_validation = 200
    c.task.num_test = 200
    c.task.seed = 0

    c.trace.kind = "apr"  # apr | sosp

    c.model.num_layers = 4
    c.model.d_model = 128
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.d_ff = 384
    c.model.max_len = 256
    # No time limit (train.time_limit_minutes = 0): the demo trains all its steps on any
    # machine, so its result does not depend on the machine's speed.
    return c
