"""`python -m apr_jax.compare` on three tiny runs (APR in the message and the
inherit family, SoS+): every figure and the table, reuse of finished runs,
the context-limited evaluation, and its errors."""

import json
import os

import pytest
from helpers.tiny import TINY_RUN

from apr_jax import compare
from apr_jax.config.checks import ConfigError
from apr_jax.config.loading import load_run_config
from apr_jax.evaluation import compare as compare_lib
from apr_jax.threads import Segment, Thread, ThreadTree
from apr_jax.training.loop import TrainingError

APR_CONFIG = os.path.join(compare.CONFIGS_DIR, "compare_apr.py")
SOSP_CONFIG = os.path.join(compare.CONFIGS_DIR, "compare_sosp.py")
INHERIT_CONFIG = os.path.join(compare.CONFIGS_DIR, "compare_inherit.py")
TINY = TINY_RUN + [
    "config.task.num_train=120",
    "config.train.steps=2",
    "config.train.warmup_steps=1",
    "config.train.log_every=2",
    "config.train.eval_every=2",
    "config.train.checkpoint_every=2",
    "config.eval.num_problems=0",  # no held-out evaluation at the end of training
    "config.eval.batch_problems=3",
    "config.eval.tokens_per_thread=24",
    "config.eval.row_buckets=1",
]


