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
from typing import Any, Iterable

import ml_collections

from apr_jax.config.checks import ConfigError
from apr_jax.config.sections import RunConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "default.py")

# Keys that take an int or a list of ints (Countdown's counts of numbers, mixed
# in equal shares: [3, 4]); an override may turn one form into the other.
INPUT_COUNT_KEYS = ("task.num_inputs",)


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
        raise ConfigError(
            f"config.{key} is a section; set one of its fields, e.g. config.{key}.{next(iter(current.keys()))}"
        )
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
    config = _read_config(path, overrides)
    validate(config)
    return config


def _read_config(path: str | None, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    """``load_config`` before its checks."""
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
    return config


def get(config: ml_collections.ConfigDict, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict) -> None:
    """Reject values that would only fail later, deep inside JAX: every
    section's dataclass checks its own fields (``apr_jax.config.sections``)."""
    RunConfig.from_config(config)


def to_json(config: Any) -> str:
    """The config as written (a ConfigDict or a RunConfig), as JSON."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def load_run_config(path: str | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """``load_config`` as the frozen tree (built once: building it is the check)."""
    return RunConfig.from_config(_read_config(path, overrides))
