"""Width against difficulty: Spearman with average ranks, difficulty
quartiles, the summary keys and the printed line, all checked by hand."""

import math

import pytest

from apr_jax.evaluation import width_stats


def test_average_ranks_share_the_mean_rank_of_a_tie():
    assert width_stats.average_ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert width_stats.average_ranks([0.5, 0.1, 0.5, 0.5]).tolist() == [3, 1, 3, 3]
    assert width_stats.average_ranks([]).tolist() == []


def test_spearman_without_ties_by_hand():
    # rank differences -1, 1, -1, 1, 0: rho = 1 - 6 * 4 / (5 * (25 - 1)) = 0.8
    assert width_stats.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert width_stats.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    # a monotone but not linear relation is a perfect rank correlation
    assert width_stats.spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)


def test_spearman_with_ties_by_hand():
    # x = [1, 2, 2, 3] ranks [1, 2.5, 2.5, 4]; y = [1, 3, 2, 4] ranks [1, 3, 2, 4].
    # Deviations from the mean rank 2.5: x [-1.5, 0, 0, 1.5], y [-1.5, 0.5, -0.5, 1.5].
    # sum dx*dy = 2.25 + 2.25 = 4.5; sum dx^2 = 4.5; sum dy^2 = 5;
    # rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10) = 0.9487.
    # (Ranking the tie by order instead gives 0.8; the no-tie shortcut
    # 1 - 6 sum d^2 / (n (n^2 - 1)) gives 0.95.)
    assert width_stats.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))


def test_spearman_is_nan_when_undefined():
    assert math.isnan(width_stats.spearman([1, 2], [2, 1]))  # fewer than 3 pairs
    assert math.isnan(width_stats.spearman([0.2, 0.5, 0.9], [2, 2, 2]))  # constant children
    assert math.isnan(width_stats.spearman([0.5, 0.5, 0.5], [1, 2, 3]))  # constant difficulty
    with pytest.raises(ValueError, match="paired"):
        width_stats.spearman([1, 2, 3], [1, 2])


def test_quartiles_and_rates_by_hand():
    difficulty = [0.1, 0.2, 0.2, 0.3, 0.5, 0.5, 0.5, 0.9]
    children = [0, 0, 1, 2, 0, 3, 4, 2]
    # average ranks 1, 2.5, 2.5, 4, 6, 6, 6, 8; positions (r - 1/2) / 8:
    # 0.0625 -> Q1; 0.25 (the 0.2 tie, on the boundary) -> Q2; 0.4375 -> Q2;
    # 0.6875 (the three 0.5s together) -> Q3; 0.9375 -> Q4.
    assert width_stats.difficulty_quartiles(difficulty).tolist() == [0, 1, 1, 1, 2, 2, 2, 3]
    rates = width_stats.quartile_rates(difficulty, children)
    assert rates["problems"] == [1, 3, 3, 1]
    # Q1 children [0]; Q2 [0, 1, 2]; Q3 [0, 3, 4]; Q4 [2]
    assert rates["spawn_rate"] == pytest.approx([0.0, 2 / 3, 2 / 3, 1.0])
    assert rates["children"] == pytest.approx([0.0, 1.0, 7 / 3, 2.0])
    # spawn shares given per problem (several samples) are averaged as given
    shares = width_stats.quartile_rates(difficulty, children, [0, 0.5, 1, 1, 0, 1, 1, 0.25])
    assert shares["spawn_rate"] == pytest.approx([0.0, 2.5 / 3, 2 / 3, 0.25])


def test_a_heavy_tie_leaves_quartiles_empty():
    # ranks 2, 2, 2, 4 of 4: positions 0.375 (Q2) and 0.875 (Q4)
    rates = width_stats.quartile_rates([0.5, 0.5, 0.5, 0.9], [1, 0, 1, 3])
    assert rates["problems"] == [0, 3, 0, 1]
    assert math.isnan(rates["spawn_rate"][0]) and math.isnan(rates["children"][2])
    assert rates["spawn_rate"][1] == pytest.approx(2 / 3)


def test_width_summary_and_line():
    difficulty = [0.1, 0.2, 0.2, 0.3, 0.5, 0.5, 0.5, 0.9, None]
    children = [0, 0, 1, 2, 0, 3, 4, 2, 9]  # the last problem's difficulty is unknown: left out
    inputs = [3, 3, 4, 4, 3, 4, 4, 3, 4]
    s = width_stats.width_summary(difficulty, children, inputs)
    assert s["width_problems"] == 8
    assert s["width_spearman"] == pytest.approx(width_stats.spearman(difficulty[:8], children[:8]))
    # 3 inputs: difficulty [0.1, 0.2, 0.5, 0.9], children [0, 0, 0, 2]
    assert s["width_spearman_3_inputs"] == pytest.approx(width_stats.spearman([0.1, 0.2, 0.5, 0.9], [0, 0, 0, 2]))
    assert s["width_spearman_4_inputs"] == pytest.approx(width_stats.spearman([0.2, 0.3, 0.5, 0.5], [1, 2, 3, 4]))
    assert [s[f"width_spawn_rate_q{q}"] for q in (1, 2, 3, 4)] == pytest.approx([0, 2 / 3, 2 / 3, 1])
    assert [s[f"width_problems_q{q}"] for q in (1, 2, 3, 4)] == [1, 3, 3, 1]
    assert all(isinstance(v, float) for v in s.values())  # logged with float(v) by RL
    line = width_stats.width_line(s)
    assert line == (
        f"width vs difficulty: spearman {s['width_spearman']:.2f} (3 inputs "
        f"{s['width_spearman_3_inputs']:.2f}, 4 inputs 0.95); spawn rate by difficulty "
        "quartile 0% 67% 67% 100%; children 0.0 1.0 2.3 2.0 (8 problems)"
    )
    assert width_stats.width_summary([None, None], [1, 2]) == {}
    assert width_stats.width_line({"accuracy": 0.5}) is None


def test_width_line_shows_undefined_figures_as_n_a_and_one_count_plainly():
    s = width_stats.width_summary([0.5, 0.5, 0.5, 0.9], [1, 0, 1, 3], [4, 4, 4, 4])
    # ranks x [2, 2, 2, 4], y [2.5, 1, 2.5, 4]: rho = 3 / sqrt(3 * 4.5) = 0.82
    assert width_stats.width_line(s) == (
        "width vs difficulty: spearman 0.82; spawn rate by "
        "difficulty quartile n/a 67% n/a 100%; children n/a 0.7 "
        "n/a 3.0 (4 problems)"
    )
