"""Supervised training: the SFT task for the shared loop, and the held-out
evaluation at the end of a finished run."""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from apr_jax.config.sections import RunConfig
from apr_jax.data.build import DatasetInfo, build_dataset_once, make_problem_source
from apr_jax.data.pipeline import describe_lengths, make_iterator
from apr_jax.data.tokenizer import Tokenizer, load_tokenizer
from apr_jax.model.config import COMPUTE_FIELDS, ModelConfig, flops_per_token, num_params, peak_flops_per_device
from apr_jax.runtime import sharding
from apr_jax.runtime.checkpoint import decode_bytes, encode_file, has_checkpoints, restore_params
from apr_jax.runtime.jsonl import write_jsonl
from apr_jax.tasks.registry import task_class
from apr_jax.training import train_state as ts
from apr_jax.training.loop import LoopSettings, TrainingError, run_loop
from apr_jax.training.train_step import build_train_step, make_eval_step
from apr_jax.training.workdir import check_workdir


def check_batch(config: RunConfig, mesh: jax.sharding.Mesh) -> int:
    """The per-process batch size; one clear error when the batch does not divide."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch = config.train.batch_size
    micro = batch // config.train.grad_accum
    if micro % shards:
        raise TrainingError(
            f"config.train.batch_size={batch} (microbatch {micro} with grad_accum="
            f"{config.train.grad_accum}) does not divide over the {shards} data-parallel devices "
            f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})"
        )
    if batch % jax.process_count():
        raise TrainingError(f"config.train.batch_size={batch} does not divide over {jax.process_count()} processes")
    return batch // jax.process_count()


class SFTTask:
    """Next-token training on the packed trace dataset."""

    check_lag = 1  # the next step is dispatched before this one's finite flag is read
    nan_label = ""
    nan_advice = "try a lower config.train.lr, a longer config.train.warmup_steps, or config.train.on_nan=skip"

    def __init__(
        self,
        config: RunConfig,
        info: DatasetInfo,
        vocab_size: int,
        mesh: jax.sharding.Mesh,
        per_process_batch: int,
        peak_flops: float | None,
    ):
        self.config, self.info, self.mesh = config, info, mesh
        self.per_process_batch = per_process_batch
        self.data = make_iterator(
            config,
            info,
            "train",
            batch_size=per_process_batch,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        self.data.start_prefetch()  # pipeline workers start while the model is built and compiled
        self.model_cfg, self.graphs, self.state, self.train_step = build_train_step(config, vocab_size, mesh)
        shardings = ts.shardings_of(self.state)
        batch_shardings = sharding.batch_sharding(mesh)
        self.eval_step = make_eval_step(self.graphs, shardings, batch_shardings)
        self.schedule_steps = config.train.steps  # the loop sets the step budget's
        seq_len = config.data.seq_len
        self.flops_per_step = flops_per_token(self.model_cfg, seq_len) * config.train.batch_size * seq_len
        self.peak_flops = peak_flops
        self._window_start: float | None = None  # set by the first step
        self._window_tokens = self._window_steps = 0

    # ---- what the loop reads --------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "tokenizer_b64": encode_file(self.info.tokenizer_path)}

    def describe(self) -> str:
        return (
            f"model: {num_params(self.model_cfg) / 1e6:.2f}M parameters "
            f"({num_params(self.model_cfg, non_embedding=True) / 1e6:.2f}M non-embedding); "
            f"mesh {dict(self.mesh.shape)}; {jax.device_count()} {jax.devices()[0].platform} devices"
        )

    def start_row(self) -> dict[str, Any]:
        return {}

    # ---- steps --------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        if self._window_start is None:
            self._window_start = time.time()
        batch_np = next(self.data)
        self._window_tokens += int((batch_np["segment_ids"] > 0).sum()) * jax.process_count()
        batch = sharding.global_batch_from_process(batch_np, self.mesh)
        with jax.set_mesh(self.mesh):  # traced with the mesh: shard_map kernels, constraints
            self.state, metrics = self.train_step(self.state, batch, np.int32(self.schedule_steps))
        self._window_steps += 1
        return metrics

    def row(self, step: int, metrics: dict[str, Any]) -> dict[str, float]:
        host = jax.device_get(metrics)
        elapsed = time.time() - self._window_start
        row = {k: float(v) for k, v in host.items() if k not in ("finite", "loss_tokens")}
        row["tokens_per_s"] = self._window_tokens / elapsed
        row["steps_per_s"] = self._window_steps / elapsed
        if self.peak_flops:
            row["mfu"] = self.flops_per_step * self._window_steps / elapsed / (self.peak_flops * jax.device_count())
        if step % self.config.train.eval_every == 0 or step == self.schedule_steps:
            row.update(self.validate())
        self._window_start, self._window_tokens, self._window_steps = time.time(), 0, 0
        return row

    def validate(self) -> dict[str, float]:
        """Loss and token accuracy on ``eval_batches`` validation batches."""
        config = self.config
        # Repeat the split so every process runs the same number of steps; a few
        # batches: reader threads, no worker processes to start.
        it = make_iterator(
            config,
            self.info,
            "validation",
            batch_size=self.per_process_batch,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            num_epochs=config.train.eval_batches,
            num_workers=0,
        )
        sums = np.zeros(3)
        for batch_np in itertools.islice(it, config.train.eval_batches):
            with jax.set_mesh(self.mesh):  # as for the train step
                out = self.eval_step(self.state, sharding.global_batch_from_process(batch_np, self.mesh))
            sums += np.array([float(out["loss_sum"]), float(out["count"]), float(out["correct"])])
        it.close()
        return {"val_loss": sums[0] / max(sums[1], 1), "val_token_accuracy": sums[2] / max(sums[1], 1)}


# Model settings that may differ from the starting checkpoint's: numerics, kernels
# and the context length (rotary positions hold no weights).
RUNTIME_MODEL_FIELDS = (*COMPUTE_FIELDS, "param_dtype", "max_len")


def init_from_checkpoint(config: RunConfig, state: ts.TrainState, tokenizer: Any) -> str:
    """Replace the fresh parameters in ``state`` by those of ``config.train.init_from``
    (an SFT workdir or a converted pretrained model), read in their sharded
    layout; one-line errors when its architecture or tokenizer differ from
    this run's. Returns the checkpoint folder."""
    ours = config.model_for(tokenizer.vocab_size)

    def check(meta: dict[str, Any], source: str) -> None:
        theirs_tokenizer = load_tokenizer(data=decode_bytes(meta["tokenizer_b64"]))
        if theirs_tokenizer.model_bytes() != tokenizer.model_bytes():
            hint = (
                f"; set config.data.tokenizer={meta['config']['data'].get('tokenizer')}"
                if meta["config"]["data"].get("tokenizer")
                else ""
            )
            raise TrainingError(
                f"config.train.init_from: {source} was made with another tokenizer than this run's dataset{hint}"
            )
        theirs = ModelConfig.from_config(meta["config"]["model"], theirs_tokenizer.vocab_size)
        diffs = [
            f"config.model.{f.name} (checkpoint {getattr(theirs, f.name)!r}, now {getattr(ours, f.name)!r})"
            for f in dataclasses.fields(ModelConfig)
            if f.name not in RUNTIME_MODEL_FIELDS and getattr(theirs, f.name) != getattr(ours, f.name)
        ]
        if diffs:
            raise TrainingError(f"config.train.init_from: {source} holds another model: {'; '.join(diffs[:3])}")

    params, _, source = restore_params(config.train.init_from, ts.abstract_like(nnx.to_pure_dict(state.model)), check)
    nnx.replace_by_pure_dict(state.model, params)
    return source


