"""A run's workdir: where it lives by default and what it may hold."""

from __future__ import annotations

import json
import os

import jax

from apr_jax.config import loading as config_lib
from apr_jax.config.identity import identity_diff
from apr_jax.config.sections import RunConfig
from apr_jax.runtime.checkpoint import has_checkpoints
from apr_jax.training.loop import TrainingError


def default_workdir(config: RunConfig) -> str:
    return os.path.join("runs", config.name)


def check_workdir(workdir: str, config: RunConfig) -> None:
    """Refuse a workdir that holds a run of another config (or, for RL,
    another mode); record ours."""
    path = os.path.join(workdir, "config.json")
    if config.mode == "rl" and os.path.exists(path):
        try:
            with open(path) as f:
                mode = json.load(f).get("mode")
        except (OSError, json.JSONDecodeError):
            mode = "rl"  # reported below
        if mode != "rl":
            raise TrainingError(f"workdir {workdir} holds a {mode} run; use another --workdir for RL")
    # A config.json without checkpoints is from a start that failed (bad input):
    # it holds no run yet, so the corrected config replaces it.
    if os.path.exists(path) and has_checkpoints(workdir):
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise TrainingError(f"{path} is unreadable ({e}); move it away to start over") from None
        diffs = identity_diff(saved, config)
        if diffs:
            raise TrainingError(
                f"workdir {workdir} holds a run of a different config: {'; '.join(diffs[:3])}; use another --workdir"
            )
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(config_lib.to_json(config))
        os.replace(tmp, path)