def flags(data_dir):
    return ["--" + o for o in TINY] + [f"--config.data.dir={data_dir}"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    workdir = str(root / "cmp")
    code = compare.main(
        [
            f"--workdir={workdir}",
            *flags(root / "data"),
            "--num=3",
            "--contexts=48,128",
            "--children=1,2",
            "--budgets=64",
            "--samples=2",
        ]
    )
    assert code == 0
    return {"workdir": workdir, "data": str(root / "data")}


@pytest.mark.slow
def test_compare_writes_every_figure_and_the_table(compared):
    workdir = compared["workdir"]
    for name in ("context.png", "total_tokens.png", "sequential_tokens.png", "wall_clock.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 5000, name
    md = open(os.path.join(workdir, "compare.md")).read()
    for line in (
        "| APR | context 48 |",
        "| APR inherit | context 128 |",
        "| SoS+ | context 128 |",
        "| APR | children c2 |",
        "| APR inherit | children c2 |",
        "| SoS+ | budget b64 |",
        "| SoS+ | 2 samples |",
        "| APR | adaptive (no prefix, up to c4) |",
        "| APR inherit | adaptive (no prefix, up to c4) |",
    ):
        assert line in md
    # KV memory held per problem (each token's K/V once), a column of its own.
    header = next(line for line in md.splitlines() if line.startswith("| model | setting |"))
    columns = header.split(" | ")
    for first in json.load(open(os.path.join(workdir, "compare.json")))["points"][:1]:
        row = next(l for l in md.splitlines() if l.startswith(f"| {first['model']} | context {first['value']} |"))
        cells = row.split(" | ")
        assert cells[columns.index("KV slots held")] == f"{first['summary']['mean_kv_slots']:.0f}"
        copied = cells[columns.index("KV slots, prefixes copied")]
        assert copied == f"{first['summary']['mean_kv_slots_unshared']:.0f}"
        assert first["summary"]["mean_kv_slots"] > 0
    assert "## Width against difficulty" in md and "- APR adaptive: width vs difficulty: spearman" in md
    assert "- APR c2: width vs difficulty" in md and "![width_vs_difficulty.png]" in md
    assert os.path.getsize(os.path.join(workdir, "width_vs_difficulty.png")) > 5000
    for pair in ("APR vs SoS+:", "APR inherit vs SoS+:", "APR inherit vs APR:"):
        assert md.count(pair) == 2  # one per context
    assert "- context 128: APR inherit " in md and "slots of an engine that copies each thread's context" in md
    assert "longer than the context: > 48:" in md and "longest APR inherit thread context" in md
    points = json.load(open(os.path.join(workdir, "compare.json")))["points"]
    assert len(points) == 3 * 2 + 2 * 2 + 2 + 1 + 1  # contexts, children, adaptive, budget, vote
    assert [p["model"] for p in points if p["sweep"] == "adaptive"] == ["APR", "APR inherit"]
    adaptive = next(p for p in points if p["sweep"] == "adaptive")
    assert adaptive["obeyed"] is None
    assert {"width_spearman", "width_spawn_rate_q1", "mean_children"} <= set(adaptive["summary"])
    conditioned = [p for p in points if p["sweep"] in ("children", "budget")]
    assert all(0.0 <= p["obeyed"] <= 1.0 for p in conditioned)
    vote = next(p for p in points if p["sweep"] == "vote")
    assert [v["k"] for v in vote["votes"]] == [1, 2]
    assert all(p["wall_per_problem_s"] > 0 for p in points)


@pytest.mark.slow
def test_finished_runs_are_reused_and_other_configs_refused(compared, capsys):
    config = load_run_config(SOSP_CONFIG, TINY + [f"config.data.dir={compared['data']}"])
    run_dir = os.path.join(compared["workdir"], "sosp")
    before = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    compare_lib.train_or_reuse(config, run_dir)
    assert "reusing the finished run" in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == before
    other = load_run_config(SOSP_CONFIG, TINY + ["config.model.d_ff=96"])
    with pytest.raises(TrainingError, match="holds a run of a different config: config.model.d_ff"):
        compare_lib.train_or_reuse(other, run_dir)


@pytest.mark.slow
def test_context_limited_threads_stop_at_exactly_the_limit(compared):
    rows = [json.loads(l) for l in open(os.path.join(compared["workdir"], "results.jsonl"))]
    limited = [r for r in rows if r["sweep"] == "context" and r["value"] == 48]
    assert len(limited) == 3 * 3
    for row in limited:
        for sample in [row, *row["samples"]]:
            threads = sample["tree"]["threads"]
            assert sample["max_context"] <= 48
            if any(t["stop"] == "context_limit" for t in threads):
                assert sample["max_context"] == 48
                assert sample["limits_hit"]["context_limit"] >= 1
    # Two training steps never learn to stop: every root runs into the limit.
    assert all(r["tree"]["threads"][0]["stop"] == "context_limit" for r in limited)
    assert all(r["max_context"] == 48 for r in limited)


@pytest.mark.slow
def test_context_sweep_asks_each_model_for_what_fits_the_window(compared):
    """SoS+ is asked for the largest budget bucket a window holds (b64 is the
    smallest it was trained on), APR for its eval.max_children children."""
    rows = [json.loads(l) for l in open(os.path.join(compared["workdir"], "results.jsonl"))]
    prompts = {
        (r["model"], r["value"]): r["tree"]["threads"][0]["segments"][0]["text"]
        for r in rows
        if r["sweep"] == "context"
    }
    assert prompts[("SoS+", 48)].startswith("b64 ") and prompts[("SoS+", 128)].startswith("b128 ")
    assert prompts[("APR", 48)].startswith("c4 ") and prompts[("APR", 128)].startswith("c4 ")
    assert prompts[("APR inherit", 48)].startswith("c4 ")
    adaptive = [r for r in rows if r["sweep"] == "adaptive"]
    assert len(adaptive) == 2 * 3  # asked with no prefix: the model picks its width
    assert all(r["tree"]["threads"][0]["segments"][0]["text"][0].isdigit() for r in adaptive)
    assert all(r["difficulty"] is not None and r["num_inputs"] == 4 for r in adaptive)


def test_evaluate_asks_a_conditioned_sosp_run_for_a_budget_it_knows():
    from apr_jax.evaluation.sweeps import sweep_settings

    config = load_run_config(SOSP_CONFIG, ["config.eval.tokens_per_thread=160"])
    assert sweep_settings(None, [], config) == [("default", {"prefix": "b128 "})]
    assert [kw["prefix"] for _, kw in sweep_settings("tokens", [96, 300], config)] == ["b64 ", "b256 "]
    assert sweep_settings(None, [], load_run_config(APR_CONFIG, [])) == [("default", {"prefix": "c4 "})]


@pytest.mark.slow
def test_the_inherit_arm_trains_and_decodes_in_its_family(compared):
    saved = json.load(open(os.path.join(compared["workdir"], "inherit", "config.json")))
    assert saved["data"]["context"] == "inherit" and saved["data"]["join"] == "stitch"
    assert json.load(open(os.path.join(compared["workdir"], "apr", "config.json")))["data"]["context"] == "message"


def _arms(*keys):
    return {k: {"apr": APR_CONFIG, "inherit": INHERIT_CONFIG, "sosp": SOSP_CONFIG}[k] for k in keys}


def test_unequal_budgets_and_bad_flags_are_one_line_errors(tmp_path, capsys):
    shorter = tmp_path / "short_sosp.py"
    shorter.write_text(
        f"from apr_jax.config.loading import config_module\n"
        f"base = config_module({SOSP_CONFIG!r})\n"
        f"def get_config():\n    c = base.get_config()\n"
        f"    c.train.steps = 400\n    return c\n"
    )
    with pytest.raises(ConfigError, match="unequal training budgets: apr 6,144,000 tokens, sosp"):
        compare_lib.load_arms({**_arms("apr"), "sosp": str(shorter)}, [])
    with pytest.raises(ConfigError, match="train different tasks"):
        h200 = os.path.join(compare.CONFIGS_DIR, "countdown4_sosp_h200.py")
        compare_lib.load_arms({**_arms("apr"), "sosp": h200}, [])
    configs = compare_lib.load_arms(_arms("apr", "inherit", "sosp"), ["config.train.steps=10"])  # shared: equal
    assert configs["inherit"].data.context == "inherit"
    assert compare_lib.training_tokens(configs["inherit"]) == compare_lib.training_tokens(configs["apr"])
    with pytest.raises(ConfigError, match="expected an SFT config with trace.kind=apr data.context=inherit"):
        compare_lib.load_arms({**_arms("sosp"), "inherit": APR_CONFIG}, [])
    with pytest.raises(ConfigError, match="'tree' is not one of apr, inherit, sosp"):
        compare_lib.arms_named("apr,tree,sosp")
    with pytest.raises(ConfigError, match="needs sosp and at least one of apr, inherit"):
        compare_lib.arms_named("apr,inherit")
    assert [a.key for a in compare_lib.arms_named("sosp,inherit")] == ["inherit", "sosp"]
    workdir = tmp_path / "w"
    code = compare.main([f"--workdir={workdir}", f"--sosp_config={APR_CONFIG}"])
    assert code == 2 and "trace.kind=sosp" in capsys.readouterr().err
    code = compare.main([f"--workdir={workdir}", "--contexts=64,1024"])
    assert code == 2 and "--contexts: 1024 exceeds every model's config.model.max_len (640)" in capsys.readouterr().err
    code = compare.main([f"--workdir={workdir}", "--arms=apr,sosp", "--contexts=64,320"])
    assert code == 2 and "--contexts: 320 exceeds every model's config.model.max_len (160)" in capsys.readouterr().err
    code = compare.main([f"--workdir={workdir}", "--children=two"])
    assert code == 2 and "--children='two'" in capsys.readouterr().err
    assert not workdir.exists()  # nothing trained


def test_obedience_counts_children_and_budget():
    def sample(threads, written):
        tree = ThreadTree(
            {"numbers": [1, 2], "target": 3}, [Thread(-1, [Segment("prompt", "1 2 -> 3\n"), Segment("model", written)])]
        )
        return {"num_threads": threads, "tree": tree.to_dict()}

    rows = [{**sample(3, "1+2=3\n"), "samples": [sample(4, "")]}, {**sample(1, "abc " * 20), "samples": []}]
    assert compare_lib.obedience("children", 2, rows) == pytest.approx(1 / 3)
    # "1+2=3\n" is six tokens as the generators count them; a run of letters is one.
    assert compare_lib.obedience("budget", 20, rows) == 1.0
    assert compare_lib.obedience("budget", 6, rows) == pytest.approx(2 / 3)
    assert compare_lib.obedience("budget", 5, rows) == pytest.approx(1 / 3)


def test_token_split_separates_the_root_from_the_critical_path():
    from apr_jax.evaluation.compare_report import token_split

    def sample(written, sequential):
        return {
            "tree": {"meta": {"written_tokens": written}},
            "total_tokens": sum(written),
            "sequential_tokens": sequential,
            "samples": [],
        }

    first = sample([10, 5, 7], 17)  # the root, then two children side by side
    first["samples"] = [sample([20, 4], 24)]
    assert token_split([first]) == (15.0, 8.0, 5.5)


def _point(model, sweep, value, children, difficulty, accuracy=0.5):
    from apr_jax.evaluation.width_stats import width_summary

    rows = [{"difficulty": d, "children": c, "samples": []} for d, c in zip(difficulty, children)]
    summary = {
        "accuracy": accuracy,
        "mean_total_tokens": 100.0 + value,
        "mean_sequential_tokens": 60.0,
        "mean_children": sum(children) / len(children),
        "samples": 1,
        "wall_s": 1.0,
        "problems": len(rows),
        **width_summary(difficulty, children),
    }
    return compare_lib.Point(model, sweep, value, summary, rows=rows)


def test_report_has_width_lines_and_draws_the_adaptive_point(tmp_path, monkeypatch):
    from apr_jax.evaluation import compare_report

    difficulty = [0.1, 0.4, 0.6, 0.9]
    points = [
        _point("APR", "children", 1, [1, 1, 1, 1], difficulty, 0.3),
        _point("APR", "children", 2, [2, 2, 1, 2], difficulty, 0.45),
        _point("APR", "adaptive", 4, [0, 1, 3, 4], difficulty, 0.6),
        _point("SoS+", "budget", 64, [0, 0, 0, 0], difficulty, 0.2),
    ]
    lines = compare_report.width_section(points)
    assert lines[0] == "## Width against difficulty"
    assert (
        "- APR c1: width vs difficulty: spearman n/a; spawn rate by difficulty quartile 100% 100% 100% 100%" in lines[4]
    )
    # adaptive: children rise with difficulty, rank for rank
    assert lines[6].startswith(
        "- APR adaptive: width vs difficulty: spearman 1.00; spawn rate by "
        "difficulty quartile 0% 100% 100% 100%; children 0.0 1.0 3.0 4.0"
    )
    assert lines[7] == (
        "- adaptive APR: 60.0% at 104 total and 60 sequential tokens, 2.00 children "
        "per problem; best fixed width c2: 45.0% at 102 total and 60 sequential tokens"
    )
    assert not any("SoS+" in line for line in lines)
    unknown = [_point("APR", "adaptive", 4, [0, 1, 3, 4], [None] * 4)]
    assert compare_report.width_section(unknown) == []
    path = tmp_path / "total.png"
    drawn = []
    monkeypatch.setattr(
        compare_report, "_line", lambda ax, xs, ys, label, *a, **k: drawn.append((label, list(xs), list(ys)))
    )
    compare_report.plot_compute(points, str(path), "total", "total tokens per problem")
    assert path.stat().st_size > 1000
    assert ("APR adaptive (no prefix)", [104.0], [0.6]) in drawn
    assert ("APR (children)", [101.0, 102.0], [0.3, 0.45]) in drawn


def test_sign_tests_count_each_models_wins_on_the_same_problems():
    """At each context, APR's and SoS+'s wins over the other are counted on the
    problems both decoded (a swap of the two models' rates shows)."""
    from types import SimpleNamespace

    from apr_jax.evaluation.compare_report import sign_test_lines

    def point(model, value, solved):
        return SimpleNamespace(
            model=model, sweep="context", value=value, solve_rates={k: float(k in solved) for k in "abcdefgh"}
        )

    points = [
        point("APR", 96, "abcdef"),
        point("SoS+", 96, "ag"),
        point("APR", 48, "a"),
        point("SoS+", 48, "abc"),
        point("APR", 160, "abc"),
    ]
    assert sign_test_lines(points, [96, 48, 160]) == [
        "- context 96: APR vs SoS+: 5 problems solved only by APR, 1 only by SoS+ (sign test p = 0.22)",
        "- context 48: APR vs SoS+: 0 problems solved only by APR, 2 only by SoS+ (sign test p = 0.50)",
    ]
    points += [point("APR inherit", 96, "abcdefgh"), point("APR inherit", 160, "a")]
    assert sign_test_lines(points, [96, 160]) == [
        "- context 96: APR vs SoS+: 5 problems solved only by APR, 1 only by SoS+ (sign test p = 0.22)",
        "- context 96: APR inherit vs SoS+: 6 problems solved only by APR inherit, 0 only by SoS+ (sign test p = 0.03)",
        "- context 96: APR inherit vs APR: 2 problems solved only by APR inherit, 0 only by APR (sign test p = 0.50)",
        "- context 160: APR inherit vs APR: 0 problems solved only by APR inherit, 2 only by APR (sign test p = 0.50)",
    ]


def test_claims_set_the_inherit_arm_against_the_message_arm_and_a_copying_engine():
    from types import SimpleNamespace

    from apr_jax.evaluation.compare_report import goal_lines

    def point(model, accuracy, kv, kv_copied):
        sample = {"tree": {"meta": {"written_tokens": [30, 20]}}, "total_tokens": 50, "sequential_tokens": 50}
        summary = {
            "accuracy": accuracy,
            "mean_total_tokens": 50.0,
            "mean_sequential_tokens": 50.0,
            "mean_kv_slots": kv,
            "mean_kv_slots_unshared": kv_copied,
        }
        rows = [{**sample, "samples": []}]
        return SimpleNamespace(model=model, sweep="context", value=160, summary=summary, rows=rows)

    lines = goal_lines([point("APR", 0.40, 300.0, 300.0), point("APR inherit", 0.35, 280.0, 700.0)], [160])
    assert lines == [
        "- context 160: APR inherit 35.0% vs APR 40.0% (-5.0 points); KV slots held per problem 280 vs 300; "
        "APR inherit holds 0.40 x the 700 slots of an engine that copies each thread's context"
    ]
