"""Experiment configs: load a `configs/NAME.py`, apply `--config.a.b=value`
overrides, validate, and report every mistake as one line naming the key.

Follows the Flax examples' command line:

    python -m apr_jax.train --workdir=DIR --config=configs/NAME.py --config.train.lr=1e-3
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import types
from typing import Any, Iterable, Sequence

import ml_collections

from apr_jax.model.config import ModelConfig
from apr_jax.tasks.base import DEFAULT_TASK, TASK_NAMES
from apr_jax.tasks.registry import task_class

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "default.py")

# Sections whose values define what a checkpoint *is*; a workdir whose saved
# config differs here holds another run and is never resumed or overwritten.
IDENTITY_SECTIONS = ("task", "trace", "data", "model")

CHOICES = {
    "mode": ("sft", "rl"),
    "task.name": TASK_NAMES,
    "trace.kind": ("apr", "sosp"),
    "trace.style": ("terse", "reference"),
    "data.traces": ("stored", "streamed"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "model.attention": ("auto", "xla", "triton", "cudnn", "splash"),
    "model.remat": ("none", "dots", "full"),
    "train.on_nan": ("stop", "skip"),
    "rl.advantage": ("grpo", "drgrpo"),
    "rl.old_logprobs": ("sampling", "recompute"),
}
POSITIVE_INTS = (
    "task.num_train", "task.num_test", "data.vocab_size", "data.seq_len",
    "model.num_layers", "model.d_model", "model.num_heads", "model.num_kv_heads", "model.d_ff",
    "model.max_len", "train.batch_size", "train.grad_accum", "train.steps", "train.log_every",
    "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
    "eval.tokens_per_thread", "eval.batch_problems",
)

NON_NEGATIVE_INTS = ("data.pipeline_workers",)  # data.num_workers: resolve_num_workers checks it

# Keys that take an int or a list of ints (Countdown's counts of numbers, mixed
# in equal shares: [3, 4]); an override may turn one form into the other.
INPUT_COUNT_KEYS = ("task.num_inputs",)


class ConfigError(ValueError):
    """A config or command-line mistake, worded for the user in one line."""


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf key of ``config`` as a dotted path."""
    keys = []
    for name, value in config.items():
        path = f"{prefix}{name}"
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(flat_keys(value, path + "."))
        else:
            keys.append(path)
    return keys


def _unknown_key(key: str, config: ml_collections.ConfigDict) -> ConfigError:
    close = difflib.get_close_matches(key, flat_keys(config), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join('config.' + c for c in close)}?" if close else ""
    return ConfigError(f"unknown config key 'config.{key}'{hint}")


def _coerce(key: str, raw: str, current: Any) -> Any:
    """Parse ``raw`` to the type of the field's current value."""
    def bad(kind: str) -> ConfigError:
        return ConfigError(f"config.{key}: expected {kind}, got {raw!r}")

    if key in INPUT_COUNT_KEYS:
        return _coerce_counts(raw, bad)
    if isinstance(current, bool):
        low = raw.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise bad("true or false")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            try:
                as_float = float(raw)
            except ValueError:
                raise bad("an integer") from None
            if as_float.is_integer():
                return int(as_float)
            raise bad("an integer") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise bad("a number") from None
    if isinstance(current, str):
        return raw
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise bad("a list such as [1, 2]") from None
        if not isinstance(value, (tuple, list)):
            raise bad("a list such as [1, 2]")
        return type(current)(value)
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _coerce_counts(raw: str, bad: Any) -> int | list:
    """An ``INPUT_COUNT_KEYS`` value: an int (``4``) or a list (``[3,4]``);
    ``validate`` checks the counts themselves."""
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        raise bad("an integer or a list such as [3, 4]") from None
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # as any int key takes "4.0"
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise bad("an integer or a list such as [3, 4]")
    return value


