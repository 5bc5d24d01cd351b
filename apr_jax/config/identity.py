"""What a checkpoint *is*: the config sections that must match for a workdir
to be resumed, an SFT checkpoint to start RL or a model to be evaluated
under its own settings."""

from __future__ import annotations

from typing import Any, Iterable

# Sections whose values define what a checkpoint *is*; a workdir whose saved
# config differs here holds another run and is never resumed or overwritten.
IDENTITY_SECTIONS = ("task", "trace", "data", "model")

# Identity keys added after runs were already saved, with the value a run
# saved without them had: an absent key matches only its default.
LATER_KEYS = {
    "task.name": "countdown",
    "data.tokenizer": "",
    "data.traces": "stored",
    "data.pipeline_workers": 0,
    "data.context": "message",
    "data.join": "stitch",  # the data iterator's saved state has one form per worker count
    "model.head_dim": 0,
    "model.qkv_bias": False,
    "model.qk_norm": False,
    "model.norm_eps": 1e-6,
    "model.rope_scaling_factor": 0.0,
    "model.rope_low_freq_factor": 1.0,
    "model.rope_high_freq_factor": 4.0,
    "model.rope_original_max_len": 8192,
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
