"""Multi-host correctness on one CPU: two processes on localhost (4 virtual
devices each, a local coordinator, gloo collectives) train as one mesh of 8.

- per-step losses equal a one-process, 8-device run fed the same global
  batches (each process's shard of the data, concatenated in process order);
- the run stops mid-way and resumes from the shared checkpoint (orbax arrays
  plus one grain iterator state per process) to the same final parameters;
- the checkpoint written by the two processes restores in one process;
- a run started on only one of two processes fails fast with one clear line.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers.local_cluster import PROCESSES, free_port, run_processes, worker_env
from helpers.tiny import TINY_RUN

from apr_jax.config.loading import load_run_config
from apr_jax.data.build import build_dataset
from apr_jax.data.pipeline import make_iterator
from apr_jax.data.tokenizer import Tokenizer
from apr_jax.evaluation.loading import load_for_inference
from apr_jax.runtime import sharding
from apr_jax.runtime.checkpoint import Checkpointer
from apr_jax.training import train_state
from apr_jax.training.optim import learning_rate_schedule
from apr_jax.training.train_step import make_train_step

STEPS = 4
STOP_AT = 3
TINY = TINY_RUN + [
    "config.task.num_train=160",
    f"config.train.steps={STEPS}",
    "config.train.warmup_steps=2",
    "config.train.log_every=1",
    "config.train.eval_every=100",
    "config.train.checkpoint_every=2",
    "config.eval.num_problems=0",
    "config.mesh.data=8",
]

# Each worker stops at STOP_AT (checkpointed, like a preemption), then the
# same call resumes from the shared workdir and finishes.
WORKER = """
import sys
from apr_jax import train
from apr_jax.training.run import run_training
from apr_jax.runtime.checkpoint import Checkpointer
from apr_jax.config.loading import load_run_config
config = load_run_config(None, sys.argv[2:])
assert run_training(config, sys.argv[1], stop_at={stop_at})["step"] == {stop_at}
assert run_training(config, sys.argv[1])["step"] == {steps}
""".format(stop_at=STOP_AT, steps=STEPS)


def config_args(data_dir: str) -> list[str]:
    return TINY + [f"config.data.dir={data_dir}"]


def reference_run(config) -> tuple[list[float], dict]:
    """One process, eight devices, global batch = both processes' shards in order."""
    info = build_dataset(config)
    tokenizer = Tokenizer(info.tokenizer_path)
    mesh = sharding.make_mesh(sharding.MeshConfig.from_config(config.mesh))
    _, model, optimizer = train_state.build_model_and_optimizer(config, tokenizer.vocab_size, mesh)
    graphs, state = train_state.split(model, optimizer)
    step_fn = make_train_step(
        graphs,
        train_state.shardings_of(state),
        sharding.batch_sharding(mesh),
        grad_accum=config.train.grad_accum,
        learning_rate=learning_rate_schedule(config.train),
    )
    per_process = config.train.batch_size // PROCESSES
    iterators = [
        make_iterator(config, info, "train", batch_size=per_process, process_index=p, process_count=PROCESSES)
        for p in range(PROCESSES)
    ]
    losses = []
    for _ in range(config.train.steps):
        local = [next(it) for it in iterators]
        batch = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
        with jax.set_mesh(mesh):  # as train.py calls the step
            state, metrics = step_fn(
                state, jax.device_put(batch, sharding.batch_sharding(mesh)), jnp.int32(config.train.steps)
            )
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(nnx.to_pure_dict(state.model))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    workdir = str(tmp_path_factory.mktemp("two_process"))
    config = load_run_config(None, config_args(data_dir))
    build_dataset(config)  # built once here, so the workers only read the cache
    port = free_port()
    argv = [sys.executable, "-c", WORKER, workdir, *config_args(data_dir)]
    cache_dir = str(tmp_path_factory.mktemp("jax_cache"))
    results = run_processes(
        [(argv, worker_env(port, i, PROCESSES, 60, cache_dir)) for i in range(PROCESSES)], timeout_s=240
    )
    for i, (code, out, err) in enumerate(results):
        assert code == 0, f"process {i} exited {code}:\n{out[-2000:]}\n{err[-3000:]}"
    return config, workdir, results


@pytest.mark.slow
def test_two_processes_match_one_process_with_eight_devices(two_process_run):
    config, workdir, results = two_process_run
    assert "mesh {'data': 8, 'fsdp': 1, 'tensor': 1}; 8 cpu devices" in results[0][1]
    lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    logged = {l["step"]: l["loss"] for l in lines}
    assert sorted(logged) == list(range(1, STEPS + 1))  # stopped at 3, resumed, finished

    losses, params = reference_run(config)
    np.testing.assert_allclose([logged[s] for s in range(1, STEPS + 1)], losses, rtol=2e-5)
    assert len(set(np.round(losses, 4))) == STEPS  # the batches really differ step to step

    # The two-process checkpoint (params and optimizer state) restores in this
    # single process, onto its own eight-device mesh.
    mesh = sharding.make_mesh(sharding.MeshConfig.from_config(config.mesh))
    _, model, optimizer = train_state.build_model_and_optimizer(
        config, Tokenizer(build_dataset(config).tokenizer_path).vocab_size, mesh
    )
    abstract = [train_state.abstract_like(nnx.to_pure_dict(nnx.state(x))) for x in (model, optimizer)]
    checkpointer = Checkpointer(workdir, read_only=True, async_save=False)
    step, restored, opt_state, meta = checkpointer.restore_latest(*abstract, None)
    assert step == STEPS and meta["config"]["name"] == config.name
    assert int(opt_state["step"]) == STEPS
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), jax.device_get(restored), params)


def test_load_for_inference_reads_two_process_checkpoint(two_process_run):
    _, workdir, _ = two_process_run
    assert load_for_inference(workdir).step == STEPS


def test_checkpoint_holds_iterator_state_of_every_process(two_process_run):
    _, workdir, _ = two_process_run
    data_dir = os.path.join(workdir, "checkpoints", str(STEPS), "data")
    names = sorted(n for n in os.listdir(data_dir) if n.endswith(".json"))
    assert names == [f"process_{i}-of-{PROCESSES}.json" for i in range(PROCESSES)]
    states = [json.load(open(os.path.join(data_dir, n))) for n in names]
    assert states[0] != states[1]  # each process reads its own shard


def test_run_started_on_one_of_two_processes_fails_fast(tmp_path):
    env = worker_env(free_port(), 0, PROCESSES, timeout_s=3)
    argv = [sys.executable, "-m", "apr_jax.train", f"--workdir={tmp_path}/w"]
    started = time.time()
    [(code, _, err)] = run_processes([(argv, env)], timeout_s=60)
    assert time.time() - started < 30
    assert code == 1
    line = [l for l in err.splitlines() if l.startswith("error:")]
    assert line == [line[0]] and "timed out after 3s" in line[0], err[-2000:]
    assert "the 2 processes of coordinator 127.0.0.1:" in line[0]
    assert "--worker=all" in line[0]
