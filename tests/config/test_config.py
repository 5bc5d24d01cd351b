import glob
import os
import sys

import pytest
from helpers.paths import REPO_ROOT

from apr_jax.cli import float_flag, int_flag, parse_command_line
from apr_jax.config import loading as config_lib
from apr_jax.config.checks import ConfigError
from apr_jax.config.identity import LATER_KEYS, identity_diff
from apr_jax.config.loading import load_config

ROOT = REPO_ROOT


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_loads_and_validates(path):
    config = load_config(path)
    assert config.name == os.path.basename(path)[:-3]


def test_overrides_are_typed():
    c = load_config(
        None,
        ["config.train.lr=1e-3", "config.train.steps=7", "config.model.tie_embeddings=false", "config.trace.kind=sosp"],
    )
    assert c.train.lr == 1e-3 and isinstance(c.train.lr, float)
    assert c.train.steps == 7 and isinstance(c.train.steps, int)
    assert c.model.tie_embeddings is False
    assert c.trace.kind == "sosp"


@pytest.mark.parametrize(
    "override, message",
    [
        ("config.train.lrr=1", "unknown config key 'config.train.lrr'; did you mean config.train.lr"),
        ("config.trainn.lr=1", "unknown config key 'config.trainn.lr'"),
        ("config.train.lr=abc", "config.train.lr: expected a number, got 'abc'"),
        ("config.train.steps=1.5", "config.train.steps: expected an integer, got '1.5'"),
        ("config.model.remat=maybe", "config.model.remat='maybe' is not one of none, dots, full"),
        ("config.trace.kind=tree", "config.trace.kind='tree' is not one of apr, sosp"),
        ("config.train.steps=0", "config.train.steps=0 must be a positive integer"),
        ("config.model.num_kv_heads=3", "config.model.num_heads=4 is not divisible by config.model.num_kv_heads=3"),
        ("config.data.seq_len=4096", "config.data.seq_len=4096 exceeds config.model.max_len"),
        ("config.train=3", "config.train is a section"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_pretrained_model_keys_default_to_todays_model():
    c = load_config(None)
    assert (c.model.head_dim, c.model.qkv_bias, c.model.qk_norm, c.model.norm_eps) == (0, False, False, 1e-6)
    assert c.train.init_from == "" and c.data.tokenizer == ""
    # An explicit head_dim frees d_model from being a multiple of num_heads (Qwen3 layouts).
    c = load_config(None, ["config.model.d_model=100", "config.model.num_heads=8", "config.model.head_dim=16"])
    assert c.model.head_dim == 16
    with pytest.raises(ConfigError, match="config.model.d_model=100 is not divisible by config.model.num_heads=8"):
        load_config(None, ["config.model.d_model=100", "config.model.num_heads=8"])


def test_runs_saved_before_the_pretrained_keys_still_match():
    current = load_config(None)
    saved = current.to_dict()
    for key in LATER_KEYS:
        section, name = key.split(".")
        del saved[section][name]
    assert identity_diff(saved, current) == []
    changed = load_config(None, ["config.model.qk_norm=true"])
    assert identity_diff(saved, changed) == ["config.model.qk_norm (saved None, now True)"]


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found: nope.py"):
        load_config("nope.py")


def test_command_line_forms():
    flags, overrides = parse_command_line(
        ["--workdir=w", "--config", "c.py", "--config.train.lr=2", "--config.train.steps", "3"]
    )
    assert flags == {"workdir": "w", "config": "c.py"}
    assert overrides == ["config.train.lr=2", "config.train.steps=3"]
    with pytest.raises(ConfigError, match="unknown flag --workdri; did you mean --workdir"):
        parse_command_line(["--workdri=x"])
    with pytest.raises(ConfigError, match="flag --workdir needs a value"):
        parse_command_line(["--workdir"])
    flags, _ = parse_command_line(["--print_config", "--workdir", "w"], switches=("print_config",))
    assert flags == {"print_config": "true", "workdir": "w"}
    with pytest.raises(ConfigError, match="flag --print_config takes no value"):
        parse_command_line(["--print_config=1"], switches=("print_config",))
    with pytest.raises(ConfigError, match="unknown flag --print_confg; did you mean --print_config"):
        parse_command_line(["--print_confg"], switches=("print_config",))


def test_identity_diff_names_changed_fields():
    a = load_config(None)
    b = load_config(None, ["config.model.d_model=256", "config.train.steps=5"])
    diffs = identity_diff(a.to_dict(), b)
    assert diffs == ["config.model.d_model (saved 128, now 256)"]
    c = load_config(None, ["config.model.d_model=256", "config.model.remat=full"])
    assert identity_diff(a.to_dict(), c, ignore=["model.remat"]) == diffs


def test_configs_build_on_each_other_without_touching_sys_path():
    path, modules = list(sys.path), set(sys.modules)
    config = load_config(os.path.join(ROOT, "configs", "countdown4_apr_228m_rl.py"))
    assert sys.path == path and not {"default", "default_rl"} & (set(sys.modules) - modules)
    assert config.mode == "rl" and config.model.num_layers == 18 and "init_from" in config.rl


@pytest.mark.parametrize(
    "flags, call, message",
    [
        ({"num": "abc"}, lambda f: int_flag(f, "num", 1), "--num must be an integer, got 'abc'"),
        ({"num": "0"}, lambda f: int_flag(f, "num", 1, zero_ok=False), "--num must be positive, got 0"),
        ({"seed": "-1"}, lambda f: int_flag(f, "seed", 0), "--seed must be positive, got -1"),
        ({"top_p": "x"}, lambda f: float_flag(f, "top_p"), "--top_p must be a number, got 'x'"),
    ],
)
def test_typed_flags_are_one_line_errors(flags, call, message):
    with pytest.raises(ConfigError) as e:
        call(flags)
    assert str(e.value) == message


def test_typed_flags_read_values_and_defaults():
    assert int_flag({"num": "7"}, "num", 1) == 7 and int_flag({}, "num", 3) == 3
    assert int_flag({"show": "0"}, "show", 2) == 0
    assert float_flag({"top_p": "0.5"}, "top_p") == 0.5 and float_flag({}, "top_p") is None


def test_h200_schedule_warms_up_and_decays_inside_its_time_limit():
    """The one-GPU config's steps fit its time limit at its stated step time,
    and its learning rate reaches the end of the cosine at the last step."""
    from apr_jax.training.optim import learning_rate_schedule

    path = os.path.join(ROOT, "configs", "countdown4_apr_h200.py")
    module = config_lib.config_module(path)
    train = load_config(path).train
    seconds = module.STARTUP_SECONDS + train.steps * module.STEP_SECONDS
    assert 0.95 * 60 * train.time_limit_minutes <= seconds <= 60 * train.time_limit_minutes
    assert 0 < train.warmup_steps <= train.steps // 10
    schedule = learning_rate_schedule(train)
    assert float(schedule(train.warmup_steps)) == pytest.approx(train.lr)
    assert float(schedule(train.steps)) == pytest.approx(train.lr * train.min_lr_ratio)


# What the laptop demo sizes for a 2-core CPU: an accelerator config that keeps
# one of these values inherited it.
LAPTOP_ONLY = ("eval.num_problems", "eval.batch_problems", "task.num_validation", "task.num_test")
CONFIG_FILES = sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_accelerator_configs_state_their_own_limits(name):
    """Every config says what it is sized for; one meant for an accelerator
    keeps none of the laptop demo's sizes, and a TPU pod run has no time
    limit (a pod run stopped after a few minutes exits 0 and looks finished)."""
    path = os.path.join(ROOT, "configs", name)
    runs_on = getattr(config_lib.config_module(path), "RUNS_ON", None)
    assert runs_on in ("cpu", "gpu", "tpu"), f"{name}: RUNS_ON must be cpu, gpu or tpu"
    if runs_on == "cpu":
        return
    config, demo = load_config(path), load_config(None)
    inherited = [key for key in LAPTOP_ONLY if config_lib.get(config, key) == config_lib.get(demo, key)]
    assert not inherited, f"{name} ({runs_on}) keeps the laptop demo's {', '.join(inherited)}"
    if runs_on == "tpu":
        assert config.train.time_limit_minutes == 0, f"{name}: a pod run must not stop on a time limit"
