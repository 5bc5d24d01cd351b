"""`python -m apr_jax.train`: supervised training (and later RL) from a config.

    python -m apr_jax.train --workdir=DIR --config=configs/NAME.py --config.train.lr=1e-3

With no flags it trains ``configs/default.py`` into ``runs/default``. Running
the same command again on the same workdir resumes from the newest readable
checkpoint. SIGTERM (TPU preemption) saves a checkpoint and exits cleanly.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from apr_jax import config as config_lib
from apr_jax import sharding
from apr_jax.checkpoint import Checkpointer, CheckpointError, encode_file
from apr_jax.metrics_log import MetricsLogger
from apr_jax.model.config import ModelConfig, flops_per_token, num_params, peak_flops_per_device
from apr_jax.model.transformer import Transformer
from apr_jax.optim import learning_rate_schedule, make_optimizer
from apr_jax.train_step import make_eval_step, make_train_step

PREEMPTED_EXIT = 0


class TrainingError(RuntimeError):
    """A fault that stops training; the message is one line for the user."""


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checkpoints and exits at the next step."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM,):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Give the signals back (once everything is saved, SIGTERM may kill)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.signal = signum


def save_last_step(step: int, last_saved: int, save: Any, checkpointer: Checkpointer,
                   logger: MetricsLogger, stop: _StopFlag) -> None:
    """Checkpoint ``step`` unless it already is, wait for the write to land,
    and on a stop signal tell the user how to resume."""
    if step != last_saved:
        save(step)
    checkpointer.wait()
    if stop.signal is not None:
        logger.print(f"received signal {stop.signal}: saved step {step} to "
                     f"{checkpointer.directory}; rerun the same command to resume")


def close_run(checkpointer: Checkpointer, logger: MetricsLogger, stop: _StopFlag) -> None:
    """Finish pending writes, close logs and give SIGTERM back to its old handler."""
    checkpointer.close()
    logger.close()
    stop.uninstall()


def default_workdir(config: ml_collections.ConfigDict) -> str:
    return os.path.join("runs", config.name)


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuse a workdir that holds a run of another config; record ours."""
    path = os.path.join(workdir, "config.json")
    checkpoints = os.path.join(workdir, "checkpoints")
    # A config.json without checkpoints is from a start that failed (bad input):
    # it holds no run yet, so the corrected config replaces it.
    if os.path.exists(path) and os.path.isdir(checkpoints) and any(
            name.isdigit() for name in os.listdir(checkpoints)):
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise TrainingError(f"{path} is unreadable ({e}); move it away to start over") from None
        diffs = config_lib.identity_diff(saved, config)
        if diffs:
            raise TrainingError(f"workdir {workdir} holds a run of a different config: "
                                f"{'; '.join(diffs[:3])}; use another --workdir")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(config_lib.to_json(config))
        os.replace(tmp, path)


