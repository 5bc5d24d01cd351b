"""GRPO end to end on a toy Countdown (3 small numbers, 2 children) from a
briefly SFT-trained tiny model: the reward rises, the diagnostics and the
periodic held-out evaluation are logged, and a bad SFT
checkpoint or an inconsistent RL config is one clear line."""

import numpy as np
import pytest
from helpers.rl_toy import RL_CONFIG, rl_overrides

from apr_jax import train
from apr_jax.config.checks import ConfigError
from apr_jax.config.loading import load_run_config
from apr_jax.evaluation.loading import load_for_inference
from apr_jax.rl.train_rl import RLSettings, load_sft, run_rl
from apr_jax.runtime.metrics_log import read_metrics


@pytest.mark.slow
def test_grpo_raises_mean_reward(sft, tmp_path):
    config = load_run_config(
        RL_CONFIG,
        rl_overrides(
            sft,
            "config.train.steps=30",
            "config.rl.eval_every=15",
            "config.rl.eval_problems=8",
            "config.eval.batch_problems=8",
        ),
    )
    run_rl(config, str(tmp_path / "rl"))
    rows = read_metrics(str(tmp_path / "rl" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(0, 31))
    # Held-out greedy accuracy of the SFT model at step 0, then every 15 steps.
    evaluated = [r for r in rows if "eval_accuracy" in r]
    assert [r["step"] for r in evaluated] == [0, 15, 30]
    assert all(0 <= r["eval_accuracy"] <= 1 and r["eval_mean_total_tokens"] > 0 for r in evaluated)
    rows = rows[1:]
    for key in (
        "reward",
        "accuracy",
        "unfinished_correct",
        "spawned",
        "children_per_spawn",
        "spawn_rounds",
        "depth",
        "max_depth",
        "sequential_tokens",
        "total_tokens",
        "acceleration",
        "limits/token_limit",
        "limits/dropped_pool",
        "limits/dropped_children",
        "kl",
        "clip_fraction",
        "ratio_mean",
        "ratio_max",
        "padded_slots",
        "rollout_s",
        "update_s",
    ):
        assert key in rows[0], key
    assert any("accuracy_spawned" in r or "accuracy_not_spawned" in r for r in rows)
    assert all(r["limits/dropped_pool"] == 0 for r in rows)
    assert all(r["ratio_max"] >= r["ratio_mean"] > 0 for r in rows if "ratio_max" in r)  # steps that updated
    rewards = [r["reward"] for r in rows]
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert last > first + 0.3, rewards


def test_bad_sft_checkpoint_is_one_line(sft, tmp_path, capsys):
    base = [f"--{o}" for o in rl_overrides(sft)] + [f"--config={RL_CONFIG}"]
    cases = [
        ([f"--config.rl.init_from={tmp_path}/nope"], f"checkpoint or workdir not found: {tmp_path}/nope"),
        (["--config.model.d_model=32"], "does not match the config: config.model.d_model (saved 64, now 32)"),
        ([f"--config.rl.init_from={sft['data']}"], "holds no checkpoints"),
    ]
    for i, (extra, message) in enumerate(cases):
        code = train.main(base + extra + [f"--workdir={tmp_path}/w{i}"])
        err = capsys.readouterr().err.strip()
        assert code != 0 and message in err, err
        assert len(err.splitlines()) == 1, err


def test_sft_checkpoint_loads_under_another_compute_dtype_kernel_and_remat(sft, tmp_path):
    """How the policy computes may differ from how SFT trained it; what it is may not."""
    config = load_run_config(
        RL_CONFIG,
        rl_overrides(
            sft, "config.model.compute_dtype=bfloat16", "config.model.remat=full", "config.model.attention=xla"
        ),
    )
    settings = RLSettings.from_config(config)
    tokenizer = load_for_inference(settings.init_from).tokenizer
    loaded = load_sft(config, settings, str(tmp_path / "rl"), tokenizer)
    assert loaded.config.model.compute_dtype == "float32" and loaded.config.model.remat == "none"


def test_rl_settings_errors_name_the_key():
    # The rl section's own fields fail when the config is loaded.
    with pytest.raises(ConfigError, match="config.rl.samples_per_prompt=1 must be >= 2"):
        load_run_config(RL_CONFIG, ["config.rl.samples_per_prompt=1"])
    with pytest.raises(ConfigError, match="config.rl.prompt_pool=-1 must be >= 0"):
        load_run_config(RL_CONFIG, ["config.rl.prompt_pool=-1"])
    with pytest.raises(ConfigError, match="config.rl.eval_every=5 needs config.rl.eval_problems > 0"):
        load_run_config(RL_CONFIG, ["config.rl.eval_every=5", "config.rl.eval_problems=0"])
    # The update's and the reward's fields, and what reads other sections, when RL starts.
    config = load_run_config(RL_CONFIG, ["config.rl.temperature=0"])
    with pytest.raises(ConfigError, match="config.rl: RL needs a sampling temperature > 0"):
        RLSettings.from_config(config)
    config = load_run_config(RL_CONFIG, ["config.rl.prompts_per_step=8", "config.rl.minibatches=3"])
    with pytest.raises(ConfigError, match="prompts_per_step=8 is not divisible by config.rl.minibatches=3"):
        RLSettings.from_config(config)
    config = load_run_config(RL_CONFIG, ["config.rl.condition_children=[2, 6]"])
    with pytest.raises(
        ConfigError,
        match=r"condition_children=\[2, 6\] asks for more children than "
        "config.eval.max_children=4",
    ):
        RLSettings.from_config(config)
    config = load_run_config(RL_CONFIG, ["config.rl.advantage=ppo"])
    with pytest.raises(ConfigError, match="config.rl: advantage 'ppo' is not one of grpo, drgrpo"):
        RLSettings.from_config(config)


def test_thread_slots_must_hold_every_spawn_round():
    """Fewer slots than root + rounds x children would drop a later spawn."""
    for path in (RL_CONFIG, RL_CONFIG.replace("default_rl", "countdown4_apr_228m_rl")):
        RLSettings.from_config(load_run_config(path))  # the shipped RL configs are consistent
    config = load_run_config(RL_CONFIG, ["config.rl.max_threads=5"])
    with pytest.raises(
        ConfigError,
        match=r"config.rl.max_threads=5 gives 5 thread slots per rollout, but "
        r"config.eval.max_rounds=2 spawns of config.eval.max_children=4 up "
        r"to config.eval.max_depth=1 need 9 \(root included\)",
    ):
        RLSettings.from_config(config)
    assert RLSettings.from_config(load_run_config(RL_CONFIG, ["config.rl.max_threads=9"])).max_threads == 9
    config = load_run_config(RL_CONFIG, ["config.eval.max_depth=2", "config.eval.max_children=8"])
    with pytest.raises(ConfigError, match="config.rl.max_threads=0 gives 64 thread slots .* need 273"):
        RLSettings.from_config(config)
