"""Per-step rollout diagnostics on hand-made thread trees, the spread of the
reward's speed and cost terms within groups, and the collapse and
reward-hacking warnings on scripted metric rows."""

import numpy as np
import pytest

from apr_jax.decode.engine import SampleResult, ThreadResult
from apr_jax.rl.diagnostics import TrendWatch, rollout_diagnostics, term_spread
from apr_jax.rl.reward import RewardConfig, score_results


def thread(parent, depth, written, rounds=0, spawn_round=-1):
    return ThreadResult(
        tokens=[],
        roles=[],
        parent=parent,
        children=[],
        stop="eos",
        depth=depth,
        spawn_round=spawn_round,
        rounds=rounds,
        written=written,
    )


def sample(threads, sequential, children_per_spawn, **limits):
    hits = {"token_limit": 0, "dropped_children": 0, "dropped_pool": 0}
    hits.update(limits)
    return SampleResult(
        problem_index=0,
        sample_index=0,
        threads=threads,
        written_tokens=sum(t.written for t in threads),
        sequential_tokens=sequential,
        num_threads=len(threads),
        children_per_spawn=children_per_spawn,
        max_context_used=0,
        limits_hit=hits,
    )


def rollouts():
    single = sample([thread(-1, 0, 30)], 30, [])
    # Root writes 20, spawns 2 children (10 and 30 tokens), then 1 child (12 tokens):
    # critical path 20 + 30 + 12 = 62 of 72 tokens.
    wide = sample(
        [
            thread(-1, 0, 20, rounds=2),
            thread(0, 1, 10, spawn_round=0),
            thread(0, 1, 30, spawn_round=0),
            thread(0, 1, 12, spawn_round=1),
        ],
        62,
        [2, 1],
        token_limit=1,
    )
    # Root (10) spawns one child (20) that spawns one grandchild (15); a second message was dropped.
    deep = sample(
        [thread(-1, 0, 10, rounds=1), thread(0, 1, 20, rounds=1, spawn_round=0), thread(1, 2, 15, spawn_round=0)],
        45,
        [1, 1],
        dropped_children=1,
    )
    return [single, wide, deep, single]


def test_rollout_diagnostics_by_hand():
    out = rollout_diagnostics(rollouts(), [True, False, True, False])
    assert out["spawned"] == 0.5
    assert out["children_per_spawn"] == pytest.approx((2 + 1 + 1 + 1) / 4)
    assert out["spawn_rounds"] == pytest.approx((0 + 2 + 2 + 0) / 4)
    assert out["threads"] == pytest.approx((1 + 4 + 3 + 1) / 4)
    assert out["depth"] == pytest.approx((0 + 1 + 2 + 0) / 4) and out["max_depth"] == 2
    assert out["total_tokens"] == pytest.approx((30 + 72 + 45 + 30) / 4)
    assert out["sequential_tokens"] == pytest.approx((30 + 62 + 45 + 30) / 4)
    assert out["acceleration"] == pytest.approx((1 + 72 / 62 + 1 + 1) / 4)
    assert out["accuracy_spawned"] == 0.5 and out["accuracy_not_spawned"] == 0.5
    assert out["limits/token_limit"] == 0.25 and out["limits/dropped_children"] == 0.25
    assert out["limits/dropped_pool"] == 0.0


def test_split_accuracy_only_for_kinds_present():
    out = rollout_diagnostics(rollouts()[:1], [True])
    assert out["accuracy_not_spawned"] == 1.0 and "accuracy_spawned" not in out
    assert out["children_per_spawn"] == 0.0 and out["acceleration"] == 1.0
    with pytest.raises(ValueError, match="2 rollouts for 1 correctness flags"):
        rollout_diagnostics(rollouts()[:2], [True])


