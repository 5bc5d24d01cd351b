"""GRPO training from an SFT checkpoint: ``python -m apr_jax.train
--config=configs/NAME_rl.py`` (``config.mode == "rl"``) calls ``run_rl``.

Each step: take ``rl.prompts_per_step`` problems (and the sampler key) from
the prompt stream, roll every prompt out ``rl.samples_per_prompt`` times with
the jitted fixed-shape rollout, score the rollouts on the host with the
verifier, and run the jitted GRPO update. The optimizer and loop settings are
the ``train`` section's (``lr``, ``steps``, ``warmup_steps``, ``grad_clip``,
``grad_accum`` = microbatches, ``log_every``, ``checkpoint_every`` ...), the
engine limits the ``eval`` section's (``max_children``, ``max_rounds``,
``max_depth``, ``tokens_per_thread``). Checkpoints hold the policy, the
optimizer state and the prompt stream (with the sampler key), so a resumed run
continues exactly; the frozen reference model is re-read from ``rl.init_from``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from apr_jax import config as config_lib
from apr_jax import sharding
from apr_jax.checkpoint import Checkpointer
from apr_jax.config import ConfigError
from apr_jax.decode.engine import EngineConfig
from apr_jax.decode.model_api import NnxDecode
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.sampler import SamplingConfig
from apr_jax.metrics_log import MetricsLogger
from apr_jax.optim import learning_rate_schedule
from apr_jax.rl.grpo import (GrpoConfig, UpdateBatch, group_advantages, groups_with_signal,
                             make_grpo_update)
from apr_jax.rl.prompts import PromptStream
from apr_jax.rl.reward import RewardConfig, score_rollouts
from apr_jax.rl.rollout import encode_prompts, engine_arrays, make_rollout
from apr_jax.train import (TrainingError, _StopFlag, abstract_like, build_data_once,
                            build_model_and_optimizer, check_workdir, close_run,
                            save_last_step)


@dataclasses.dataclass(frozen=True)
class RLSettings:
    """The ``rl`` config section, checked."""

    init_from: str
    prompts_per_step: int
    samples_per_prompt: int
    split: str
    prompt_pool: int
    max_threads: int
    rollout_chunks: int
    condition_children: tuple[int, ...]
    skip_flat_groups: bool
    grpo: GrpoConfig
    reward: RewardConfig

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "RLSettings":
        if "rl" not in config:
            raise ConfigError("config has no rl section; RL configs set config.rl.init_from and friends "
                              "(see configs/default_rl.py)")
        rl = config.rl
        for name in ("prompts_per_step", "samples_per_prompt", "inner_epochs", "minibatches",
                     "rollout_chunks"):
            if int(rl[name]) < 1:
                raise ConfigError(f"config.rl.{name}={rl[name]} must be a positive integer")
        if int(rl.samples_per_prompt) < 2:
            raise ConfigError(f"config.rl.samples_per_prompt={rl.samples_per_prompt} must be >= 2 "
                              f"(GRPO compares the samples of one prompt)")
        if int(rl.prompt_pool) < 0:
            raise ConfigError(f"config.rl.prompt_pool={rl.prompt_pool} must be >= 0 (0 = the whole split)")
        if int(rl.max_threads) < 0:
            raise ConfigError(f"config.rl.max_threads={rl.max_threads} must be >= 0 (0 = derived)")
        if rl.split not in ("train", "validation", "test"):
            raise ConfigError(f"config.rl.split={rl.split!r} is not one of train, validation, test")
        if not str(rl.init_from):
            raise ConfigError("config.rl.init_from is empty; name the SFT workdir or checkpoint")
        if any(int(c) < 0 for c in rl.condition_children):
            raise ConfigError(f"config.rl.condition_children={list(rl.condition_children)} must be >= 0")
        try:
            grpo = GrpoConfig(
                clip_low=float(rl.clip_low), clip_high=float(rl.clip_high), kl_coef=float(rl.kl_coef),
                std_normalize=bool(rl.std_normalize), inner_epochs=int(rl.inner_epochs),
                minibatches=int(rl.minibatches), microbatches=int(config.train.grad_accum),
                temperature=float(rl.temperature))
            reward = RewardConfig(format_penalty=float(rl.format_penalty),
                                  latency_bonus=float(rl.latency_bonus),
                                  condition_penalty=float(rl.condition_penalty))
        except ValueError as e:
            raise ConfigError(f"config.rl: {e}") from None
        if int(rl.prompts_per_step) % grpo.minibatches:
            raise ConfigError(f"config.rl.prompts_per_step={rl.prompts_per_step} is not divisible by "
                              f"config.rl.minibatches={grpo.minibatches}")
        if int(rl.prompts_per_step) % int(rl.rollout_chunks):
            raise ConfigError(f"config.rl.prompts_per_step={rl.prompts_per_step} is not divisible by "
                              f"config.rl.rollout_chunks={rl.rollout_chunks}")
        return cls(init_from=str(rl.init_from), prompts_per_step=int(rl.prompts_per_step),
                   samples_per_prompt=int(rl.samples_per_prompt), split=str(rl.split),
                   prompt_pool=int(rl.prompt_pool),
                   max_threads=int(rl.max_threads), rollout_chunks=int(rl.rollout_chunks),
                   condition_children=tuple(int(c) for c in rl.condition_children),
                   skip_flat_groups=bool(rl.skip_flat_groups), grpo=grpo, reward=reward)

    def engine_config(self, config: ml_collections.ConfigDict) -> EngineConfig:
        e = config.eval
        return EngineConfig(
            max_children=int(e.max_children), max_rounds=int(e.max_rounds), max_depth=int(e.max_depth),
            tokens_per_thread=int(e.tokens_per_thread), max_context=int(config.model.max_len),
            sampling=SamplingConfig(temperature=self.grpo.temperature, top_p=1.0),
            samples_per_problem=self.samples_per_prompt, max_threads=self.max_threads)

    @property
    def updates_per_step(self) -> int:
        return self.grpo.inner_epochs * self.grpo.minibatches


def optimizer_config(config: ml_collections.ConfigDict, settings: RLSettings) -> ml_collections.ConfigDict:
    """The config with ``train.steps``/``warmup_steps`` counted in optimizer
    updates (several per RL step), for ``make_optimizer``."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.train.steps = config.train.steps * settings.updates_per_step
    out.train.warmup_steps = config.train.warmup_steps * settings.updates_per_step
    return out


