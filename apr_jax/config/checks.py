"""One-line checks of config values, worded by their config key
(``config.train.lr=0 must be positive``). Every section dataclass checks its
own fields with these when it is built, so each field has one check."""

from __future__ import annotations

from typing import Any, Sequence


class ConfigError(ValueError):
    """A config or command-line mistake, worded for the user in one line."""


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ConfigError(f"config.{key}={value!r} is not one of {', '.join(map(str, allowed))}")


def positive_int(key: str, value: Any) -> None:
    if not is_int(value) or value <= 0:
        raise ConfigError(f"config.{key}={value!r} must be a positive integer")


def non_negative_int(key: str, value: Any) -> None:
    if not is_int(value) or value < 0:
        raise ConfigError(f"config.{key}={value!r} must be >= 0")


def positive(key: str, value: Any) -> None:
    if not value > 0:
        raise ConfigError(f"config.{key}={value} must be positive")


def within(key: str, value: Any, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"config.{key}={value} must be in [{low:g}, {high:g}]")