def apply_override(config: ml_collections.ConfigDict, key: str, raw: str) -> None:
    """Set ``config.<key>`` from the string ``raw``; unknown keys are errors."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise _unknown_key(key, config)
        if i < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config.{key} is a section; set one of its fields, e.g. "
                          f"config.{key}.{next(iter(current.keys()))}")
    value = _coerce(key, raw, current)
    with node.unlocked() if hasattr(node, "unlocked") else _null():
        if key in INPUT_COUNT_KEYS and type(value) is not type(current):
            del node[parts[-1]]  # a ConfigDict field keeps its first type; this key takes both
        node[parts[-1]] = value


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def config_module(path: str) -> types.ModuleType:
    """Run the config file ``path`` as a fresh module (not put on ``sys.path``)."""
    spec = importlib.util.spec_from_file_location(f"apr_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling(config_file: str, name: str) -> types.ModuleType:
    """The config module ``name`` in the folder of ``config_file``: how one
    config builds on another, e.g. ``sibling(__file__, "default").get_config()``."""
    return config_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py"))


def load_config(path: str | None = None, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Load ``path`` (a python file with ``get_config()``), apply ``key=value``
    overrides (keys without the ``config.`` prefix) and validate."""
    path = path or DEFAULT_CONFIG
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        module = config_module(path)
    except Exception as e:  # a config file with a bug is still a config error
        raise ConfigError(f"{path}: cannot be loaded: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config()")
    config = module.get_config()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} needs the form config.a.b=value")
        key, raw = item.split("=", 1)
        key = key.removeprefix("--").removeprefix("config.")
        apply_override(config, key, raw)
    validate(config)
    return config


