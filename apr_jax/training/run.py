"""One training run of a config, SFT or RL by ``config.mode``: what
``python -m apr_jax.train`` and the comparison's training call."""

from __future__ import annotations

from typing import Any

from apr_jax.config.sections import RunConfig


def run_training(config: RunConfig, workdir: str, *, stop_at: int | None = None) -> dict[str, Any]:
    """Train per ``config`` (SFT or RL by ``config.mode``) in ``workdir``;
    returns the last logged metrics. ``stop_at`` ends this run at that step
    (checkpointed, resumable), as a preemption would."""
    if config.mode == "rl":
        from apr_jax.rl.train_rl import run_rl

        return run_rl(config, workdir, stop_at=stop_at)
    from apr_jax.training.sft import run_sft

    return run_sft(config, workdir, stop_at=stop_at)
