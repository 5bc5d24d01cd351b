"""Reward terms (finished-answer correctness, format penalty, acceleration and
latency terms, child-count conditioning, the group-relative token cost and
latency terms) and scoring engine arrays, where a cut-off root must not be
paid."""

import numpy as np
import pytest
from helpers.rl_toy import RL_CONFIG

from apr_jax import threads
from apr_jax.config.checks import ConfigError
from apr_jax.config.loading import load_run_config
from apr_jax.config.sections import RLConfig
from apr_jax.decode.engine import SampleResult, ThreadResult
from apr_jax.rl.grpo import group_advantages
from apr_jax.rl.reward import MAX_GROUP_WEIGHT, RewardConfig, rollout_reward, score_results, score_rollouts
from apr_jax.rl.train_rl import RLSettings
from apr_jax.tasks.countdown.problems import Problem
from apr_jax.tasks.countdown.task import CountdownTask

COUNTDOWN = CountdownTask({}, {"style": "terse"})


def reward(cfg, **kw):
    base = dict(
        verified=True, well_formed=True, total_tokens=100, sequential_tokens=40, children=3, asked_children=None
    )
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


def test_acceleration_term_is_log_scaled_and_differs_within_a_group():
    """APR rollouts accelerate 2-3x: ThreadWeaver's min(acceleration - 1, 0.2)
    paid all three below 1 + 0.5 * 0.2 = 1.1 alike; ln(acceleration) tells
    them apart."""
    cfg = RewardConfig(acceleration_weight=0.5)  # the default cap: 2.0 on ln(acceleration)
    paid = [reward(cfg, total_tokens=total, sequential_tokens=100) for total in (200, 250, 300)]
    assert paid == pytest.approx([1.3465736, 1.4581454, 1.5493061])  # 1 + 0.5 ln 2, ln 2.5, ln 3
    assert len(set(paid)) == 3
    assert reward(cfg, total_tokens=100, sequential_tokens=100) == 1.0  # one thread: acceleration 1
    assert reward(cfg, total_tokens=0, sequential_tokens=0) == 1.0
    assert reward(cfg, total_tokens=2100, sequential_tokens=100) == pytest.approx(1.0 + 0.5 * 2.0)  # capped
    assert np.isclose(
        reward(RewardConfig(acceleration_weight=0.5, acceleration_cap=0.5), total_tokens=300, sequential_tokens=100),
        1.25,
    )
    assert reward(cfg, verified=False) == 0.0
    assert reward(cfg, well_formed=False) == 0.0
    assert reward(RewardConfig(), total_tokens=100, sequential_tokens=40) == 1.0  # off by default
    # Scored per group: the acceleration term of the three correct rollouts differs, the wrong one's is 0.
    results = [[rollout(2, 200, 100), rollout(2, 250, 100), rollout(2, 300, 100), rollout(2, 300, 100)]]
    scored = score_results(results, [[True, True, True, False]], np.ones((1, 4), bool), np.ones((1, 4)), cfg)
    np.testing.assert_allclose(scored.terms["acceleration"], [[0.3465736, 0.4581454, 0.5493061, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(scored.rewards, [[1.3465736, 1.4581454, 1.5493061, 0.0]], rtol=1e-6)


def test_negative_terms_are_rejected():
    with pytest.raises(ValueError, match="format_penalty must be >= 0"):
        RewardConfig(format_penalty=-1.0)
    with pytest.raises(ValueError, match="acceleration_cap must be >= 0"):
        RewardConfig(acceleration_cap=-0.1)


class WordTokenizer:
    """Token id -> text, enough for ``to_thread_trees``."""

    WORDS = {1: "", 2: "", 10: "3 4 5 -> 17\n", 11: "ans 3*4=12 12+5=17", 12: "\nmore thinking", 13: "ans 3*4=12"}

    def decode(self, ids):
        return "".join(self.WORDS[i] for i in ids)


def one_thread_arrays(roots):
    """Engine arrays for one problem whose G samples are single roots given as
    (tokens after BOS, stop); the prompt is token 10, the rest model-written."""
    G, L = len(roots), 8
    shape = (1, G, 1)
    a = {
        "buf": np.zeros(shape + (L,), np.int32),
        "role": np.zeros(shape + (L,), np.int8),
        "logp": np.zeros(shape + (L,), np.float32),
    }
    for name in ("length", "depth", "stop", "written", "rounds"):
        a[name] = np.zeros(shape, np.int32)
    a["parent"] = np.full(shape, -1, np.int32)
    a["spawn_round"] = np.full(shape, -1, np.int32)
    a["next_free"] = np.ones((1, G), np.int32)
    a["dropped_children"] = np.zeros((1, G), np.int32)
    a["dropped_pool"] = np.zeros((1, G), np.int32)
    for k, (tokens, stop) in enumerate(roots):
        row = [1, 10] + tokens
        a["buf"][0, k, 0, : len(row)] = row
        a["role"][0, k, 0, 2 : len(row)] = 1
        a["length"][0, k, 0] = len(row)
        a["written"][0, k, 0] = len(tokens)
        a["stop"][0, k, 0] = threads.STOPS.index(stop)
    return a


def test_scoring_pays_only_a_root_that_stopped_on_eos_after_its_answer():
    problem = Problem(numbers=(3, 4, 5), target=17)
    arrays = one_thread_arrays(
        [
            ([11, 2], "eos"),  # answer, EOS: paid
            ([11, 12], "token_limit"),  # answer, then ran to the token limit
            ([13, 2], "eos"),  # a wrong answer that finished
            ([11, 12], "context_limit"),
        ]
    )
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


def rollout(children: int, total: int, sequential: int) -> SampleResult:
    """A rollout whose root spawned ``children`` once, writing ``total`` tokens
    with a critical path of ``sequential``."""
    per_child = (total - sequential) // max(children, 1) if children else 0
    written = [total - per_child * children] + [per_child] * children
    tree = [
        ThreadResult(
            tokens=[],
            roles=[],
            parent=-1 if i == 0 else 0,
            children=[],
            stop="eos",
            depth=int(i > 0),
            spawn_round=-1 if i == 0 else 0,
            rounds=int(i == 0 and children > 0),
            written=w,
        )
        for i, w in enumerate(written)
    ]
    return SampleResult(
        problem_index=0,
        sample_index=0,
        threads=tree,
        written_tokens=total,
        sequential_tokens=sequential,
        num_threads=1 + children,
        children_per_spawn=[children] if children else [],
        max_context_used=0,
        limits_hit={"token_limit": 0},
    )


def test_group_cost_ranks_the_narrow_correct_rollout_first_and_a_wide_one_above_wrong():
    """Two correct answers to one problem: one child and 60 tokens beats four
    children and 200 tokens (critical paths 60 and 80: the latency term, at a
    lower weight, favours the wide one less than the token cost the narrow
    one); both beat the wrong ones. Wrong rollouts enter no mean, so a
    problem that only a wide rollout solves pays it exactly 1."""
    cfg = RewardConfig(token_cost=0.2, latency_weight=0.1)
    easy = [rollout(1, 60, 60), rollout(4, 200, 80), rollout(1, 50, 50), rollout(4, 300, 90)]
    hard = [rollout(1, 60, 60), rollout(4, 200, 80), rollout(1, 50, 50), rollout(1, 40, 40)]
    verified = [[True, True, False, False], [False, True, False, False]]
    scored = score_results([easy, hard], verified, np.ones((2, 4), bool), np.array(verified, float), cfg)
    # Correct means: 130 total and 70 sequential tokens.
    narrow = 1 - 0.2 * (60 / 130 - 1) + 0.1 * (1 - 60 / 70)  # = 1 + 14/130 + 1/70
    wide = 1 - 0.2 * (200 / 130 - 1) + 0.1 * (1 - 80 / 70)  # = 1 - 14/130 - 1/70
    assert (narrow, wide) == pytest.approx((1.1219780, 0.8780220))
    np.testing.assert_allclose(scored.rewards, [[narrow, wide, 0, 0], [0, 1, 0, 0]], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scored.terms["token_cost"], [[14 / 130, -14 / 130, 0, 0], [0, 0, 0, 0]], atol=1e-9)
    np.testing.assert_allclose(scored.terms["latency"], [[1 / 70, -1 / 70, 0, 0], [0, 0, 0, 0]], atol=1e-9)
    for advantage in ("grpo", "drgrpo"):
        adv = np.asarray(group_advantages(scored.rewards, advantage))
        assert adv[0, 0] > adv[0, 1] > adv[0, 2] == adv[0, 3]
        assert adv[1, 1] > 0 > adv[1, 0]


def test_with_the_new_terms_off_rewards_are_todays():
    """Format, latency-share and condition terms on, acceleration and the group
    terms off: the rewards are today's per-rollout formula, by hand, and no
    term is logged."""
    cfg = RewardConfig(format_penalty=0.5, latency_bonus=0.2, condition_penalty=0.4)
    results = [
        [rollout(2, 100, 40), rollout(4, 200, 80), rollout(1, 50, 50)],
        [rollout(0, 0, 0), rollout(0, 70, 70), rollout(3, 90, 30)],
    ]
    verified = np.array([[True, True, False], [False, True, False]])
    well_formed = np.array([[True, True, False], [True, False, True]])
    scored = score_results(results, verified, well_formed, verified.astype(float), cfg, asked_children=[2, None])
    expected = [
        [
            1 + 0.2 * (1 - 40 / 100),  # asked 2, spawned 2
            1 + 0.2 * (1 - 80 / 200) - 0.4 * 1.0,  # spawned 4 of 2 asked: the full miss
            -0.5 - 0.4 * 0.5,
        ],  # wrong, cut off, 1 child of 2
        [0.0, -0.5, 0.0],
    ]  # no correct rollout; a verified answer cut off earns nothing
    np.testing.assert_allclose(scored.rewards, expected, rtol=1e-6)
    assert scored.rewards.dtype == np.float32
    for n, k in np.ndindex(2, 3):
        r = results[n][k]
        assert scored.rewards[n, k] == np.float32(
            rollout_reward(
                verified=bool(verified[n, k]),
                well_formed=bool(well_formed[n, k]),
                total_tokens=r.written_tokens,
                sequential_tokens=r.sequential_tokens,
                children=r.num_threads - 1,
                asked_children=[2, None][n],
                cfg=cfg,
                credit=float(verified[n, k]),
            )
        )
    assert scored.terms == {} and not any(k.startswith("reward/") for k in scored.summary())


def test_correctness_dominates_at_the_largest_allowed_weights():
    """Both group weights at their maximum (0.45) and a correct rollout as far
    above its group's correct means as the clip allows: it still earns
    0.1 x credit, more than any wrong rollout with the same format and
    condition terms; a weight above the maximum is refused, naming the key."""
    most = MAX_GROUP_WEIGHT
    cfg = RewardConfig(token_cost=most, latency_weight=most, acceleration_weight=1.0, latency_bonus=1.0)
    # One long single-threaded correct rollout among six short correct ones and a wrong one:
    # 1000 tokens against a mean of 1060 / 7, clipped to a relative excess of 1 on both terms.
    group = [rollout(0, 1000, 1000)] + [rollout(0, 10, 10)] * 6 + [rollout(4, 10, 2)]
    verified = np.array([[True] * 7 + [False]])
    for credit in (1.0, 0.5):
        scored = score_results([group], verified, np.ones((1, 8), bool), verified * credit, cfg)
        assert scored.rewards[0, 0] == pytest.approx(credit * (1 - 2 * most))
        assert scored.rewards[0, 0] > scored.rewards[0, 7] == 0.0
    # Random groups at the maxima: the worst correct rollout beats the best wrong one.
    rng = np.random.default_rng(0)
    for _ in range(200):
        G = int(rng.integers(2, 9))
        sequential = rng.integers(1, 400, G)
        total = sequential * rng.integers(1, 6, G)
        group = [rollout(int(rng.integers(0, 5)), int(t), int(s)) for t, s in zip(total, sequential)]
        verified = rng.random((1, G)) < 0.5
        credit = verified * rng.uniform(0.05, 1.0, (1, G))
        scored = score_results([group], verified, np.ones((1, G), bool), credit, cfg)
        if verified.any() and (~verified).any():
            assert scored.rewards[verified].min() > scored.rewards[~verified].max()
    with pytest.raises(ValueError, match=r"token_cost must be >= 0 and <= 0.45"):
        RewardConfig(token_cost=0.46)
    with pytest.raises(ValueError, match=r"latency_weight must be >= 0 and <= 0.45"):
        RewardConfig(latency_weight=-0.1)


def test_rl_config_keys_reach_the_reward_and_default_off():
    defaults = RLConfig()
    for name in (
        "format_penalty",
        "acceleration_weight",
        "acceleration_cap",
        "latency_bonus",
        "condition_penalty",
        "token_cost",
        "latency_weight",
    ):
        assert getattr(defaults, name) == getattr(RewardConfig(), name), name
    assert RewardConfig().token_cost == 0.0 and RewardConfig().latency_weight == 0.0
    settings = RLSettings.from_config(
        load_run_config(RL_CONFIG, ["config.rl.token_cost=0.2", "config.rl.latency_weight=0.1"])
    )
    assert (settings.reward.token_cost, settings.reward.latency_weight) == (0.2, 0.1)
    with pytest.raises(ConfigError, match=r"config.rl: latency_weight must be >= 0 and <= 0.45"):
        RLSettings.from_config(load_run_config(RL_CONFIG, ["config.rl.latency_weight=0.5"]))
