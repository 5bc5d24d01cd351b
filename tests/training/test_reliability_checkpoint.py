"""Damaged checkpoints: a truncated, partly written or garbage latest checkpoint
is detected, the run falls back to the previous good one with a warning that
names it, never loads garbage and never deletes a checkpoint."""

import glob
import json
import os
import shutil
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from helpers.tiny import TINY_RUN

from apr_jax import train
from apr_jax.config.loading import load_run_config
from apr_jax.data.build import build_dataset
from apr_jax.data.pipeline import make_iterator
from apr_jax.data.tokenizer import Tokenizer
from apr_jax.evaluation.loading import load_for_inference
from apr_jax.runtime import sharding
from apr_jax.runtime.checkpoint import Checkpointer
from apr_jax.training import train_state
from apr_jax.training.run import run_training

TINY = TINY_RUN + [
    "config.task.num_train=240",
    "config.train.steps=6",
    "config.train.warmup_steps=2",
    "config.train.log_every=2",
    "config.train.eval_every=6",
    "config.train.checkpoint_every=2",
    "config.eval.num_problems=0",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished run with checkpoints 2, 4 and 6, and its config."""
    root = tmp_path_factory.mktemp("ckpt")
    config = load_run_config(None, TINY + [f"config.data.dir={root / 'data'}"])
    workdir = str(root / "base")
    run_training(config, workdir)
    return config, workdir


def copy_run(base, tmp_path):
    target = str(tmp_path / "run")
    shutil.copytree(base[1], target)
    return target


def files_under(path):
    return [f for f in glob.glob(os.path.join(path, "**"), recursive=True) if os.path.isfile(f)]


def restore(config, workdir, *, read_only=False):
    """Checkpointer.restore_latest as run_training calls it."""
    info = build_dataset(config, log=None)
    mesh = sharding.make_mesh(sharding.MeshConfig.from_config(config.mesh))
    _, model, optimizer = train_state.build_model_and_optimizer(config, Tokenizer(info.tokenizer_path).vocab_size, mesh)
    _, state = train_state.split(model, optimizer)
    iterator = make_iterator(config, info, "train", batch_size=config.train.batch_size)
    checkpointer = Checkpointer(workdir, read_only=read_only)
    try:
        restored = checkpointer.restore_latest(*map(train_state.abstract_like, state.checkpoint_trees()), iterator)
    finally:
        checkpointer.close()
    return restored, iterator


def params_at(workdir, step):
    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        item_names=("params",),
        options=ocp.CheckpointManagerOptions(read_only=True),
    )
    out = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
    return jax.device_get(out["params"])


def assert_trees_equal(a, b):
    """Leaf-by-leaf equality; list indices and their string forms are one key."""

    def flat(tree):
        return {
            tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(x)
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
        }

    fa, fb = flat(a), flat(b)
    assert sorted(fa) == sorted(fb)
    for key in fa:
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=str(key))


def truncate_params_data(step_dir):
    for f in files_under(os.path.join(step_dir, "params")):
        if f"{os.sep}d{os.sep}" in f:
            with open(f, "r+b") as fh:
                fh.truncate(7)


def remove_params_manifests(step_dir):
    for f in files_under(os.path.join(step_dir, "params")):
        if os.path.basename(f) in ("manifest.ocdbt", "_METADATA"):
            os.remove(f)


def garbage_meta(step_dir):
    for f in files_under(os.path.join(step_dir, "meta")):
        if "commit" not in f:
            with open(f, "w") as fh:
                fh.write('{"config": {"na')


def truncated_data_state(step_dir):
    for f in files_under(os.path.join(step_dir, "data")):
        if f.endswith(".json"):
            with open(f, "r+b") as fh:
                fh.truncate(9)


def missing_opt_state(step_dir):
    shutil.rmtree(os.path.join(step_dir, "opt_state"))


DAMAGE = {
    "truncated_params": truncate_params_data,
    "no_params_manifest": remove_params_manifests,
    "garbage_meta": garbage_meta,
    "truncated_data_state": truncated_data_state,
    "missing_opt_state": missing_opt_state,
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_latest_falls_back_to_previous_and_keeps_it(base, tmp_path, capsys, kind):
    config, _ = base
    workdir = copy_run(base, tmp_path)
    damaged_dir = os.path.join(workdir, "checkpoints", "6")
    DAMAGE[kind](damaged_dir)
    damaged_files = sorted(os.path.relpath(f, damaged_dir) for f in files_under(damaged_dir))

    restored, iterator = restore(config, workdir)
    out = capsys.readouterr().out
    assert restored is not None and restored[0] == 4
    assert f"checkpoint {damaged_dir} is damaged or incompatible" in out, out
    assert_trees_equal(jax.device_get(restored[1]), params_at(workdir, 4))
    assert iterator.get_state()["stats"]["rows"] == 4 * config.train.batch_size
    # The damaged checkpoint is moved aside, whole; the good ones stay.
    aside = os.path.join(workdir, "damaged_checkpoints", "6")
    assert f"moved damaged checkpoint {damaged_dir} to {aside}" in out
    assert sorted(os.path.relpath(f, aside) for f in files_under(aside)) == damaged_files
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_resume_after_damage_redoes_the_lost_steps_exactly(base, tmp_path, capsys):
    config, original = base
    workdir = copy_run(base, tmp_path)
    truncate_params_data(os.path.join(workdir, "checkpoints", "6"))
    assert run_training(config, workdir)["step"] == 6  # saving step 6 again must not fail
    out = capsys.readouterr().out
    assert "resumed from step 4" in out
    assert_trees_equal(params_at(workdir, 6), params_at(original, 6))
    assert os.path.isdir(os.path.join(workdir, "damaged_checkpoints", "6"))


def test_non_finite_parameters_are_never_loaded(base, tmp_path, capsys):
    config, _ = base
    workdir = copy_run(base, tmp_path)
    (_, params, opt_state, meta), iterator = restore(config, workdir)
    poisoned = jax.tree.map(lambda x: np.full(x.shape, np.nan, x.dtype), jax.device_get(params))
    checkpointer = Checkpointer(workdir)
    checkpointer.save(8, poisoned, opt_state, iterator, meta)
    checkpointer.close()
    capsys.readouterr()
    restored, _ = restore(config, workdir)
    assert restored[0] == 6
    assert "checkpoints/8 is damaged or incompatible" in capsys.readouterr().out


def test_half_written_step_directory_is_never_listed(base, tmp_path):
    config, _ = base
    workdir = copy_run(base, tmp_path)
    checkpoints = os.path.join(workdir, "checkpoints")
    partial = os.path.join(checkpoints, "8.orbax-checkpoint-tmp-1700000000")
    shutil.copytree(os.path.join(checkpoints, "6"), partial)
    shutil.rmtree(os.path.join(partial, "opt_state"))
    assert Checkpointer(workdir, read_only=True).steps() == [2, 4, 6]
    restored, _ = restore(config, workdir)
    assert restored[0] == 6
    assert not os.path.exists(partial), "a writable restart clears orbax's temporary directories"


def test_all_checkpoints_damaged_is_a_one_line_error_and_nothing_moves(base, tmp_path, capsys):
    config, _ = base
    workdir = copy_run(base, tmp_path)
    for step in (2, 4, 6):
        truncate_params_data(os.path.join(workdir, "checkpoints", str(step)))
    args = [f"--workdir={workdir}"] + [f"--{o}" for o in TINY + [f"config.data.dir={config.data.dir}"]]
    assert train.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"error: no readable checkpoint in {workdir}/checkpoints (tried steps [2, 4, 6]; step 6: ValueError: "
    ), err
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]
    assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))


def test_evaluation_loads_previous_checkpoint_without_touching_files(base, tmp_path, capsys):
    workdir = copy_run(base, tmp_path)
    garbage_meta(os.path.join(workdir, "checkpoints", "6"))
    loaded = load_for_inference(workdir)
    assert loaded.step == 4
    assert "checkpoint step 6 is unreadable" in capsys.readouterr().err
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]
    assert_trees_equal(jax.device_get(nnx.to_pure_dict(nnx.state(loaded.model))), params_at(workdir, 4))


def test_run_gives_the_sigterm_handler_back(base, tmp_path):
    """After training everything is saved: SIGTERM must end the process again
    (e.g. during the final evaluation) instead of being swallowed."""
    config, _ = base
    workdir = copy_run(base, tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    run_training(config, workdir)
    assert signal.getsignal(signal.SIGTERM) is before


def test_checkpoint_meta_records_the_config(base):
    _, workdir = base
    meta = Checkpointer(workdir, read_only=True).restore_meta(6)
    assert json.loads(json.dumps(meta["config"]))["model"]["d_model"] == 32
    assert meta["step"] == 6