def run_sft(config: RunConfig, workdir: str, *, stop_at: int | None = None) -> dict[str, Any]:
    """Train per ``config`` in ``workdir``; returns the last logged metrics.

    ``stop_at`` ends this run early at that step (checkpointed, resumable), as a
    preemption would, without changing the schedule of the whole run."""
    sharding.initialize_distributed()
    mesh = sharding.make_mesh(config.mesh)
    per_process_batch = check_batch(config, mesh)
    check_workdir(workdir, config)
    peak = peak_flops_per_device()  # measured on CPU: do it before data threads start

    info = build_dataset_once(config)
    tokenizer = load_tokenizer(info.tokenizer_path)
    task = SFTTask(config, info, tokenizer.vocab_size, mesh, per_process_batch, peak)
    if config.data.context == "inherit" and jax.process_index() == 0:
        print(describe_lengths(config, info), flush=True)
    if config.train.init_from and not has_checkpoints(workdir):
        print(f"starting from {init_from_checkpoint(config, task.state, tokenizer)}", flush=True)
    try:
        result = run_loop(task, LoopSettings.from_config(config.train), workdir, stop_at=stop_at)
    finally:
        task.data.close()  # stops the input pipeline's threads and worker processes
    last = dict(result.last, step=result.step, preempted=result.preempted)
    if result.finished and not result.preempted and config.eval.num_problems > 0:
        model, _ = task.graphs.merge(task.state)
        last.update(final_evaluation(config, workdir, info, model, tokenizer, result.step, mesh))
    return last


def final_evaluation(
    config: RunConfig,
    workdir: str,
    info: DatasetInfo,
    model: Any,
    tokenizer: Tokenizer,
    step: int,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, float]:
    """Decode held-out test problems with the engine (its cache built inside
    jit under the run's ``mesh``), print the table and an honest summary, and
    write ``results_test.jsonl`` in the workdir."""
    from apr_jax.evaluation.report import WIDTH_PLOT, format_table, plot_width
    from apr_jax.evaluation.scoring import evaluate_problems
    from apr_jax.evaluation.sweeps import sweep_settings

    problems = make_problem_source(info, "test")[: config.eval.num_problems]
    ((setting, kwargs),) = sweep_settings(None, [], config)
    rows, summary = evaluate_problems(
        model, tokenizer, config, problems, samples=config.eval.samples, seed=config.seed, mesh=mesh, **kwargs
    )
    if jax.process_index() == 0:
        write_jsonl(os.path.join(workdir, "results_test.jsonl"), rows)
        write_jsonl(
            os.path.join(workdir, "metrics.jsonl"),
            [{"step": step, **{f"test_{k}": v for k, v in summary.items()}}],
            append=True,
        )
        if plot_width([(f"{config.name}@{step}", rows)], os.path.join(workdir, WIDTH_PLOT)):
            print(f"width plot: {os.path.join(workdir, WIDTH_PLOT)}")
        print(f"held-out test ({len(problems)} problems, {config.trace.kind}):")
        print(format_table([(f"{config.name}@{step}", summary)]))
        print(
            f"solved {summary['accuracy']:.1%} of held-out problems; "
            f"{summary['well_formed']:.1%} of outputs were well formed (ended with an answer line)"
        )
        hint = task_class(config.task.name).accelerator_hint
        if jax.default_backend() == "cpu" and hint:
            print(hint)
    return {f"test_{k}": v for k, v in summary.items()}