def parallel(total, sequential):
    """A rollout of a root and one round of children, ``total`` tokens in all
    over a critical path of ``sequential``."""
    return sample(
        [thread(-1, 0, sequential // 2, rounds=1), thread(0, 1, total - sequential // 2, spawn_round=0)],
        sequential,
        [1],
    )


def test_acceleration_term_spread_is_logged_by_hand():
    """Three groups of 4 at acceleration_weight 0.5: correct rollouts at 2x,
    2.5x, 3x (and a wrong one); two correct at 2x (spread 0; two wrong);
    one correct (no spread: left out). Logged: the mean of the two groups'
    standard deviations of 0.5 ln(acceleration) over their correct rollouts."""
    results = [
        [parallel(200, 100), parallel(250, 100), parallel(300, 100), parallel(300, 100)],
        [parallel(200, 100), parallel(200, 100), parallel(300, 100), parallel(250, 100)],
        [parallel(300, 100), parallel(200, 100), parallel(200, 100), parallel(200, 100)],
    ]
    correct = np.array([[True, True, True, False], [True, True, False, False], [True, False, False, False]])
    scored = score_results(
        results, correct, np.ones((3, 4), bool), correct.astype(float), RewardConfig(acceleration_weight=0.5)
    )
    # 0.5 ln 2, 0.5 ln 2.5, 0.5 ln 3 = 0.346574, 0.458145, 0.549306; mean 0.451342;
    # std sqrt((0.104768^2 + 0.006804^2 + 0.097964^2) / 3) = 0.082905; (0.082905 + 0) / 2:
    summary = scored.summary()
    assert summary["reward/acceleration_spread"] == pytest.approx(0.0414525, abs=1e-6)
    # The mean term over all 12 rollouts: (0.346574 + 0.458145 + 0.549306 + 2 x 0.346574 + 0.549306) / 12
    # = 2.596478 / 12
    assert summary["reward/acceleration"] == pytest.approx(0.2163732, abs=1e-6)
    assert term_spread([[0.1, 0.1, 0.4, 0.9]], [[True, True, True, False]]) == pytest.approx(np.sqrt(0.02))
    assert term_spread([[0.1, 0.5]], [[True, False]]) is None
    with pytest.raises(ValueError, match="must be the same"):
        term_spread([[0.1, 0.5]], [[True, False, True]])


def test_spawn_collapse_warns_once_per_drop_below_half_the_first_share():
    watch = TrendWatch()
    shares = [0.6, 0.5, 0.31, 0.29, 0.1, 0.4, 0.2]
    warned = [bool(watch.observe(step, {"spawned": s})) for step, s in enumerate(shares, 1)]
    assert warned == [False, False, False, True, False, False, True]
    line = TrendWatch()
    line.observe(5, {"spawned": 0.5})
    assert line.observe(9, {"spawned": 0.2}) == [
        "spawn collapse at step 9: 20.0% of rollouts spawn, less than half the 50.0% of step 5"
    ]
    # A model that never spawned cannot collapse.
    never = TrendWatch()
    assert not any(never.observe(s, {"spawned": 0.0}) for s in range(1, 4))


def test_reward_up_while_held_out_accuracy_down_warns():
    watch = TrendWatch()
    rows = [
        (0, {"eval_accuracy": 0.40}),
        (5, {"reward": 0.3}),
        (10, {"reward": 0.4, "eval_accuracy": 0.45}),
        (15, {"reward": 0.5}),
        (20, {"reward": 0.5, "eval_accuracy": 0.47}),  # both up: fine
        (25, {"reward": 0.6}),
        (30, {"reward": 0.7, "eval_accuracy": 0.44}),  # reward up, accuracy down
        (35, {"reward": 0.5}),
        (40, {"reward": 0.5, "eval_accuracy": 0.40}),
    ]  # both down: not hacking
    warnings = {step: watch.observe(step, row) for step, row in rows}
    assert [s for s, w in warnings.items() if w] == [30]
    assert warnings[30] == [
        "reward hacking? at step 30 the training reward rose to 0.650 (mean since "
        "step 20) from 0.500 while held-out accuracy fell from 47.0% to 44.0%"
    ]
    assert np.isclose(watch.last_eval[1], 0.5)


def test_a_held_out_fall_within_evaluation_noise_does_not_warn():
    """At 100 problems one standard error of the difference is about 7 points
    near 50%: a 3-point fall is noise, a 12-point fall is not."""

    def warned(before: float, after: float) -> bool:
        watch = TrendWatch(eval_problems=100)
        watch.observe(10, {"reward": 0.4, "eval_accuracy": before})
        return bool(watch.observe(20, {"reward": 0.5, "eval_accuracy": after}))

    assert not warned(0.55, 0.52)
    assert warned(0.50, 0.38)
    assert not warned(0.50, 0.44) and warned(0.50, 0.42)  # threshold sqrt(2 * .47 * .53 / 100) = 7.1 points
    assert TrendWatch(eval_problems=100).noise(0.5, 0.5) == pytest.approx(np.sqrt(0.005))
