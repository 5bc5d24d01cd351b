"""GRPO training from an SFT checkpoint: ``python -m apr_jax.train
--config=configs/NAME_rl.py`` (``config.mode == "rl"``) calls ``run_rl``,
which plugs ``RLTask`` into the shared loop (``apr_jax.training.loop``).

Each step: take ``rl.prompts_per_step`` problems (and the sampler key) from
the prompt stream, roll every prompt out ``rl.samples_per_prompt`` times with
the jitted fixed-shape rollout, score the rollouts on the host with the
verifier, and run the jitted GRPO update. Every ``rl.eval_every`` steps (and
at step 0 and the last step) the policy decodes the first ``rl.eval_problems``
validation problems greedily with ``scoring.evaluate_problems``; the logged
rows carry ``eval_*`` (accuracy over RL steps), the rollouts' spawn and limit
diagnostics (``rl.diagnostics``), the reward's speed and cost terms that are
on with their spread within groups (``reward/NAME``, ``reward/NAME_spread``;
``rl.reward``) and warning lines for spawn collapse and reward hacking. The
optimizer and loop settings are the ``train`` section's (``lr``, ``steps``,
``warmup_steps``, ``grad_clip``, ``grad_accum`` = microbatches, ``log_every``,
``checkpoint_every`` ...), the engine limits the ``eval`` section's
(``max_children``, ``max_rounds``, ``max_depth``, ``tokens_per_thread``).
Checkpoints hold the policy, the optimizer state and the prompt stream (with
the sampler key), so a resumed run continues exactly; the frozen reference
model is re-read from ``rl.init_from``.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from apr_jax.config.checks import ConfigError
from apr_jax.config.identity import identity_diff
from apr_jax.config.sections import RunConfig
from apr_jax.data.build import build_dataset_once, make_problem_source
from apr_jax.data.tokenizer import Tokenizer, load_tokenizer
from apr_jax.decode.engine import EngineConfig, decode_page_size
from apr_jax.decode.model_api import DecodeModel, NnxDecode
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.sampler import SamplingConfig
from apr_jax.evaluation.loading import Loaded, load_for_inference
from apr_jax.evaluation.scoring import evaluate_problems
from apr_jax.evaluation.sweeps import sweep_settings
from apr_jax.model.config import COMPUTE_FIELDS
from apr_jax.rl.diagnostics import TrendWatch
from apr_jax.rl.grpo import GrpoConfig, UpdateBatch, group_advantages, groups_with_signal, make_grpo_update
from apr_jax.rl.pack import PackedUpdateBatch, pack_update_batch
from apr_jax.rl.prompts import PromptStream
from apr_jax.rl.reward import RewardConfig, Scored, score_rollouts
from apr_jax.rl.rollout import RolloutBatch, encode_prompts, engine_arrays, make_rollout
from apr_jax.rl.tree_pack import pack_tree_update
from apr_jax.runtime import sharding
from apr_jax.runtime.checkpoint import split_checkpoint_path
from apr_jax.runtime.metrics_log import read_metrics
from apr_jax.tasks.registry import get_task
from apr_jax.training import train_state as ts
from apr_jax.training.loop import LoopSettings, TrainingError, run_loop
from apr_jax.training.optim import learning_rate_schedule
from apr_jax.training.workdir import check_workdir


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
    packed_update: bool  # the update trains on packed threads (apr_jax.rl.pack)
    eval_every: int  # RL steps between held-out evaluations; 0: none
    eval_problems: int  # validation problems decoded greedily at each
    grpo: GrpoConfig
    reward: RewardConfig

    @classmethod
    def from_config(cls, config: RunConfig) -> "RLSettings":
        if config.rl is None:
            raise ConfigError(
                "config has no rl section; RL configs set config.rl.init_from and friends (see configs/default_rl.py)"
            )
        rl = config.rl  # its own fields are checked (RLConfig); here what a run needs of them
        if not str(rl.init_from):
            raise ConfigError("config.rl.init_from is empty; name the SFT workdir or checkpoint")
        if any(int(c) > int(config.eval.max_children) for c in rl.condition_children):
            raise ConfigError(
                f"config.rl.condition_children={list(rl.condition_children)} asks for more "
                f"children than config.eval.max_children={config.eval.max_children} lets a "
                f"spawn have"
            )
        try:
            grpo = GrpoConfig(
                clip_low=float(rl.clip_low),
                clip_high=float(rl.clip_high),
                kl_coef=float(rl.kl_coef),
                advantage=str(rl.advantage),
                inner_epochs=int(rl.inner_epochs),
                minibatches=int(rl.minibatches),
                microbatches=int(config.train.grad_accum),
                temperature=float(rl.temperature),
                old_logprobs=str(rl.old_logprobs),
            )
            reward = RewardConfig(
                require_eos=bool(rl.require_eos),
                format_penalty=float(rl.format_penalty),
                acceleration_weight=float(rl.acceleration_weight),
                acceleration_cap=float(rl.acceleration_cap),
                latency_bonus=float(rl.latency_bonus),
                condition_penalty=float(rl.condition_penalty),
                token_cost=float(rl.token_cost),
                latency_weight=float(rl.latency_weight),
            )
        except ValueError as e:
            raise ConfigError(f"config.rl: {e}") from None
        if int(rl.prompts_per_step) % grpo.minibatches:
            raise ConfigError(
                f"config.rl.prompts_per_step={rl.prompts_per_step} is not divisible by "
                f"config.rl.minibatches={grpo.minibatches}"
            )
        settings = cls(
            init_from=str(rl.init_from),
            prompts_per_step=int(rl.prompts_per_step),
            samples_per_prompt=int(rl.samples_per_prompt),
            split=str(rl.split),
            prompt_pool=int(rl.prompt_pool),
            max_threads=int(rl.max_threads),
            rollout_chunks=int(rl.rollout_chunks),
            condition_children=tuple(int(c) for c in rl.condition_children),
            skip_flat_groups=bool(rl.skip_flat_groups),
            packed_update=bool(rl.packed_update),
            eval_every=int(rl.eval_every),
            eval_problems=int(rl.eval_problems),
            grpo=grpo,
            reward=reward,
        )
        rollouts = settings.prompts_per_step * settings.samples_per_prompt
        if config.data.context == "inherit" and rollouts % (grpo.minibatches * grpo.microbatches):
            raise ConfigError(
                f"config.rl.prompts_per_step x samples_per_prompt = {rollouts} rollouts, one tree-sequence row "
                f"each in the inherit family, do not split into config.rl.minibatches={grpo.minibatches} x "
                f"config.train.grad_accum={grpo.microbatches} microbatches"
            )
        engine = settings.engine_config(config)
        if engine.threads_per_sample < engine.full_tree:
            e = config.eval
            raise ConfigError(
                f"config.rl.max_threads={rl.max_threads} gives {engine.threads_per_sample} thread slots "
                f"per rollout, but config.eval.max_rounds={e.max_rounds} spawns of "
                f"config.eval.max_children={e.max_children} up to config.eval.max_depth={e.max_depth} "
                f"need {engine.full_tree} (root included) and a spawn that finds no slot is dropped; "
                f"set config.rl.max_threads={engine.full_tree} or lower those limits"
            )
        return settings

    def engine_config(self, config: RunConfig) -> EngineConfig:
        """The evaluation engine's limits (``eval`` section) with this run's
        sampling, group size and thread slots; one compiled call per chunk."""
        return EngineConfig.from_eval_config(
            config.eval,
            config.model.max_len,
            samples_per_problem=self.samples_per_prompt,
            sampling=SamplingConfig(self.grpo.temperature, 1.0),
            max_threads=self.max_threads,
            batch_problems=0,
            context=config.data.context,
            join=config.data.join,
        )

    @property
    def updates_per_step(self) -> int:
        return self.grpo.inner_epochs * self.grpo.minibatches


def optimizer_config(config: RunConfig, settings: RLSettings) -> RunConfig:
    """The config with ``train.steps``/``warmup_steps`` counted in optimizer
    updates (several per RL step), for ``make_optimizer``."""
    n = settings.updates_per_step
    return config.replace(
        train=dataclasses.replace(
            config.train, steps=config.train.steps * n, warmup_steps=config.train.warmup_steps * n
        )
    )


def load_sft(config: RunConfig, settings: RLSettings, workdir: str, data_tokenizer: Tokenizer) -> Loaded:
    """The SFT model and tokenizer named by ``rl.init_from``; one-line errors
    when it is missing or does not match this config or its tokenizer."""
    path = os.path.abspath(settings.init_from)
    if os.path.abspath(workdir) == split_checkpoint_path(path)[0]:
        raise TrainingError(f"RL workdir {workdir} is the SFT run named by config.rl.init_from; use another --workdir")
    loaded = load_for_inference(path)
    # The policy is the SFT model; how it computes (dtype, kernel, remat) may differ.
    diffs = identity_diff(loaded.config.to_dict(), config, ignore=[f"model.{name}" for name in COMPUTE_FIELDS])
    if diffs:
        raise TrainingError(f"SFT checkpoint {loaded.source} does not match the config: {'; '.join(diffs[:3])}")
    if loaded.tokenizer.model_bytes() != data_tokenizer.model_bytes():
        raise TrainingError(
            f"SFT checkpoint {loaded.source} was trained with another tokenizer "
            f"than the dataset's ({data_tokenizer.model_path}); rebuild the SFT run "
            f"or point config.data.dir at its data"
        )
    return loaded


def _host(tree: Any) -> Any:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


@dataclasses.dataclass(frozen=True)
class Collected:
    """One step's scored rollouts, before the update."""

    batch: RolloutBatch  # on the devices
    host: RolloutBatch  # the same on the host
    arrays: dict[str, np.ndarray]  # engine_arrays(host)
    scored: Scored
    adv_N: np.ndarray
    keep_N: np.ndarray | None  # rollouts the update keeps (None: all)
    rollout_s: float
    reward_s: float