def check_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
    """The per-process batch size; one clear error when the batch does not divide."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch = config.train.batch_size
    micro = batch // config.train.grad_accum
    if micro % shards:
        raise TrainingError(
            f"config.train.batch_size={batch} (microbatch {micro} with grad_accum="
            f"{config.train.grad_accum}) does not divide over the {shards} data-parallel devices "
            f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})")
    if batch % jax.process_count():
        raise TrainingError(f"config.train.batch_size={batch} does not divide over "
                            f"{jax.process_count()} processes")
    return batch // jax.process_count()


def build_data_once(config: ml_collections.ConfigDict) -> Any:
    """Process 0 builds (or finds) the cached dataset; the others wait for it,
    so processes sharing a filesystem never build the same cache at once."""
    from apr_jax.data.build import build_dataset
    from jax.experimental import multihost_utils

    if jax.process_index() == 0:
        info = build_dataset(config, log=sys.stdout)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("apr_jax: dataset built")
    if jax.process_index() != 0:
        info = build_dataset(config, log=None)
    return info


def abstract_like(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def build_model_and_optimizer(config: ml_collections.ConfigDict, vocab_size: int,
                              mesh: jax.sharding.Mesh):
    model_cfg = ModelConfig.from_config(config.model, vocab_size)
    model = sharding.create_sharded_model(
        lambda: Transformer(model_cfg, rngs=nnx.Rngs(config.seed)), mesh)
    with jax.set_mesh(mesh):
        optimizer = nnx.Optimizer(model, make_optimizer(config.train), wrt=nnx.Param)
    return model_cfg, model, optimizer


def run(config: ml_collections.ConfigDict, workdir: str, *, stop_at: int | None = None
        ) -> dict[str, Any]:
    """Train per ``config`` in ``workdir``; returns the last logged metrics.

    ``stop_at`` ends this run early at that step (checkpointed, resumable), as a
    preemption would, without changing the schedule of the whole run."""
    from apr_jax.data.pipeline import make_iterator
    from apr_jax.data.tokenizer import Tokenizer

    sharding.initialize_distributed()
    mesh = sharding.make_mesh(sharding.MeshConfig.from_config(config.mesh))
    per_process_batch = check_batch(config, mesh)
    check_workdir(workdir, config)
    peak = peak_flops_per_device()  # measured on CPU: do it before data threads start

    info = build_data_once(config)
    tokenizer = Tokenizer(info.tokenizer_path)
    model_cfg, model, optimizer = build_model_and_optimizer(config, tokenizer.vocab_size, mesh)
    graphdef, state = nnx.split((model, optimizer))
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    batch_shardings = sharding.batch_sharding(mesh)

    train_iter = make_iterator(config, info, "train", batch_size=per_process_batch,
                               process_index=jax.process_index(),
                               process_count=jax.process_count())
    checkpointer = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    restored = checkpointer.restore_latest(
        abstract_like(nnx.to_pure_dict(state[0])), abstract_like(nnx.to_pure_dict(state[1])),
        train_iter)
    start_step = 0
    if restored is not None:
        start_step, params, opt_state, _ = restored
        nnx.replace_by_pure_dict(state[0], params)
        nnx.replace_by_pure_dict(state[1], opt_state)
    total_steps = config.train.steps

    logger = MetricsLogger(workdir, total_steps, start_step)
    n_params = num_params(model_cfg)
    logger.print(f"model: {n_params / 1e6:.2f}M parameters "
                 f"({num_params(model_cfg, non_embedding=True) / 1e6:.2f}M non-embedding); "
                 f"mesh {dict(mesh.shape)}; {jax.device_count()} {jax.devices()[0].platform} devices")
    if restored is not None:
        logger.print(f"resumed from step {start_step} in {checkpointer.directory}")

    schedule = learning_rate_schedule(config.train)
    train_step = make_train_step(graphdef, state_shardings, batch_shardings,
                                 grad_accum=config.train.grad_accum, learning_rate=schedule)
    eval_step = make_eval_step(graphdef, state_shardings, batch_shardings)
    seq_len = config.data.seq_len
    flops_per_step = flops_per_token(model_cfg, seq_len) * config.train.batch_size * seq_len

    def meta() -> dict[str, Any]:
        return {"config": config.to_dict(), "tokenizer_b64": encode_file(info.tokenizer_path)}

    def save(step: int) -> None:
        checkpointer.save(step, nnx.to_pure_dict(state[0]), nnx.to_pure_dict(state[1]),
                          train_iter, meta())

    def validate() -> dict[str, float]:
        # Repeat the split so every process runs the same number of steps.
        it = make_iterator(config, info, "validation", batch_size=per_process_batch,
                           process_index=jax.process_index(), process_count=jax.process_count(),
                           num_epochs=config.train.eval_batches)
        sums = np.zeros(3)
        for batch_np in itertools.islice(it, config.train.eval_batches):
            with jax.set_mesh(mesh):  # as for train_step below
                out = eval_step(state, sharding.global_batch_from_process(batch_np, mesh))
            sums += np.array([float(out["loss_sum"]), float(out["count"]), float(out["correct"])])
        return {"val_loss": sums[0] / max(sums[1], 1), "val_token_accuracy": sums[2] / max(sums[1], 1)}

    stop = _StopFlag()
    stop.install()
    step = start_step
    deadline = (time.time() + 60 * config.train.time_limit_minutes
                if config.train.time_limit_minutes > 0 else math.inf)
    window_start, window_tokens, window_steps = time.time(), 0, 0
    skipped = 0
    last: dict[str, Any] = {}
    pending = None  # (step, metrics) of the previous step, checked one step late
    out_of_time = False
    last_saved = start_step if restored is not None else -1

    def check_finite(entry) -> None:
        nonlocal skipped
        s, m = entry
        if bool(m["finite"]):
            return
        if config.train.on_nan == "skip":
            skipped += 1
            return
        checkpointer.wait()
        good = checkpointer.steps()
        raise TrainingError(
            f"loss or gradient became NaN/Inf at step {s}; the update was discarded and training "
            f"stopped; last good checkpoint: {good[-1] if good else 'none'}; try a lower "
            f"config.train.lr, a longer config.train.warmup_steps, or config.train.on_nan=skip")

    try:
        while step < min(total_steps, stop_at or total_steps):
            if stop.signal is not None:
                break
            if time.time() > deadline:
                logger.print(f"time limit of {config.train.time_limit_minutes} min reached at step {step}")
                out_of_time = True
                break
            batch_np = next(train_iter)
            window_tokens += int((batch_np["segment_ids"] > 0).sum()) * jax.process_count()
            batch = sharding.global_batch_from_process(batch_np, mesh)
            with jax.set_mesh(mesh):  # traced with the mesh: shard_map kernels, constraints
                state, metrics = train_step(state, batch)
            step += 1
            window_steps += 1
            if pending is not None:
                check_finite(pending)
            pending = (step, metrics)
            logger.advance(1)
            if step % config.train.log_every == 0 or step == total_steps:
                check_finite(pending)
                host = jax.device_get(metrics)
                elapsed = time.time() - window_start
                last = {k: float(v) for k, v in host.items() if k not in ("finite", "loss_tokens")}
                last["tokens_per_s"] = window_tokens / elapsed
                last["steps_per_s"] = window_steps / elapsed
                if peak:
                    last["mfu"] = flops_per_step * window_steps / elapsed / (peak * jax.device_count())
                if skipped:
                    last["skipped_steps"] = skipped
                if step % config.train.eval_every == 0 or step == total_steps:
                    last.update(validate())
                logger.write(step, last)
                window_start, window_tokens, window_steps = time.time(), 0, 0
            if step % config.train.checkpoint_every == 0:
                save(step)
                last_saved = step
        if pending is not None:
            check_finite(pending)
        save_last_step(step, last_saved, save, checkpointer, logger, stop)
    finally:
        close_run(checkpointer, logger, stop)
    last["step"] = step
    last["preempted"] = stop.signal is not None
    finished = step >= total_steps or out_of_time
    if finished and stop.signal is None and config.eval.num_problems > 0:
        trained_model, _ = nnx.merge(graphdef, state)
        last.update(final_evaluation(config, workdir, info, trained_model, tokenizer, step))
    return last


def final_evaluation(config: ml_collections.ConfigDict, workdir: str, info: Any,
                     model: nnx.Module, tokenizer: Any, step: int) -> dict[str, float]:
    """Decode held-out test problems with the engine, print the table and an
    honest summary, and write ``results_test.jsonl`` in the workdir."""
    from apr_jax.data.pipeline import make_problem_source
    from apr_jax.evaluate import ACCELERATOR_HINT, evaluate_problems, format_table, sweep_settings

    problems = make_problem_source(info, "test")[:config.eval.num_problems]
    (setting, kwargs), = sweep_settings(None, [], config)
    rows, summary = evaluate_problems(model, tokenizer, config, problems,
                                      samples=config.eval.samples, seed=config.seed, **kwargs)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results_test.jsonl"), "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **{f"test_{k}": v for k, v in summary.items()}}) + "\n")
        print(f"held-out test ({len(problems)} problems, {config.trace.kind}):")
        print(format_table([(f"{config.name}@{step}", summary)]))
        print(f"solved {summary['accuracy']:.1%} of held-out problems; "
              f"{summary['well_formed']:.1%} of outputs were well formed (ended with an answer line)")
        print(ACCELERATOR_HINT)
    return {f"test_{k}": v for k, v in summary.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        flags, overrides = config_lib.parse_command_line(argv)
        config = config_lib.load_config(flags.get("config"), overrides)
        workdir = flags.get("workdir") or default_workdir(config)
        if config.mode == "rl":
            from apr_jax.rl.train_rl import run_rl
            run_rl(config, workdir)
        else:
            run(config, workdir)
    except (config_lib.ConfigError, CheckpointError, TrainingError, ValueError) as e:
        if os.environ.get("APR_JAX_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (config_lib.ConfigError, ValueError)) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
