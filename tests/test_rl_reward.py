"""Reward terms: correctness, format penalty, latency bonus, child-count conditioning."""

import numpy as np
import pytest

from apr_jax.rl.reward import RewardConfig, Scored, rollout_reward


def reward(cfg, **kw):
    base = dict(correct=True, well_formed=True, total_tokens=100, sequential_tokens=40,
                children=3, asked_children=None)
    return rollout_reward(**{**base, **kw}, cfg=cfg)


def test_plain_correctness_reward():
    cfg = RewardConfig()
    assert reward(cfg) == 1.0 and reward(cfg, correct=False) == 0.0
    assert reward(cfg, correct=False, well_formed=False) == 0.0


def test_format_latency_and_condition_terms():
    cfg = RewardConfig(format_penalty=0.5, latency_bonus=0.2, condition_penalty=0.4)
    assert reward(cfg, correct=False, well_formed=False) == -0.5
    assert np.isclose(reward(cfg), 1.0 + 0.2 * (1 - 40 / 100))
    assert reward(cfg, correct=False) == 0.0  # the latency bonus is only for correct rollouts
    assert np.isclose(reward(cfg, sequential_tokens=100), 1.0)  # one thread: no parallelism bonus
    assert np.isclose(reward(cfg, asked_children=3), 1.0 + 0.12)
    assert np.isclose(reward(cfg, asked_children=4), 1.12 - 0.4 * 0.25)
    assert np.isclose(reward(cfg, children=0, asked_children=2), 1.12 - 0.4)
    assert np.isclose(reward(cfg, children=10, asked_children=2), 1.12 - 0.4)  # capped at the full penalty


def test_negative_terms_are_rejected():
    with pytest.raises(ValueError, match="format_penalty must be >= 0"):
        RewardConfig(format_penalty=-1.0)


def test_summary_statistics():
    s = Scored(rewards=np.array([[1.0, 0.0], [1.0, 1.0]]), correct=np.array([[1, 0], [1, 1]], bool),
               well_formed=np.ones((2, 2), bool), total_tokens=np.array([[10, 20], [30, 40]]),
               sequential_tokens=np.array([[10, 10], [10, 10]]), num_threads=np.array([[1, 3], [1, 1]]),
               children_per_spawn=[2, 4], trees=[])
    out = s.summary()
    assert out["reward"] == 0.75 and out["accuracy"] == 0.75 and out["total_tokens"] == 25
    assert out["children_per_spawn"] == 3 and out["spawned"] == 0.25 and out["groups_with_signal"] == 0.5
