"""RunConfig: the loaded config as one frozen tree, built once, read like the file."""

import dataclasses
import glob
import os

import pytest
from helpers.paths import REPO_ROOT

from apr_jax.config.checks import ConfigError
from apr_jax.config.loading import load_config, load_run_config
from apr_jax.config.sections import RunConfig

ROOT = REPO_ROOT


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_shipped_config_builds_and_gives_back_what_was_written(path):
    written = load_config(path)
    config = RunConfig.from_config(written)
    assert config.to_dict() == written.to_dict()
    assert (config.name, config.mode, config.train.lr, config.eval.max_children) == (
        written.name,
        written.mode,
        written.train.lr,
        written.eval.max_children,
    )
    assert config.task.as_dict() == written.task.to_dict()
    assert (config.rl is None) == ("rl" not in written)
    assert config.model.vocab_size == written.data.vocab_size


def test_sections_are_frozen_and_typed():
    config = load_run_config(None, ["config.train.lr=1e-3", "config.eval.max_children=3"])
    assert config.train.lr == 1e-3 and config.eval.max_children == 3
    for section, field in (
        (config, "seed"),
        (config.train, "lr"),
        (config.model, "d_model"),
        (config.data, "seq_len"),
        (config.task, "name"),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, field, 1)
    assert config.task.num_train == 8000  # task settings read as the config file writes them
    with pytest.raises(AttributeError, match="config.task has no 'nmu_train'"):
        _ = config.task.nmu_train
    assert config.model_for(120).vocab_size == 120 and config.model.vocab_size == 96
    shorter = config.replace(train=dataclasses.replace(config.train, steps=5))
    assert shorter.train.steps == 5 and config.train.steps == 800
    assert shorter.to_dict() == config.to_dict()  # still the config as written


def test_a_config_saved_before_later_keys_still_builds():
    saved = load_config(None).to_dict()
    for section, key in (
        ("task", "name"),
        ("data", "tokenizer"),
        ("eval", "lanes"),
        ("model", "qk_norm"),
        ("train", "on_nan"),
    ):
        del saved[section][key]
    config = RunConfig.from_config(saved)
    assert (config.task.name, config.data.tokenizer, config.eval.lanes, config.model.qk_norm, config.train.on_nan) == (
        "countdown",
        "",
        0,
        False,
        "stop",
    )
    assert config.to_dict() == saved


def test_unknown_keys_are_named():
    saved = load_config(None).to_dict()
    saved["eval"]["max_childs"] = 3
    with pytest.raises(ConfigError, match=r"unknown config key 'config.eval.max_childs'"):
        RunConfig.from_config(saved)
    saved = load_config(None).to_dict()
    saved["epochs"] = 3
    with pytest.raises(ConfigError, match=r"unknown config key 'config.epochs'"):
        RunConfig.from_config(saved)
    saved = load_config(None).to_dict()
    saved["model"]["n_layers"] = 3
    with pytest.raises(ConfigError, match=r"unknown config key 'config.model.n_layers'"):
        RunConfig.from_config(saved)


def test_bad_section_values_fail_at_the_edge():
    saved = load_config(None).to_dict()
    saved["trace"]["max_depth"] = 0
    with pytest.raises(ConfigError, match=r"^config.trace.max_depth=0 must be a positive integer$"):
        RunConfig.from_config(saved)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["config.data.context=shared"], r"config.data.context='shared' is not one of"),
        (["config.data.context=inherit", "config.data.join=merge"], r"config.data.join='merge' is not one of"),
        (
            ["config.data.context=inherit", "config.model.attention=cudnn"],
            r"model.attention='cudnn' cannot apply",
        ),
    ],
)
def test_context_family_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, overrides)


def test_inherit_family_rl_rows_must_split_into_microbatches():
    """GRPO in the inherit family trains one tree-sequence row per rollout,
    so the rollouts, not the thread rows, must split into microbatches."""
    from apr_jax.rl.train_rl import RLSettings

    path = os.path.join(REPO_ROOT, "configs", "countdown_inherit_rl.py")
    config = load_run_config(path, [])
    assert (config.data.context, config.mode) == ("inherit", "rl")
    assert RLSettings.from_config(config).engine_config(config).context == "inherit"
    with pytest.raises(ConfigError, match=r"256 rollouts, one tree-sequence row each .*grad_accum=48"):
        RLSettings.from_config(load_run_config(path, ["config.train.grad_accum=48"]))


def test_tagged_trace_files_need_the_inherit_family():
    path = os.path.join(REPO_ROOT, "configs", "arithmetic_multiverse.py")
    assert load_run_config(path, []).data.context == "inherit"
    with pytest.raises(ConfigError, match=r"task 'jsonl_traces' with these settings writes inherit-family trees"):
        load_run_config(path, ["config.data.context=message"])
