"""`python -m apr_jax.evaluate` on a tiny trained checkpoint."""

import json
import os
import tempfile

import pytest

from apr_jax import evaluate
from apr_jax.config.loading import load_run_config
from apr_jax.evaluation import loading, report, scoring, sweeps
from apr_jax.tasks.countdown.problems import Problem, save_problems
from apr_jax.threads import ThreadTree
from apr_jax.training.run import run_training

TINY = [
    "config.task.num_train=120",
    "config.task.num_validation=8",
    "config.task.num_test=8",
    "config.model.num_layers=1",
    "config.model.d_model=32",
    "config.model.num_heads=2",
    "config.model.num_kv_heads=1",
    "config.model.d_ff=64",
    "config.model.max_len=96",
    "config.data.seq_len=96",
    "config.data.num_workers=1",
    "config.train.batch_size=8",
    "config.train.steps=2",
    "config.train.log_every=1",
    "config.train.eval_every=2",
    "config.train.eval_batches=1",
    "config.train.checkpoint_every=2",
    "config.eval.num_problems=0",
    "config.eval.batch_problems=4",
    "config.eval.tokens_per_thread=16",
    "config.eval.row_buckets=2",
    "config.eval.kv_buckets=1",  # few engine branches: short compiles
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    config = load_run_config(None, TINY + [f"config.data.dir={root / 'data'}"])
    run_training(config, str(root / "run"))
    return str(root / "run")


def test_cli_prints_table_writes_results_and_plot(workdir, tmp_path, capsys, caplog):
    out = tmp_path / "results.jsonl"
    problems = tmp_path / "problems.jsonl"
    save_problems(str(problems), [Problem((3, 5, 7), 22), Problem((2, 4, 9), 17)])
    code = evaluate.main(
        [
            f"--workdir={workdir}",
            f"--problems={problems}",
            "--samples=2",
            "--temperature=1.0",
            f"--out={out}",
            "--sweep=tokens=4,12",
            "--show=1",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "accuracy" in printed and "pass@K" in printed and "sequential" in printed
    assert "compile_s" in printed
    assert "[thread 0 depth 0" in printed  # --show renders a thread tree
    rows = [json.loads(l) for l in open(out)]
    assert len(rows) == 4  # 2 problems x 2 sweep settings
    for row in rows:
        assert {
            "numbers",
            "target",
            "solved",
            "operations",
            "total_tokens",
            "sequential_tokens",
            "num_threads",
            "max_context",
            "tree",
            "pass_at_k",
            "cons_at_k",
            "solve_rate",
        } <= set(row)
        assert len(row["samples"]) == 1  # the second sample; the first is the row itself
    by_setting = {r["setting"]: r for r in rows}
    assert by_setting["tokens=4"]["total_tokens"] <= 4 * by_setting["tokens=4"]["num_threads"]
    assert os.path.getsize(tmp_path / "results.png") > 1000
    from apr_jax.tasks.countdown.problems import difficulty

    for row in rows:  # how wide each problem went, and how hard it is
        assert row["num_inputs"] == 3
        assert row["difficulty"] == pytest.approx(difficulty(Problem(tuple(row["numbers"]), row["target"])))
        for sample in [row, *row["samples"]]:
            assert sample["children"] == sample["num_threads"] - 1
            assert sample["spawn_rounds"] >= (sample["children"] > 0)
            assert sample["depth"] == max(
                ThreadTree.from_dict(sample["tree"]).depth(i) for i in range(sample["num_threads"])
            )
    assert printed.count("width vs difficulty: spearman n/a") == 2  # one line per setting; 2 problems
    assert "spawn rate by difficulty quartile" in printed
    assert os.path.getsize(tmp_path / "results_width.png") > 1000
    assert f"width plot: {tmp_path / 'results_width.png'}" in printed
    assert not [r for r in caplog.records if "read only" in r.getMessage()]  # no orbax notice


def test_wall_time_leaves_the_compile_out(workdir, monkeypatch):
    import types

    loaded = loading.load_for_inference(workdir)
    clock = iter([100.0, 130.0])  # evaluate's clock around the engine run: 30 s in all
    monkeypatch.setattr(scoring, "time", types.SimpleNamespace(time=lambda: next(clock)))
    _, summary = scoring.evaluate_problems(
        loaded.model, loaded.tokenizer, loaded.config, [Problem((3, 5, 7), 22)], tokens_per_thread=5
    )
    assert summary["compile_s"] > 0
    assert summary["wall_s"] == pytest.approx(30.0 - summary["compile_s"])


def test_checkpoint_flag_and_split(workdir, capsys):
    code = evaluate.main([f"--checkpoint={workdir}/checkpoints/2", "--split=test", "--num=3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "evaluating" in printed
    # without --out the width figure goes in the run's workdir
    assert f"width plot: {workdir}/width_vs_difficulty.png" in printed
    assert os.path.getsize(os.path.join(workdir, "width_vs_difficulty.png")) > 1000


class _NoDifficulty:
    """A task without ``difficulty`` (as a task written before it existed)."""

    def __init__(self, task):
        self._task = task

    def __getattr__(self, name):
        if name == "difficulty":
            raise AttributeError(name)
        return getattr(self._task, name)


def test_unknown_difficulty_gives_no_width_figures(workdir, tmp_path, monkeypatch, capsys):
    real = scoring.get_task
    for module in (scoring, loading):
        monkeypatch.setattr(module, "get_task", lambda config: _NoDifficulty(real(config)))
    out, plot = tmp_path / "results.jsonl", tmp_path / "width.png"
    problems = tmp_path / "problems.jsonl"
    save_problems(str(problems), [Problem((3, 5, 7), 22), Problem((2, 4, 9), 17), Problem((1, 2, 3, 4), 24)])
    code = evaluate.main([f"--workdir={workdir}", f"--problems={problems}", f"--out={out}", f"--width_plot={plot}"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = [json.loads(l) for l in open(out)]
    assert [r["difficulty"] for r in rows] == [None, None, None]
    assert [r["num_inputs"] for r in rows] == [3, 3, 4]
    assert all(r["children"] == r["num_threads"] - 1 for r in rows)
    assert "width vs difficulty" not in printed and "width plot" not in printed
    assert not plot.exists()


def test_problem_difficulty_reads_the_task_defensively():
    class Known:
        def difficulty(self, problem):
            return 0.25

    class Unknown:
        def difficulty(self, problem):
            return None

    assert scoring.problem_difficulty(Known(), None) == 0.25
    assert scoring.problem_difficulty(Unknown(), None) is None
    assert scoring.problem_difficulty(object(), None) is None
    assert scoring.input_count({"numbers": [1, 2, 3, 4], "target": 5}) == 4
    assert scoring.input_count({"question": "2+2?"}) is None


def test_width_figure_has_one_panel_per_setting_with_known_difficulty(tmp_path):
    def row(difficulty, children, *more):
        return {"difficulty": difficulty, "children": children, "samples": [{"children": c} for c in more]}

    known = [row(0.1, 0), row(0.4, 1, 3), row(0.6, 2), row(0.9, 4), row(0.9, 3)]
    groups, labels = report.children_by_quartile(known + [row(None, 7)])
    # average ranks 1, 2, 3, 4.5, 4.5 of 5: positions .1 .3 .5 .8 .8 -> Q1 Q2 Q3 Q4 Q4;
    # a problem's children are the mean over its samples (1 and 3: 2)
    assert groups == [[0.0], [2.0], [2.0], [4.0, 3.0]]
    assert labels[3] == "Q4\n0.90-0.90\nn=2"
    path = tmp_path / "w.png"
    assert report.plot_width([("a default", known), ("b default", [row(None, 1)])], str(path))
    assert path.stat().st_size > 1000
    other = tmp_path / "none.png"
    assert not report.plot_width([("b default", [row(None, 1)])], str(other))
    assert not other.exists()


def _drawn_lines(monkeypatch):
    """(label, marker) of every line of each figure saved from now on."""
    from matplotlib.figure import Figure

    drawn, save = [], Figure.savefig

    def savefig(fig, *args, **kwargs):
        drawn.extend((line.get_label(), line.get_marker()) for ax in fig.axes for line in ax.lines)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return drawn


def test_children_sweep_asks_for_adaptive_width_and_plots_every_setting(tmp_path, monkeypatch):
    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(evaluate.__file__))), "configs")
    apr = load_run_config(os.path.join(configs, "compare_apr.py"), [])  # conditioned APR
    sosp = load_run_config(os.path.join(configs, "compare_sosp.py"), [])
    kind, values = sweeps.parse_sweep("children=adaptive,1,4")
    assert (kind, values) == ("children", ["adaptive", 1, 4])
    assert sweeps.sweep_settings(kind, values, apr) == [
        ("children=adaptive", {"prefix": ""}),
        ("children=1", {"prefix": "c1 "}),
        ("children=4", {"prefix": "c4 "}),
    ]
    # SoS+ and an unconditioned (adaptive-width) APR run take no children sweep:
    # each its default setting, a reference point beside the conditioned run
    assert sweeps.sweep_settings(kind, values, sosp) == sweeps.sweep_settings(None, [], sosp)
    adaptive = load_run_config(os.path.join(configs, "adaptive.py"), [])
    assert sweeps.sweep_settings(kind, values, adaptive) == [("default", {"prefix": ""})]
    assert [sweeps.is_swept(k, adaptive) for k in ("children", "budget", "tokens")] == [False, False, True]
    assert [sweeps.is_swept(k, apr) for k in ("children", "budget", "tokens")] == [True, False, True]
    with pytest.raises(ValueError, match="integers"):
        sweeps.parse_sweep("budget=adaptive,64")
    assert [
        report.setting_mark(s) for s in ("children=adaptive", "children=2", "budget=128", "tokens=64", "default")
    ] == ["adaptive", "c2", "b128", "t64", "default"]

    def summary(accuracy, total, sequential):
        return {"accuracy": accuracy, "mean_total_tokens": total, "mean_sequential_tokens": sequential}

    series = {
        "apr@9": [
            ("children=adaptive", summary(0.6, 90, 40)),
            ("children=1", summary(0.3, 50, 40)),
            ("children=4", summary(0.5, 120, 45)),
        ],
        "sosp@9": [("default", summary(0.4, 150, 150))],
    }
    path = tmp_path / "sweep.png"
    drawn = _drawn_lines(monkeypatch)
    report.plot_sweep(series, str(path))
    assert path.stat().st_size > 1000
    # each panel: a line through c1 and c4, a star for adaptive, a star for SoS+'s lone point
    assert drawn == [("apr@9", "o"), ("apr@9 adaptive", "*"), ("sosp@9 default", "*")] * 2


def test_split_list_and_unseen_split(workdir, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    code = evaluate.main([f"--workdir={workdir}", "--split=test,unseen", "--num=5", f"--out={out}"])
    assert code == 0, capsys.readouterr().err
    data_dir = os.path.join(os.path.dirname(workdir), "data")  # the fixture's
    config = load_run_config(None, TINY + [f"config.data.dir={data_dir}"])
    from apr_jax.data.build import build_dataset, make_problem_source

    info = build_dataset(config, log=None)
    splits = {s: [p.key for p in make_problem_source(info, s)] for s in info.problem_paths}
    evaluated = [Problem(tuple(r["numbers"]), r["target"]).key for r in map(json.loads, open(out))]
    assert evaluated[:5] == splits["test"][:5]  # the test split first, in its order
    unseen = set(evaluated[5:])
    assert len(unseen) == 5 and not unseen & {k for keys in splits.values() for k in keys}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num=3"], "give --workdir=DIR or --checkpoint=DIR/checkpoints/STEP"),
        (["--workdir=/nonexistent/run"], "checkpoint or workdir not found: /nonexistent/run"),
        (["--checkpoint={w}/checkpoints/7"], "checkpoint step 7 not found"),
        (["--workdir={w}", "--sweep=widths=1"], "--sweep='widths=1': expected KIND=V1,V2"),
        (["--workdir={w}", "--num=abc"], "--num must be an integer"),
        (["--workdir={w}", "--split=test,dev"], "--split='dev' is not one of train, validation, test, unseen"),
        (["--workdir={w}", "--frobnicate=1"], "unknown flag --frobnicate"),
        (
            ["--workdir={w}", "--sweep=children=1,2"],
            "needs at least one model trained with config.trace.kind=apr and config.trace.condition=true",
        ),
    ],
)
def test_bad_input_is_one_line(workdir, capsys, argv, message):
    argv = [a.format(w=workdir) for a in argv]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_malformed_problem_file_names_file_and_line(workdir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"numbers": [1, 2, 3], "target": 6}\n{"numbers": [1, 2], "target": \n')
    assert evaluate.main([f"--workdir={workdir}", f"--problems={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad}:2:" in err and len(err.splitlines()) == 1


def test_checkpoint_whose_params_do_not_match_its_config(workdir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(workdir, broken)
    meta_path = broken / "checkpoints" / "2" / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta["config"]["model"]["d_model"] = 64
    meta_path.write_text(json.dumps(meta))
    assert evaluate.main([f"--workdir={broken}", "--num=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be loaded with its own config and tokenizer" in err
    assert len(err.splitlines()) == 1


def _rates(values: list[float]) -> dict:
    return {Problem((n, 1, 1), 10): v for n, v in enumerate(values)}


def test_paired_comparisons_count_problems_only_one_run_solved():
    lines = report.paired_comparisons(
        {"sft@800": _rates([1, 0, 0, 1, 0]), "rl@60": _rates([1, 1, 1, 0, 0]), "other@5": _rates([1, 0, 0, 1, 0])}
    )
    assert lines[0] == "rl@60 vs sft@800: 2 problems solved only by rl@60, 1 only by sft@800 (sign test p = 1.00)"
    assert lines[1].startswith("other@5 vs sft@800: 0 problems solved only by other@5, 0 only")
    assert report.paired_comparisons({"one@1": _rates([1])}) == []


def test_paired_comparisons_with_samples_compare_solve_rates_on_shared_problems():
    sft = _rates([0.25, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    rl = _rates([0.5, 0.25, 0.5, 0.25, 0.75, 0.25, 0.5, 0.25])
    rl[Problem((99, 1, 1), 10)] = 1.0  # only rl saw this problem: not paired
    lines = report.paired_comparisons({"sft@800": sft, "rl@60": rl})
    # 7 problems better under rl, 0 under sft, one tie: p = 2 / 2**7
    assert lines == [
        "rl@60 vs sft@800: 7 problems solved more often by rl@60, 0 more often by sft@800 (sign test p = 0.02)"
    ]
    assert report.paired_comparisons({"a@1": _rates([1.0]), "b@1": {Problem((7, 7, 7), 3): 1.0}}) == [
        "b@1 vs a@1: no problems in common, not compared"
    ]


def test_loading_a_checkpoint_leaves_no_temporary_files(workdir, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    loaded = loading.load_for_inference(workdir)
    assert loaded.tokenizer.encode("1+2") and not list(scratch.iterdir())


def test_eval_overrides_reach_keys_a_saved_config_predates():
    """A checkpoint's config written before ``eval.long_prefill_chunks`` existed
    still takes it at evaluation; other sections stay as trained."""
    from apr_jax.config.sections import RunConfig

    written = load_run_config(None, TINY).to_dict()
    del written["eval"]["long_prefill_chunks"]
    saved = RunConfig.from_config(written)
    changed = loading.with_eval_overrides(
        saved, ["config.eval.long_prefill_chunks=[16, 32]", "config.eval.max_children=3"]
    )
    assert changed.eval.long_prefill_chunks == (16, 32) and changed.eval.max_children == 3
    assert changed.model == saved.model and changed.section("task") == saved.section("task")
    with pytest.raises(ValueError, match="only config.eval"):
        loading.with_eval_overrides(saved, ["config.model.d_model=64"])


def test_spawn_decision_report_golden():
    """benchmarks/spawn_decision.py: agreement, mean P(<spawn>) and the
    per-quartile fork rates of trace and model, on a hand-made case."""
    import numpy as np

    from benchmarks.spawn_decision import report

    trace = np.array([True, True, False, False])
    p_spawn = np.array([0.9, 0.2, 0.6, 0.1])
    text = report("test", trace, p_spawn, [0.9, 0.8, 0.1, 0.2])
    assert text.splitlines() == [
        "test: 4 problems; trace forks 50.0%, model forks 50.0%, agreement 50.0%; "
        "mean P(<spawn>) where the trace forks 0.55, where it does not 0.35",
        "  forks by difficulty quartile, easiest first: trace   0%   0% 100% 100%; model 100%   0%   0% 100%",
    ]


def test_spawn_decision_on_a_trained_run(workdir, capsys):
    """The fixture's fixed-width traces fork on every problem; the model's
    P(<spawn>) is read from one forward over the prompt."""
    from benchmarks import spawn_decision

    spawn_decision.main(["--workdir", workdir, "--splits", "test", "--num", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("test: 4 problems; trace forks 100.0%, model forks ")
    trace_rates = lines[2].split("trace")[1].split(";")[0].split()
    assert set(trace_rates) <= {"100%", "-"} and "100%" in trace_rates  # ties may leave a quartile empty
    with pytest.raises(SystemExit, match="unknown split 'dev'"):
        spawn_decision.main(["--workdir", workdir, "--splits", "dev"])