WINDOW_MAX = ("ratio_max", "max_depth", "logp_gap_max")  # logged as the max over the window's steps, not the mean


class RLTask:
    """GRPO steps: roll out, score on the host, update."""

    check_lag = 0  # the step's metrics are on the host already
    nan_label = "RL "
    nan_advice = "try a lower config.train.lr or config.train.on_nan=skip"

    def __init__(
        self, config: RunConfig, settings: RLSettings, info: Any, loaded: Loaded, mesh: jax.sharding.Mesh, workdir: str
    ):
        self.config, self.settings, self.mesh, self.loaded = config, settings, mesh, loaded
        self.workdir = workdir
        self.tokenizer = tokenizer = loaded.tokenizer
        ids = ProtocolIds.from_tokenizer(tokenizer)

        # Policy + optimizer, initialised from the SFT parameters; a frozen copy is the reference.
        opt_config = optimizer_config(config, settings)
        _, model, optimizer = ts.build_model_and_optimizer(opt_config, tokenizer.vocab_size, mesh)
        self.graphs, state = ts.split(model, optimizer)
        sft_params = nnx.to_pure_dict(nnx.state(loaded.model))
        nnx.replace_by_pure_dict(
            state.model, sharding.replicated_host_to_global(sft_params, ts.shardings_of(nnx.to_pure_dict(state.model)))
        )
        self.state = dataclasses.replace(state, ref=ts.frozen_params(state.model, self.graphs))
        del loaded.model

        problems = make_problem_source(info, settings.split)
        if settings.prompt_pool:
            problems = problems[: settings.prompt_pool]
        self.condition_kind, condition_values = None, ()
        if config.trace.condition:
            self.condition_kind = config.trace.kind
            condition_values = (
                settings.condition_children or (config.eval.max_children,)
                if self.condition_kind == "apr"
                else (config.eval.tokens_per_thread,)
            )
        self.task = get_task(config)
        self.data = self.stream = PromptStream(
            problems,
            seed=config.seed,
            prompt=self.task.prompt,
            condition_kind=self.condition_kind,
            condition_values=condition_values,
        )
        self.eval_problems = held_out_problems(info, settings)
        self.prompt_width = -(-max(len(tokenizer.encode(t)) for t in self.stream.longest_prompt_texts()) // 8) * 8
        self.ids = ids
        self.engine_cfg = settings.engine_config(config)
        # One decode function and cache builder for rollouts and held-out evaluations:
        # equal static arguments, so each engine shape compiles once per run.
        self.decode_fn, self.init_cache = NnxDecode(self.graphs.model), model.init_cache
        self.page_size_for = model.decode_page_size
        P, G = settings.prompts_per_step, settings.samples_per_prompt
        with jax.set_mesh(mesh):
            self.rollout = make_rollout(
                self.decode_fn,
                self.init_cache,
                self.engine_cfg,
                ids,
                self.prompt_width,
                chunks=settings.rollout_chunks,
                page_size=decode_page_size(self.engine_cfg, self.page_size_for),
            )
            self.update = make_grpo_update(
                self.graphs,
                settings.grpo,
                num_rollouts=P * G,
                learning_rate=learning_rate_schedule(opt_config.train),
                state_shardings=ts.shardings_of(self.state),
            )
        self._meta = {
            "config": config.to_dict(),
            "tokenizer_b64": base64.b64encode(tokenizer.model_bytes()).decode(),
            "init_from": os.path.abspath(settings.init_from),
        }
        self.schedule_steps = config.train.steps  # in RL steps; the loop sets the step budget's
        self._window: dict[str, list[float]] = {}
        self.steps_without_signal = 0
        self.truncated = 0  # inherit family: rollouts whose tree sequence the last update cut to data.seq_len
        self.watch: TrendWatch | None = None  # built at the first row, from the logged history

    # ---- what the loop reads --------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return self._meta

    def describe(self) -> str:
        s = self.settings
        return (
            f"RL from {s.init_from} (SFT step {self.loaded.step}): {s.prompts_per_step} prompts x "
            f"{s.samples_per_prompt} samples, {self.engine_cfg.threads_per_sample} thread slots per "
            f"sample, rows {s.prompts_per_step * s.samples_per_prompt * self.engine_cfg.threads_per_sample}"
            f" x {self.engine_cfg.max_context}; mesh {dict(self.mesh.shape)}"
        )

    # ---- steps --------------------------------------------------------------
    def collect(self) -> Collected:
        """Rolls out the next prompts with the current policy and scores them."""
        s, stream, tokenizer = self.settings, self.stream, self.tokenizer
        with jax.set_mesh(self.mesh):
            chosen, asked = stream.take(s.prompts_per_step)
            prompts = encode_prompts(
                [tokenizer.encode(stream.prompt_text(p, v)) for p, v in zip(chosen, asked)],
                self.prompt_width,
                self.ids.pad,
            )
            t0 = time.time()
            batch = self.rollout(self.state.model, stream.next_key(), prompts)
            host = _host(batch)
            arrays = engine_arrays(host, s.prompts_per_step)
            t1 = time.time()
            scored = score_rollouts(
                arrays, tokenizer, chosen, s.reward, asked if self.condition_kind == "apr" else None, task=self.task
            )
            adv_N = np.asarray(group_advantages(scored.rewards, s.grpo.advantage)).reshape(-1)
            keep_N = None
            if s.skip_flat_groups:
                keep_N = np.repeat(groups_with_signal(scored.rewards), s.samples_per_prompt)
        return Collected(batch, host, arrays, scored, adv_N, keep_N, t1 - t0, time.time() - t1)

    def update_batch(self, c: Collected, packed: bool) -> UpdateBatch | PackedUpdateBatch:
        """What the update trains on: each rollout's tree sequence (the inherit
        family), the packed threads, or one thread per row."""
        data = self.config.data
        if data.context == "inherit":
            batch, self.truncated = pack_tree_update(
                c.arrays,
                c.adv_N,
                c.keep_N,
                join=data.join,
                ids=self.ids,
                minibatches=self.settings.grpo.minibatches,
                row_len=data.seq_len,
            )
            return batch
        if packed:
            return pack_update_batch(c.host, c.adv_N, c.keep_N, minibatches=self.settings.grpo.minibatches)
        return UpdateBatch.from_rollout(c.batch, c.adv_N, c.keep_N)

    def step(self) -> dict[str, Any]:
        s = self.settings
        P, G, S = s.prompts_per_step, s.samples_per_prompt, self.engine_cfg.threads_per_sample
        c = self.collect()
        t2 = time.time()
        with jax.set_mesh(self.mesh):
            if c.keep_N is None or c.keep_N.any():
                self.state, metrics = self.update(
                    self.state, self.update_batch(c, s.packed_update), self.schedule_updates()
                )
                metrics = jax.device_get(metrics)
            else:  # no group has signal: nothing to learn from this batch
                metrics = {"finite": True}
                self.steps_without_signal += 1
        t3 = time.time()
        row = {
            **c.scored.summary(),
            **{k: float(v) for k, v in metrics.items() if k != "finite"},
            "padded_slots": 1.0 - float(c.arrays["next_free"].sum()) / (P * G * S),
            "rollout_s": c.rollout_s,
            "reward_s": c.reward_s,
            "update_s": t3 - t2,
        }
        if self.config.data.context == "inherit":
            row["update_truncated"] = self.truncated
        for k, v in row.items():
            self._window.setdefault(k, []).append(v)
        return metrics

    def schedule_updates(self) -> np.ndarray:
        """``schedule_steps`` counted in optimizer updates, for the update step."""
        return np.int32(self.schedule_steps * self.settings.updates_per_step)

    def start_row(self) -> dict[str, Any]:
        """The held-out evaluation of the starting (SFT) policy, logged at step 0."""
        return self._watched(0, self.held_out()) if self.settings.eval_every else {}

    def row(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        steps_in_window = len(self._window.get("reward", ()))
        row = {k: float(np.max(v) if k in WINDOW_MAX else np.mean(v)) for k, v in self._window.items()}
        if self.steps_without_signal:
            row["steps_without_signal"] = self.steps_without_signal
        self._window = {}
        every = self.settings.eval_every
        if every and (step // every > (step - steps_in_window) // every or step == self.schedule_steps):
            row.update(self.held_out())
        return self._watched(step, row)

    def held_out(self) -> dict[str, float]:
        """Greedy accuracy and decoding statistics of the current policy on the
        held-out slice, as ``eval_*``."""
        policy = DecodeModel(self.state.model, self.decode_fn, self.init_cache, self.page_size_for)
        ((_, kwargs),) = sweep_settings(None, [], self.config)
        _, summary = evaluate_problems(
            policy,
            self.tokenizer,
            self.config,
            self.eval_problems,
            samples=1,
            temperature=0.0,
            top_p=1.0,
            seed=self.config.seed,
            mesh=self.mesh,
            **kwargs,
        )
        return {f"eval_{k}": float(v) for k, v in summary.items() if k not in ("problems", "samples")}

    def _watched(self, step: int, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with the warning lines of ``TrendWatch`` under ``warnings``."""
        if self.watch is None:  # a resumed run first reads the rows logged before
            self.watch = TrendWatch(self.settings.eval_problems)
            for old in read_metrics(os.path.join(self.workdir, "metrics.jsonl")):
                self.watch.observe(old["step"], old)
        warnings = self.watch.observe(step, row)
        return {**row, "warnings": warnings} if warnings else row


def held_out_problems(info: Any, settings: RLSettings) -> list[Any]:
    """The fixed validation slice of the periodic evaluation (empty when off)."""
    if not settings.eval_every:
        return []
    problems = make_problem_source(info, "validation")
    if len(problems) < settings.eval_problems:
        raise ConfigError(
            f"config.rl.eval_problems={settings.eval_problems} but the validation split has {len(problems)} problems"
        )
    return problems[: settings.eval_problems]


def make_task(config: RunConfig, workdir: str) -> RLTask:
    """The RL task of ``config`` in ``workdir``: dataset, SFT model, mesh."""
    settings = RLSettings.from_config(config)
    sharding.initialize_distributed()
    mesh = sharding.make_mesh(config.mesh)
    check_workdir(workdir, config)
    info = build_dataset_once(config)
    loaded = load_sft(config, settings, workdir, load_tokenizer(info.tokenizer_path))
    return RLTask(config, settings, info, loaded, mesh, workdir)


def run_rl(config: RunConfig, workdir: str, *, stop_at: int | None = None) -> dict[str, Any]:
    """GRPO per ``config`` in ``workdir``; returns the last logged metrics.
    ``stop_at`` ends this run at that step (checkpointed, resumable)."""
    task = make_task(config, workdir)
    result = run_loop(task, LoopSettings.from_config(config.train), workdir, stop_at=stop_at)
    return dict(result.last, step=result.step, preempted=result.preempted)
