"""Numerical faults: NaN/Inf in the loss or gradients. `tests/test_train.py`
covers the default stop (step number, hint, last good checkpoint kept); here:
the skip option, the checkpoints both modes leave behind, and a restart."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from helpers.tiny import SIX_STEPS

from apr_jax import train
from apr_jax.runtime.checkpoint import Checkpointer

TINY = SIX_STEPS + [
    "config.train.eval_every=6",
    "config.eval.num_problems=0",
    # A learning rate that overflows the parameters once warm-up lets it act.
    "config.train.lr=1e30",
    "config.train.grad_clip=0.0",
    "config.train.warmup_steps=4",
]


def args(data_dir, workdir, *extra):
    return [f"--workdir={workdir}"] + [f"--{o}" for o in TINY + [f"config.data.dir={data_dir}", *extra]]


def all_params_finite(workdir, step):
    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        item_names=("params",),
        options=ocp.CheckpointManagerOptions(read_only=True),
    )
    params = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
    return all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(params["params"])))


def test_skip_discards_bad_updates_counts_them_and_finishes(data_dir, tmp_path, capsys):
    workdir = str(tmp_path / "skip")
    assert train.main(args(data_dir, workdir, "config.train.on_nan=skip")) == 0
    capsys.readouterr()
    lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [l["step"] for l in lines] == [2, 4, 6]
    skipped = [l.get("skipped_steps", 0) for l in lines]
    assert skipped[-1] >= 1 and skipped == sorted(skipped), skipped
    steps = Checkpointer(workdir, read_only=True).steps()
    assert steps[-1] == 6
    assert all(all_params_finite(workdir, s) for s in steps), "no checkpoint may hold NaN/Inf"


def test_stop_then_restart_stops_again_at_the_same_step_from_a_good_checkpoint(data_dir, tmp_path, capsys):
    workdir = str(tmp_path / "stop")
    assert train.main(args(data_dir, workdir)) == 1
    first = capsys.readouterr()
    assert "loss or gradient became NaN/Inf at step" in first.err
    assert "config.train.on_nan=skip" in first.err and len(first.err.strip().splitlines()) == 1
    steps = Checkpointer(workdir, read_only=True).steps()
    assert all(all_params_finite(workdir, s) for s in steps)

    assert train.main(args(data_dir, workdir)) == 1  # the same command, deterministic
    second = capsys.readouterr()
    assert f"resumed from step {steps[-1]}" in second.out
    assert "damaged" not in second.out, "the kept checkpoint must load cleanly"
    fault_step = first.err.split("at step ")[1].split(";")[0]
    assert f"at step {fault_step};" in second.err
    assert Checkpointer(workdir, read_only=True).steps() == steps
