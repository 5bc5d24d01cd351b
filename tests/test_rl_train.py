"""GRPO end to end on a toy Countdown (3 small numbers, 2 children) from a
briefly SFT-trained tiny model: the reward rises, resume is exact, and a bad
SFT checkpoint is one clear line."""

import json

import jax
import numpy as np
import pytest

from apr_jax import train
from apr_jax.config import ConfigError, load_config
from apr_jax.rl.train_rl import RLSettings, run_rl
from rl_toy import RL_CONFIG, final_params, rl_overrides


def test_grpo_raises_mean_reward(sft, tmp_path):
    config = load_config(RL_CONFIG, rl_overrides(sft, "config.train.steps=30"))
    run_rl(config, str(tmp_path / "rl"))
    rows = [json.loads(line) for line in open(tmp_path / "rl" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 31))
    for key in ("reward", "accuracy", "children_per_spawn", "sequential_tokens", "total_tokens", "kl",
                "clip_fraction", "padded_slots", "rollout_s", "update_s"):
        assert key in rows[0], key
    rewards = [r["reward"] for r in rows]
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    assert last > first + 0.3, rewards


def test_resume_mid_rl_gives_the_same_parameters(sft, tmp_path):
    config = load_config(RL_CONFIG, rl_overrides(sft, "config.train.steps=4", "config.rl.kl_coef=0.01",
                                                 "config.train.checkpoint_every=100"))
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    run_rl(config, straight)
    assert run_rl(config, resumed, stop_at=2)["step"] == 2
    assert run_rl(config, resumed)["step"] == 4
    (step_a, params_a), (step_b, params_b) = final_params(straight), final_params(resumed)
    assert step_a == step_b == 4
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


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


def test_rl_settings_errors_name_the_key():
    config = load_config(RL_CONFIG, ["config.rl.samples_per_prompt=1"])
    with pytest.raises(ConfigError, match="config.rl.samples_per_prompt=1 must be >= 2"):
        RLSettings.from_config(config)
    config = load_config(RL_CONFIG, ["config.rl.temperature=0"])
    with pytest.raises(ConfigError, match="config.rl: RL needs a sampling temperature > 0"):
        RLSettings.from_config(config)
    config = load_config(RL_CONFIG, ["config.rl.prompt_pool=-1"])
    with pytest.raises(ConfigError, match="config.rl.prompt_pool=-1 must be >= 0"):
        RLSettings.from_config(config)
    config = load_config(RL_CONFIG, ["config.rl.prompts_per_step=8", "config.rl.minibatches=3"])
    with pytest.raises(ConfigError, match="prompts_per_step=8 is not divisible by config.rl.minibatches=3"):
        RLSettings.from_config(config)