def get(config: ml_collections.ConfigDict, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict) -> None:
    """Reject values that would only fail later, deep inside JAX."""
    keys = set(flat_keys(config))
    for key, allowed in CHOICES.items():
        if key in keys and get(config, key) not in allowed:
            raise ConfigError(f"config.{key}={get(config, key)!r} is not one of {', '.join(allowed)}")
    for key in POSITIVE_INTS:
        if key in keys and get(config, key) <= 0:
            raise ConfigError(f"config.{key}={get(config, key)} must be a positive integer")
    for key in NON_NEGATIVE_INTS:
        if key in keys and get(config, key) < 0:
            raise ConfigError(f"config.{key}={get(config, key)} must be >= 0")
    try:  # the task section is the task's to check
        task_class(config.task.get("name", DEFAULT_TASK)).check_settings(config.task.to_dict())
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:  # the model section's own checks (head layout, numerics, rotary)
        ModelConfig.from_config(config.model, config.data.vocab_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if config.data.seq_len > config.model.max_len:
        raise ConfigError(f"config.data.seq_len={config.data.seq_len} exceeds "
                          f"config.model.max_len={config.model.max_len}")
    # RL splits its rollout rows into grad_accum microbatches; train.batch_size is SFT's.
    if config.get("mode", "sft") == "sft" and config.train.batch_size % config.train.grad_accum:
        raise ConfigError(f"config.train.batch_size={config.train.batch_size} is not divisible by "
                          f"config.train.grad_accum={config.train.grad_accum}")
    if not 0.0 <= config.train.min_lr_ratio <= 1.0:
        raise ConfigError(f"config.train.min_lr_ratio={config.train.min_lr_ratio} must be in [0, 1]")
    if config.train.lr <= 0:
        raise ConfigError(f"config.train.lr={config.train.lr} must be positive")


def to_json(config: Any) -> str:
    """The config as written (a ConfigDict or a RunConfig), as JSON."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


# Identity keys added after runs were already saved, with the value a run
# saved without them had: an absent key matches only its default.
LATER_KEYS = {
    "task.name": "countdown",
    "data.tokenizer": "", "data.traces": "stored",
    "data.pipeline_workers": 0,  # the data iterator's saved state has one form per worker count
    "model.head_dim": 0, "model.qkv_bias": False, "model.qk_norm": False, "model.norm_eps": 1e-6,
    "model.rope_scaling_factor": 0.0, "model.rope_low_freq_factor": 1.0,
    "model.rope_high_freq_factor": 4.0, "model.rope_original_max_len": 8192,
}

# Where the data cache lives and how it is built do not change what is trained.
IDENTITY_EXEMPT = {"data": ("dir", "num_workers")}


def identity(config: Any) -> dict:
    """The part of a config (a dict, or anything with ``to_dict``: a ConfigDict
    or a RunConfig) that must match for a checkpoint to be resumed."""
    d = config if isinstance(config, dict) else config.to_dict()
    out = {k: dict(d.get(k) or {}) for k in IDENTITY_SECTIONS}
    for section, keys in IDENTITY_EXEMPT.items():
        for key in keys:
            out[section].pop(key, None)
    return out


def identity_diff(saved: dict, current: Any, ignore: Iterable[str] = ()) -> list[str]:
    """Dotted keys whose values differ between a saved config and ``current``
    (as for ``identity``; a ``LATER_KEYS`` key absent from ``saved`` counts as
    its old value; ``ignore``: dotted keys such as ``model.remat`` not compared)."""
    ignore = set(ignore)
    saved, now = identity(saved), identity(current)
    for key, old in LATER_KEYS.items():
        section, name = key.split(".")
        if name not in saved.get(section, {}) and now[section].get(name) == old:
            saved[section][name] = old
    diffs = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        elif path in ignore:
            return
        elif a is None and path in LATER_KEYS and b == LATER_KEYS[path]:
            return  # saved before the key existed, and it still has that run's value
        elif a != b and not (isinstance(a, (list, tuple)) and list(a) == list(b or [])):
            diffs.append(f"config.{path} (saved {a!r}, now {b!r})")

    walk(saved, now, "")
    return diffs


def parse_command_line(argv: Sequence[str], command: Any = None, *,
                       allowed: Sequence[str] | dict[str, str] = ("workdir", "config"),
                       switches: Sequence[str] | dict[str, str] = ()
                       ) -> tuple[dict[str, str], list[str]]:
    """Split ``--flag=value`` / ``--flag value`` arguments into plain flags and
    ``config.*`` overrides; a switch (``--name`` alone) reads as ``"true"``.
    ``command`` (an ``apr_jax.cli.Command``) names the flags with their help;
    without one, ``allowed`` and ``switches`` do (names, or name -> one-line
    description) and ``--config.*`` overrides are accepted. ``--help``/``-h``
    raises ``apr_jax.cli.HelpRequested`` with the help made from the same
    flags; unknown flags and other mistakes raise ``ConfigError``."""
    import sys

    from apr_jax import cli

    if command is None:
        command = cli.flags_command(f"python {os.path.basename(sys.argv[0])}", allowed, switches,
                                    overrides="set one config key, e.g. --config.train.lr=1e-3")
    if command.args or command.subcommands:
        raise TypeError(f"{command.prog} takes arguments or subcommands: "
                        f"read it with apr_jax.cli.read_command_line")
    line = cli.read_command_line(argv, command, error=ConfigError)
    return line.flags, line.overrides


def int_flag(flags: dict[str, str], name: str, default: int, *, zero_ok: bool = True) -> int:
    """The integer flag ``--name`` (``default`` when absent); one-line errors."""
    try:
        value = int(flags.get(name, default))
    except ValueError:
        raise ConfigError(f"--{name} must be an integer, got {flags[name]!r}") from None
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"--{name} must be positive, got {value}")
    return value


def float_flag(flags: dict[str, str], name: str) -> float | None:
    """The number flag ``--name``, or None when absent; one-line errors."""
    if name not in flags:
        return None
    try:
        return float(flags[name])
    except ValueError:
        raise ConfigError(f"--{name} must be a number, got {flags[name]!r}") from None
