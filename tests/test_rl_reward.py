"""Reward terms (finished-answer correctness, format penalty, acceleration and
latency terms, child-count conditioning) and scoring engine arrays, where a
cut-off root must not be paid."""

import numpy as np
import pytest

from apr_jax import threads
from apr_jax.countdown.problems import Problem
from apr_jax.rl.reward import RewardConfig, rollout_reward, score_rollouts
from apr_jax.tasks.countdown import CountdownTask

COUNTDOWN = CountdownTask({}, {"style": "terse"})


def reward(cfg, **kw):
    base = dict(verified=True, well_formed=True, total_tokens=100, sequential_tokens=40,
                children=3, asked_children=None)
    return rollout_reward(**{**base, **kw}, cfg=cfg)


def test_plain_correctness_reward_needs_a_finished_root():
    cfg = RewardConfig()
    assert reward(cfg) == 1.0 and reward(cfg, verified=False) == 0.0
    assert reward(cfg, verified=False, well_formed=False) == 0.0
    # A correct answer line whose root then ran into a limit: nothing by default.
    assert reward(cfg, well_formed=False) == 0.0
    assert reward(RewardConfig(require_eos=False), well_formed=False) == 1.0


def test_format_latency_and_condition_terms():
    cfg = RewardConfig(format_penalty=0.5, latency_bonus=0.2, condition_penalty=0.4)
    assert reward(cfg, verified=False, well_formed=False) == -0.5
    assert reward(cfg, well_formed=False) == -0.5  # cut off: no correctness, no latency bonus
    assert np.isclose(reward(cfg), 1.0 + 0.2 * (1 - 40 / 100))
    assert reward(cfg, verified=False) == 0.0  # the latency bonus is only for correct rollouts
    assert np.isclose(reward(cfg, sequential_tokens=100), 1.0)  # one thread: no parallelism bonus
    assert np.isclose(reward(cfg, asked_children=3), 1.0 + 0.12)
    assert np.isclose(reward(cfg, asked_children=4), 1.12 - 0.4 * 0.25)
    assert np.isclose(reward(cfg, children=0, asked_children=2), 1.12 - 0.4)
    assert np.isclose(reward(cfg, children=10, asked_children=2), 1.12 - 0.4)  # capped at the full penalty


def test_acceleration_term_is_capped_and_only_for_correct_answers():
    cfg = RewardConfig(acceleration_weight=0.5, acceleration_cap=0.2)
    assert np.isclose(reward(cfg, total_tokens=100, sequential_tokens=40), 1.0 + 0.5 * 0.2)  # 2.5x, capped
    assert np.isclose(reward(cfg, total_tokens=110, sequential_tokens=100), 1.0 + 0.5 * 0.1)
    assert reward(cfg, total_tokens=100, sequential_tokens=100) == 1.0  # one thread: acceleration 1
    assert reward(cfg, total_tokens=0, sequential_tokens=0) == 1.0
    assert reward(cfg, verified=False) == 0.0
    assert reward(cfg, well_formed=False) == 0.0
    assert reward(RewardConfig(), total_tokens=100, sequential_tokens=40) == 1.0  # off by default


def test_negative_terms_are_rejected():
    with pytest.raises(ValueError, match="format_penalty must be >= 0"):
        RewardConfig(format_penalty=-1.0)
    with pytest.raises(ValueError, match="acceleration_cap must be >= 0"):
        RewardConfig(acceleration_cap=-0.1)


class WordTokenizer:
    """Token id -> text, enough for ``to_thread_trees``."""

    WORDS = {1: "", 2: "", 10: "3 4 5 -> 17\n", 11: "ans 3*4=12 12+5=17", 12: "\nmore thinking",
             13: "ans 3*4=12"}

    def decode(self, ids):
        return "".join(self.WORDS[i] for i in ids)


def one_thread_arrays(roots):
    """Engine arrays for one problem whose G samples are single roots given as
    (tokens after BOS, stop); the prompt is token 10, the rest model-written."""
    G, L = len(roots), 8
    shape = (1, G, 1)
    a = {"buf": np.zeros(shape + (L,), np.int32), "role": np.zeros(shape + (L,), np.int8),
         "logp": np.zeros(shape + (L,), np.float32)}
    for name in ("length", "depth", "stop", "written", "rounds"):
        a[name] = np.zeros(shape, np.int32)
    a["parent"] = np.full(shape, -1, np.int32)
    a["spawn_round"] = np.full(shape, -1, np.int32)
    a["next_free"] = np.ones((1, G), np.int32)
    a["dropped_children"] = np.zeros((1, G), np.int32)
    a["dropped_pool"] = np.zeros((1, G), np.int32)
    for k, (tokens, stop) in enumerate(roots):
        row = [1, 10] + tokens
        a["buf"][0, k, 0, :len(row)] = row
        a["role"][0, k, 0, 2:len(row)] = 1
        a["length"][0, k, 0] = len(row)
        a["written"][0, k, 0] = len(tokens)
        a["stop"][0, k, 0] = threads.STOPS.index(stop)
    return a


def test_scoring_pays_only_a_root_that_stopped_on_eos_after_its_answer():
    problem = Problem(numbers=(3, 4, 5), target=17)
    arrays = one_thread_arrays([([11, 2], "eos"),  # answer, EOS: paid
                                ([11, 12], "token_limit"),  # answer, then ran to the token limit
                                ([13, 2], "eos"),  # a wrong answer that finished
                                ([11, 12], "context_limit")])
    scored = score_rollouts(arrays, WordTokenizer(), [problem], RewardConfig(), task=COUNTDOWN)
    np.testing.assert_array_equal(scored.verified, [[True, True, False, True]])
    np.testing.assert_array_equal(scored.well_formed, [[True, False, True, False]])
    np.testing.assert_array_equal(scored.correct, [[True, False, False, False]])
    np.testing.assert_array_equal(scored.rewards, [[1, 0, 0, 0]])
    summary = scored.summary()
    assert summary["accuracy"] == 0.25 and summary["unfinished_correct"] == 0.5
    assert summary["limits/token_limit"] == 0.25 and summary["limits/context_limit"] == 0.25
    lenient = score_rollouts(arrays, WordTokenizer(), [problem], RewardConfig(require_eos=False), task=COUNTDOWN)
    np.testing.assert_array_equal(lenient.rewards, [[1, 1, 0, 1]])
