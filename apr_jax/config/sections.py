"""The run's settings as one frozen, typed tree: built once from a loaded
ConfigDict (``RunConfig.from_config``), then taken by the data pipeline,
evaluation, training and RL. Sections read as the config file writes them
(``config.train.lr``); nothing below the edge can change them.

The ConfigDict stays where configs are written or overridden (``configs/*.py``,
flags, a workdir's ``config.json``); ``RunConfig.to_dict()`` gives back the
dict it was built from, for saving and for checkpoint identities."""

from __future__ import annotations

import copy
import dataclasses
import types
from typing import Any, ClassVar, Mapping

import ml_collections

from apr_jax import protocol
from apr_jax.config import checks
from apr_jax.config.checks import ConfigError
from apr_jax.config.trace import TraceConfig
from apr_jax.decode.limits import EngineLimits
from apr_jax.model.config import ModelConfig
from apr_jax.runtime.sharding import MeshConfig
from apr_jax.tasks.base import DEFAULT_TASK, TASK_NAMES
from apr_jax.tasks.registry import task_class

MODES = ("sft", "rl")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """The ``task`` section: the task's name and its own settings (each task
    reads its keys: ``apr_jax.tasks``)."""

    name: str
    settings: Mapping[str, Any]

    def __post_init__(self):
        checks.choice("task.name", self.name, TASK_NAMES)
        task_class(self.name).check_settings(dict(self.settings))  # the task's own keys

    def as_dict(self) -> dict[str, Any]:
        """The section as a dict, ``name`` included."""
        return {"name": self.name, **self.settings}

    def __getattr__(self, key: str) -> Any:  # config.task.num_train, as the config file says
        if key.startswith("__") or key == "settings":
            raise AttributeError(key)
        try:
            return self.settings[key]
        except KeyError:
            raise AttributeError(f"config.task has no {key!r} (task {self.name})") from None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The ``data`` section: the token cache and how batches are cut from it."""

    dir: str = "data_cache"  # relative to the current directory unless absolute
    vocab_size: int = 96
    seq_len: int = 256
    packing: bool = True
    shuffle_seed: int = 0
    num_workers: int = 0  # dataset-build processes; 0: one per CPU
    tokenizer: str = ""  # "": train a sentencepiece tokenizer; else a converted model's tokenizer.apr.json
    # "stored": every trace is generated once when the dataset is built and read back each
    # epoch; "streamed": only problems and the tokenizer are built, and the input pipeline
    # generates each trace when it is read (Countdown only; training starts at once).
    traces: str = "stored"
    pipeline_workers: int = 0  # input-pipeline processes; 0: reader threads in the training process
    # What a child sees (apr_jax.protocol): "message" (its spawn message alone; one row per
    # thread) or "inherit" (its parent's context up to the fork; one tree sequence per tree).
    context: str = "message"
    join: str = "stitch"  # inherit: "stitch" (paths read in place) | "linear" (paths re-read as text)

    def __post_init__(self):
        for name in ("vocab_size", "seq_len"):
            checks.positive_int(f"data.{name}", getattr(self, name))
        checks.choice("data.traces", self.traces, ("stored", "streamed"))
        checks.choice("data.context", self.context, protocol.CONTEXTS)
        checks.choice("data.join", self.join, protocol.JOINS)
        checks.non_negative_int("data.pipeline_workers", self.pipeline_workers)
        # data.num_workers: apr_jax.data.tfds_builder.resolve_num_workers reads and checks it


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section: optimizer and loop (for RL: RL steps)."""

    init_from: str = ""  # a workdir or WORKDIR/checkpoints/STEP (e.g. python -m apr_jax.convert's --out)
    batch_size: int = 16
    grad_accum: int = 1
    steps: int = 800
    lr: float = 3e-3
    warmup_steps: int = 40
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    grad_clip: float = 1.0
    log_every: int = 25
    eval_every: int = 400
    eval_batches: int = 4
    checkpoint_every: int = 400
    keep_checkpoints: int = 3
    on_nan: str = "stop"  # stop | skip
    time_limit_minutes: float = 0.0  # 0: no limit; else stop training (checkpointed) after this

    def __post_init__(self):
        for name in (
            "batch_size",
            "grad_accum",
            "steps",
            "log_every",
            "eval_every",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            checks.positive_int(f"train.{name}", getattr(self, name))
        checks.choice("train.on_nan", self.on_nan, ("stop", "skip"))
        checks.within("train.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        checks.positive("train.lr", self.lr)


@dataclasses.dataclass(frozen=True)
class EvalConfig(EngineLimits):
    """The ``eval`` section: the engine's limits (``EngineLimits``: fields,
    defaults and checks) and the evaluation's problems and sampling (also RL's
    rollouts' limits)."""

    num_problems: int = 100
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0

    checked_as: ClassVar[str] = "config.eval."

    def __post_init__(self):
        super().__post_init__()
        checks.non_negative_int("eval.num_problems", self.num_problems)  # 0: no held-out evaluation
        checks.positive_int("eval.samples", self.samples)


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """The ``rl`` section, with the reference study's GRPO defaults;
    ``apr_jax.rl.train_rl.RLSettings`` checks it against the rest of the config."""

    init_from: str = ""  # SFT workdir (newest checkpoint) or WORKDIR/checkpoints/STEP
    split: str = "train"  # problems to roll out
    prompt_pool: int = 0  # roll out only the split's first N problems (0 = all); small N checks learning
    prompts_per_step: int = 8
    samples_per_prompt: int = 4  # G: the group of each prompt
    temperature: float = 1.0
    inner_epochs: int = 1  # passes over each rollout batch
    minibatches: int = 1  # optimizer updates per pass (whole rollouts per minibatch)
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.001  # k3 KL to the frozen SFT model
    advantage: str = "grpo"  # grpo: (reward - group mean) / group std | drgrpo: reward - group mean
    # The ratio's old log-probs: sampling (the engine's) | recompute (the update forward's on the
    # sampling parameters, one more forward per step; logs the gap as logp_gap_mean/_max)
    old_logprobs: str = "sampling"
    skip_flat_groups: bool = False  # update only on groups whose rewards differ (saves the flat ones' compute)
    # update on the threads packed into rows (False: one thread per max_len row); inherit family: tree rows always
    packed_update: bool = True
    require_eos: bool = True  # reward a correct answer only when the root then stopped on EOS
    format_penalty: float = 0.0  # subtracted when the root ends without an answer line
    acceleration_weight: float = 0.0  # x min(ln(total / critical-path tokens), cap) for correct rollouts
    acceleration_cap: float = 2.0  # cap on ln(acceleration): binds only above e^2 = 7.4x
    latency_bonus: float = 0.0  # x (1 - sequential / total tokens) for correct rollouts
    condition_penalty: float = 0.0  # x relative miss of the requested child count
    token_cost: float = 0.0  # x clip(total / correct group mean - 1, -1, 1) off correct rollouts; <= 0.45
    latency_weight: float = 0.0  # x clip(1 - critical path / correct group mean, -1, 1) for correct; <= 0.45
    condition_children: tuple[int, ...] = ()  # child counts to request when trace.condition (empty: eval.max_children)
    max_threads: int = 0  # thread slots per rollout; 0 = the engine's full tree
    rollout_chunks: int = 1  # sequential engine runs per step (bounds KV-cache memory)
    eval_every: int = 0  # RL steps between greedy held-out evaluations (and at 0 and the end); 0: none
    eval_problems: int = 0  # validation problems of each held-out evaluation (the first N)

    def __post_init__(self):
        """The RL-only fields; the update's (clip, KL, advantage, epochs) and the
        reward's are checked by ``GrpoConfig`` and ``RewardConfig``, and the
        fields that depend on other sections by ``apr_jax.rl.train_rl.RLSettings``."""
        for name in ("prompts_per_step", "rollout_chunks"):
            checks.positive_int(f"rl.{name}", getattr(self, name))
        if not (checks.is_int(self.samples_per_prompt) and self.samples_per_prompt >= 2):
            raise ConfigError(
                f"config.rl.samples_per_prompt={self.samples_per_prompt} must be >= 2 "
                f"(GRPO compares the samples of one prompt)"
            )
        for name in ("prompt_pool", "max_threads", "eval_every", "eval_problems"):
            checks.non_negative_int(f"rl.{name}", getattr(self, name))
        checks.choice("rl.split", self.split, ("train", "validation", "test"))
        if any(int(c) < 0 for c in self.condition_children):
            raise ConfigError(f"config.rl.condition_children={list(self.condition_children)} must be >= 0")
        if self.eval_every > 0 and self.eval_problems == 0:
            raise ConfigError(
                f"config.rl.eval_every={self.eval_every} needs config.rl.eval_problems > 0 "
                f"(or eval_every=0 for no held-out evaluation)"
            )
        if self.prompts_per_step % self.rollout_chunks:
            raise ConfigError(
                f"config.rl.prompts_per_step={self.prompts_per_step} is not divisible by "
                f"config.rl.rollout_chunks={self.rollout_chunks}"
            )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run's settings. ``model.vocab_size`` is ``data.vocab_size``
    until a tokenizer says otherwise (``model_for``)."""

    name: str
    mode: str
    seed: int
    task: TaskConfig
    trace: TraceConfig
    data: DataConfig
    model: ModelConfig
    mesh: MeshConfig
    train: TrainConfig
    eval: EvalConfig
    rl: RLConfig | None
    source: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_config(cls, config: Any) -> "RunConfig":
        """From a ConfigDict or the dict of one (a saved ``config.json`` or
        checkpoint meta); keys a section does not know are errors, keys a
        config saved before they existed lacks take the defaults."""
        d = config.to_dict() if hasattr(config, "to_dict") else copy.deepcopy(dict(config))
        unknown = sorted(set(d) - set(TOP_DEFAULTS) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config key 'config.{unknown[0]}'")
        top = {**TOP_DEFAULTS, **{k: d[k] for k in TOP_DEFAULTS if k in d}}
        checks.choice("mode", top["mode"], MODES)
        task = dict(d.get("task") or {})
        try:  # every section checks its own fields; a ValueError is a config mistake
            task_config = TaskConfig(str(task.pop("name", DEFAULT_TASK)), types.MappingProxyType(task))
            data = _section(DataConfig, d, "data")
            _check_keys(ModelConfig, d, "model", exempt=("vocab_size",))
            model = ModelConfig.from_config(d.get("model") or {}, data.vocab_size)
            config = cls(
                name=str(top["name"]),
                mode=str(top["mode"]),
                seed=int(top["seed"]),
                task=task_config,
                trace=_section(TraceConfig, d, "trace"),
                data=data,
                model=model,
                mesh=_section(MeshConfig, d, "mesh"),
                train=_section(TrainConfig, d, "train"),
                eval=_section(EvalConfig, d, "eval"),
                rl=_section(RLConfig, d, "rl") if "rl" in d else None,
                source=types.MappingProxyType(d),
            )
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(str(e)) from None
        config.check_sections_agree()
        return config

    def check_sections_agree(self) -> None:
        """The checks that read two sections."""
        if self.data.seq_len > self.model.max_len:
            raise ConfigError(
                f"config.data.seq_len={self.data.seq_len} exceeds config.model.max_len={self.model.max_len}"
            )
        contexts = task_class(self.task.name).contexts(self.task.as_dict())
        if self.data.context not in contexts:
            raise ConfigError(
                f"config.data.context={self.data.context!r}, but task {self.task.name!r} with these settings "
                f"writes {' or '.join(contexts)}-family trees"
            )
        if self.data.context == "inherit" and self.model.attention == "cudnn":
            raise ConfigError(
                "config.data.context='inherit' trains with a tree mask, which model.attention='cudnn' cannot "
                "apply; set config.model.attention=auto (the Pallas tree kernel on GPU and TPU)"
            )
        # RL splits its rollout rows into grad_accum microbatches; train.batch_size is SFT's.
        if self.mode == "sft" and self.train.batch_size % self.train.grad_accum:
            raise ConfigError(
                f"config.train.batch_size={self.train.batch_size} is not divisible by "
                f"config.train.grad_accum={self.train.grad_accum}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The config as written (a copy of the dict it was built from)."""
        return copy.deepcopy(dict(self.source))

    def section(self, name: str) -> dict[str, Any]:
        """Section ``name`` as written: what checkpoint and dataset identities hash."""
        return copy.deepcopy(dict(self.source.get(name) or {}))

    def model_for(self, vocab_size: int) -> ModelConfig:
        """The model section for a tokenizer of ``vocab_size`` tokens."""
        return dataclasses.replace(self.model, vocab_size=int(vocab_size))

    def replace(self, **sections: Any) -> "RunConfig":
        """A copy with whole sections replaced (e.g. RL's optimizer counting
        updates); ``to_dict`` still gives the config as written."""
        return dataclasses.replace(self, **sections)


TOP_DEFAULTS = {"name": "", "mode": "sft", "seed": 0}  # the keys above the sections
SECTIONS = ("task", "trace", "data", "model", "mesh", "train", "eval", "rl")


def _check_keys(cls: type, d: Mapping[str, Any], name: str, exempt: tuple[str, ...] = ()) -> None:
    known = {f.name for f in dataclasses.fields(cls)} - set(exempt)
    unknown = sorted(set(d.get(name) or {}) - known)
    if unknown:
        raise ConfigError(f"unknown config key 'config.{name}.{unknown[0]}'")


def _section(cls: type, d: Mapping[str, Any], name: str) -> Any:
    """Section ``name`` of ``d`` as dataclass ``cls``; unknown keys are errors."""
    _check_keys(cls, d, name)
    values = dict(d.get(name) or {})
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    return cls(**values)


def section_defaults(cls: type) -> ml_collections.ConfigDict:
    """The fields of section dataclass ``cls`` that have defaults, as a
    ConfigDict: what a config file starts from (``default_config``)."""
    section = ml_collections.ConfigDict()
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            setattr(section, field.name, field.default)
    return section


def default_config() -> ml_collections.ConfigDict:
    """Every section's defaults, the one place they are written (the
    dataclasses above, ``TraceConfig``, ``ModelConfig``, ``MeshConfig``).
    ``configs/default.py`` starts here and adds the task and model shape;
    ``rl`` is added by RL configs (``section_defaults(RLConfig)``)."""
    c = ml_collections.ConfigDict()
    for key, value in TOP_DEFAULTS.items():
        setattr(c, key, value)
    for name, cls in (
        ("trace", TraceConfig),
        ("data", DataConfig),
        ("model", ModelConfig),
        ("mesh", MeshConfig),
        ("train", TrainConfig),
        ("eval", EvalConfig),
    ):
        setattr(c, name, section_defaults(cls))
    return c
