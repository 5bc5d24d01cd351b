"""`python -m apr_jax.train`: supervised training or RL from a config.

    python -m apr_jax.train --workdir=DIR --config=configs/NAME.py --config.train.lr=1e-3

``--print_config`` prints the whole config (every key, overrides applied) as
JSON and exits. With no flags it trains ``configs/default.py`` into
``runs/default``; a config with ``mode = "rl"`` runs GRPO from an SFT
checkpoint instead. Running the same command again on the same workdir
resumes from the newest readable checkpoint. SIGTERM (TPU preemption) saves a checkpoint and exits cleanly.
"""

from __future__ import annotations

import sys

from apr_jax.cli import Command, Flag  # no JAX: --help stays fast

# The imports live in main: the dataset build's worker processes are started
# by spawn once JAX runs, and each imports this main module again; at module
# level, JAX, Flax and orbax would cost every worker seconds.

COMMAND = Command(
    "python -m apr_jax.train",
    'Supervised training or RL (config mode = "rl") from a config; the same command resumes.',
    flags=(
        Flag(
            "workdir",
            "checkpoints, metrics and logs; resumed when it holds this run (default runs/<config.name>)",
            value="DIR",
        ),
        Flag("config", "the config file (default configs/default.py)", value="FILE"),
        Flag("print_config", "print the whole config (every key, overrides applied) as JSON and exit", value=None),
    ),
    overrides="set one config key, e.g. --config.train.lr=1e-3",
    examples=("python -m apr_jax.train --workdir=runs/demo --config=configs/default.py --config.train.steps=200",),
)


def main(argv: list[str] | None = None) -> int:
    from apr_jax.cli import answer_help

    argv = sys.argv[1:] if argv is None else argv
    if answer_help(COMMAND, argv):  # before JAX is imported
        return 0

    from apr_jax.cli import parse_command_line, run_command
    from apr_jax.config import loading as config_lib
    from apr_jax.config.loading import load_run_config
    from apr_jax.runtime.checkpoint import CheckpointError
    from apr_jax.training.loop import TrainingError
    from apr_jax.training.run import run_training
    from apr_jax.training.workdir import default_workdir

    def body() -> None:
        flags, overrides = parse_command_line(argv, COMMAND)
        config = load_run_config(flags.get("config"), overrides)
        if flags.get("print_config"):
            print(config_lib.to_json(config))
            return
        run_training(config, flags.get("workdir") or default_workdir(config))

    return run_command(body, usage=(ValueError,), failures=(CheckpointError, TrainingError))


if __name__ == "__main__":
    sys.exit(main())
