"""`python -m apr_jax.train` end to end on a tiny config: metrics, checkpoints,
resume determinism and one-line errors."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers.tiny import SIX_STEPS

from apr_jax import train
from apr_jax.config import loading as config_lib
from apr_jax.config.loading import load_run_config
from apr_jax.training.run import run_training

TINY = SIX_STEPS + [
    "config.train.warmup_steps=2",
    "config.train.eval_every=4",
    "config.eval.num_problems=4",
    "config.eval.batch_problems=4",
    "config.eval.tokens_per_thread=24",
]


def tiny(data_dir, *extra):
    return TINY + [f"config.data.dir={data_dir}", *extra]


def final_params(workdir, step=None):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("params",))
    step = manager.latest_step() if step is None else step
    params = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
    return step, jax.device_get(params["params"])


def test_a_step_budget_ends_the_run_and_its_schedule(data_dir, tmp_path):
    """A workdir whose time limit planned 4 of 6 steps trains 4, anneals at 4,
    validates and evaluates there (``apr_jax.training.step_budget``)."""
    from apr_jax.training.optim import learning_rate_schedule
    from apr_jax.training.step_budget import StepBudget, write_budget

    config = load_run_config(None, tiny(data_dir))
    workdir = str(tmp_path / "budget")
    write_budget(workdir, StepBudget(steps=4, decided_at=0, seconds_per_step=1.0, configured_steps=6))
    result = run_training(config, workdir)
    lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [l["step"] for l in lines] == [2, 4, 4] and result["step"] == 4
    assert "val_loss" in lines[1] and "test_accuracy" in lines[2]
    lr = learning_rate_schedule(config.train)
    assert lines[1]["lr"] == pytest.approx(float(lr(3, 4)), rel=1e-5)
    assert float(lr(3, 4)) != pytest.approx(float(lr(3, 6)), rel=1e-2)


def test_train_writes_metrics_results_and_tensorboard(data_dir, tmp_path):
    config = load_run_config(None, tiny(data_dir))
    straight = str(tmp_path / "straight")
    run_training(config, straight)
    lines = [json.loads(l) for l in open(os.path.join(straight, "metrics.jsonl"))]
    # Three logged steps, then the held-out evaluation's summary.
    assert [l["step"] for l in lines] == [2, 4, 6, 6]
    assert 0.0 <= lines[-1]["test_accuracy"] <= 1.0 and lines[-1]["test_problems"] == 4
    lines = lines[:3]
    results = [json.loads(l) for l in open(os.path.join(straight, "results_test.jsonl"))]
    assert len(results) == 4
    for row in results:
        assert {
            "numbers",
            "target",
            "solved",
            "operations",
            "total_tokens",
            "sequential_tokens",
            "num_threads",
            "max_context",
            "tree",
        } <= set(row)
        assert row["total_tokens"] <= row["num_threads"] * 24
    assert all(np.isfinite(l["loss"]) for l in lines)
    assert "val_loss" in lines[1] and "tokens_per_s" in lines[0] and "lr" in lines[0]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert os.listdir(os.path.join(straight, "tensorboard"))


def test_main_rejects_bad_input_in_one_line(data_dir, tmp_path, capsys):
    cases = [
        (["--config.train.lrr=1"], "unknown config key 'config.train.lrr'"),
        (["--config=configs/nope.py"], "config file not found: configs/nope.py"),
        (["--workdirr=x"], "unknown flag --workdirr"),
        (
            [f"--workdir={tmp_path}/b", "--config.train.batch_size=12", "--config.mesh.data=8"],
            "does not divide over the 8 data-parallel devices",
        ),
    ]
    for argv, message in cases:
        assert train.main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert message in err, err
        assert len(err.splitlines()) == 1, err


def test_print_config_prints_the_loaded_config_and_trains_nothing(tmp_path, capsys):
    workdir = tmp_path / "never"
    assert train.main([f"--workdir={workdir}", "--print_config", "--config.train.lr=0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = config_lib.load_config(None, ["config.train.lr=0.5"]).to_dict()
    assert printed == json.loads(json.dumps(expected)) and printed["train"]["lr"] == 0.5
    assert not workdir.exists()


def test_workdir_of_another_config_is_refused(data_dir, tmp_path, capsys):
    workdir = str(tmp_path / "w")
    args = [f"--workdir={workdir}"] + [
        f"--{o}" for o in tiny(data_dir, "config.train.steps=2", "config.eval.num_problems=0")
    ]
    assert train.main(args) == 0
    capsys.readouterr()
    assert train.main(args + ["--config.model.d_model=64"]) == 1
    err = capsys.readouterr().err.strip()
    assert "holds a run of a different config: config.model.d_model (saved 32, now 64)" in err
    assert len(err.splitlines()) == 1


def test_nan_stops_with_step_and_keeps_last_good_checkpoint(data_dir, tmp_path, capsys):
    workdir = str(tmp_path / "nan")
    args = [f"--workdir={workdir}"] + [
        f"--{o}"
        for o in tiny(data_dir, "config.train.lr=1e30", "config.train.grad_clip=0.0", "config.train.warmup_steps=4")
    ]
    code = train.main(args)
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert "loss or gradient became NaN/Inf at step" in err
    assert "last good checkpoint" in err
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert steps, "the checkpoint from before the fault must be kept"
    assert f"last good checkpoint: {steps[-1]}" in err
    for step in steps:
        params = final_params(workdir, step)[1]
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