def load_sft(config: ml_collections.ConfigDict, settings: RLSettings, workdir: str, data_tokenizer):
    """The SFT model and tokenizer named by ``rl.init_from``; one-line errors
    when it is missing or does not match this config or its tokenizer."""
    from apr_jax.evaluate import load_for_inference

    path = os.path.abspath(settings.init_from)
    if os.path.abspath(workdir) in (path, os.path.dirname(os.path.dirname(path))):
        raise TrainingError(f"RL workdir {workdir} is the SFT run named by config.rl.init_from; "
                            f"use another --workdir")
    loaded = load_for_inference(path)
    diffs = config_lib.identity_diff(loaded.config.to_dict(), config)
    if diffs:
        raise TrainingError(f"SFT checkpoint {loaded.source} does not match the config: "
                            f"{'; '.join(diffs[:3])}")
    if loaded.tokenizer.model_bytes() != data_tokenizer.model_bytes():
        raise TrainingError(f"SFT checkpoint {loaded.source} was trained with another tokenizer "
                            f"than the dataset's ({data_tokenizer.model_path}); rebuild the SFT run "
                            f"or point config.data.dir at its data")
    return loaded


def _check_rl_workdir(workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                mode = json.load(f).get("mode")
        except (OSError, json.JSONDecodeError):
            return  # check_workdir reports it
        if mode != "rl":
            raise TrainingError(f"workdir {workdir} holds a {mode} run; use another --workdir for RL")


def _host(tree: Any) -> Any:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def run_rl(config: ml_collections.ConfigDict, workdir: str, *, stop_at: int | None = None
           ) -> dict[str, Any]:
    """GRPO per ``config`` in ``workdir``; returns the last logged metrics.
    ``stop_at`` ends this run at that step (checkpointed, resumable)."""
    from apr_jax.data.pipeline import make_problem_source
    from apr_jax.data.tokenizer import Tokenizer

    settings = RLSettings.from_config(config)
    sharding.initialize_distributed()
    mesh = sharding.make_mesh(sharding.MeshConfig.from_config(config.mesh))
    _check_rl_workdir(workdir)
    check_workdir(workdir, config)

    info = build_data_once(config)
    loaded = load_sft(config, settings, workdir, Tokenizer(info.tokenizer_path))
    tokenizer = loaded.tokenizer
    ids = ProtocolIds.from_tokenizer(tokenizer)

    # Policy + optimizer, initialised from the SFT parameters; a frozen copy is the reference.
    opt_config = optimizer_config(config, settings)
    model_cfg, model, optimizer = build_model_and_optimizer(opt_config, tokenizer.vocab_size, mesh)
    graphdef, state = nnx.split((model, optimizer))
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    sft_params = nnx.to_pure_dict(nnx.state(loaded.model))
    target = nnx.to_pure_dict(state[0])
    nnx.replace_by_pure_dict(state[0], sharding.replicated_host_to_global(
        sft_params, jax.tree.map(lambda x: x.sharding, target)))
    model_graphdef = nnx.split(nnx.merge(graphdef, state)[0])[0]
    _, ref_params, _ = nnx.split(nnx.merge(model_graphdef, state[0]), nnx.Param, ...)
    ref_params = jax.jit(lambda t: jax.tree.map(jnp.copy, t))(ref_params)
    del loaded.model

    problems = make_problem_source(info, settings.split)
    if settings.prompt_pool:
        problems = problems[:settings.prompt_pool]
    condition_kind, condition_values = None, ()
    if config.trace.condition:
        condition_kind = config.trace.kind
        condition_values = (settings.condition_children or (config.eval.max_children,)
                            if condition_kind == "apr" else (config.eval.tokens_per_thread,))
    stream = PromptStream(problems, seed=config.seed, style=config.trace.style,
                          condition_kind=condition_kind, condition_values=condition_values)
    prompt_width = -(-max(len(tokenizer.encode(t)) for t in stream.longest_prompt_texts()) // 8) * 8

    checkpointer = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    restored = checkpointer.restore_latest(
        abstract_like(nnx.to_pure_dict(state[0])), abstract_like(nnx.to_pure_dict(state[1])), stream)
    start_step = 0
    if restored is not None:
        start_step, params, opt_state, _ = restored
        nnx.replace_by_pure_dict(state[0], params)
        nnx.replace_by_pure_dict(state[1], opt_state)

    engine_cfg = settings.engine_config(config)
    P, G, S = settings.prompts_per_step, settings.samples_per_prompt, engine_cfg.threads_per_sample
    with jax.set_mesh(mesh):
        rollout = make_rollout(NnxDecode(model_graphdef), model.init_cache, engine_cfg, ids, prompt_width,
                               chunks=settings.rollout_chunks)
        update = make_grpo_update(graphdef, settings.grpo, num_rollouts=P * G,
                                  learning_rate=learning_rate_schedule(opt_config.train),
                                  state_shardings=state_shardings)
    total_steps = config.train.steps
    logger = MetricsLogger(workdir, total_steps, start_step)
    logger.print(f"RL from {settings.init_from} (SFT step {loaded.step}): {P} prompts x {G} samples, "
                 f"{S} thread slots per sample, rows {P * G * S} x {engine_cfg.max_context}; "
                 f"mesh {dict(mesh.shape)}")
    if restored is not None:
        logger.print(f"resumed from step {start_step} in {checkpointer.directory}")
    meta = {"config": config.to_dict(), "tokenizer_b64": base64.b64encode(tokenizer.model_bytes()).decode(),
            "init_from": os.path.abspath(settings.init_from)}

    def save(step: int) -> None:
        checkpointer.save(step, nnx.to_pure_dict(state[0]), nnx.to_pure_dict(state[1]), stream, meta)

    stop = _StopFlag()
    stop.install()
    deadline = (time.time() + 60 * config.train.time_limit_minutes
                if config.train.time_limit_minutes > 0 else math.inf)
    step, last_saved, last = start_step, (start_step if restored is not None else -1), {}
    window: dict[str, list[float]] = {}
    skipped = skipped_updates = 0
    try:
        with jax.set_mesh(mesh):
            while step < min(total_steps, stop_at or total_steps):
                if stop.signal is not None:
                    break
                if time.time() > deadline:
                    logger.print(f"time limit of {config.train.time_limit_minutes} min reached at step {step}")
                    break
                chosen, asked = stream.take(P)
                prompts = encode_prompts([tokenizer.encode(stream.prompt_text(p, v))
                                          for p, v in zip(chosen, asked)], prompt_width, ids.pad)
                t0 = time.time()
                batch = rollout(state[0], stream.next_key(), prompts)
                arrays = engine_arrays(_host(batch), P)
                t1 = time.time()
                scored = score_rollouts(arrays, tokenizer, chosen, settings.reward,
                                        asked if condition_kind == "apr" else None)
                adv_N = np.asarray(group_advantages(scored.rewards, settings.grpo.std_normalize)).reshape(-1)
                keep_N = None
                if settings.skip_flat_groups:
                    keep_N = np.repeat(groups_with_signal(scored.rewards), G)
                t2 = time.time()
                if keep_N is None or keep_N.any():
                    state, metrics = update(state, ref_params, UpdateBatch.from_rollout(batch, adv_N, keep_N))
                    metrics = jax.device_get(metrics)
                else:  # no group has signal: nothing to learn from this batch
                    metrics = {"finite": True}
                    skipped_updates += 1
                t3 = time.time()
                step += 1
                if not bool(metrics["finite"]):
                    if config.train.on_nan != "skip":
                        checkpointer.wait()
                        good = checkpointer.steps()
                        raise TrainingError(
                            f"RL loss or gradient became NaN/Inf at step {step}; the update was discarded "
                            f"and training stopped; last good checkpoint: {good[-1] if good else 'none'}; "
                            f"try a lower config.train.lr or config.train.on_nan=skip")
                    skipped += 1
                row = {**scored.summary(),
                       **{k: float(v) for k, v in metrics.items() if k != "finite"},
                       "padded_slots": 1.0 - float(arrays["next_free"].sum()) / (P * G * S),
                       "rollout_s": t1 - t0, "reward_s": t2 - t1, "update_s": t3 - t2}
                for k, v in row.items():
                    window.setdefault(k, []).append(v)
                logger.advance(1)
                if step % config.train.log_every == 0 or step == total_steps:
                    last = {k: float(np.mean(v)) for k, v in window.items()}
                    if skipped:
                        last["skipped_steps"] = skipped
                    if skipped_updates:
                        last["steps_without_signal"] = skipped_updates
                    logger.write(step, last)
                    window = {}
                if step % config.train.checkpoint_every == 0:
                    save(step)
                    last_saved = step
        save_last_step(step, last_saved, save, checkpointer, logger, stop)
    finally:
        close_run(checkpointer, logger, stop)
    last["step"] = step
    last["preempted"] = stop.signal is not None
    return last
