"""`python -m apr_jax.data`: outputs, skipped problems, one-line errors."""

import json
import os
import subprocess
import sys

import pytest
from helpers.paths import REPO_ROOT

from apr_jax.data.__main__ import main
from apr_jax.tasks.countdown.problems import load_problems
from apr_jax.threads import ThreadTree

REPO = REPO_ROOT


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_problems_then_traces(tmp_path, capsys):
    problems_path, traces_path = str(tmp_path / "p.jsonl"), str(tmp_path / "t.jsonl")
    code, _, err = _run(
        capsys,
        "problems",
        "--numbers",
        "3",
        "--count",
        "30",
        "--seed",
        "1",
        "--max-number",
        "20",
        "--max-target",
        "50",
        "--out",
        problems_path,
    )
    assert code == 0 and "wrote 30" in err
    problems = load_problems(problems_path)
    assert len(problems) == 30 and all(len(p.numbers) == 3 for p in problems)
    assert all(1 <= n <= 20 for p in problems for n in p.numbers)
    for kind in ("apr", "sosp"):
        code, _, err = _run(
            capsys, "traces", "--kind", kind, "--problems", problems_path, "--out", traces_path, "--style", "reference"
        )
        assert code == 0 and "wrote 30 of 30" in err and "skipped 0" in err
        with open(traces_path) as f:
            trees = [ThreadTree.from_json(line) for line in f]
        assert [t.problem for t in trees] == [p.to_dict() for p in problems]
        assert all(t.meta["kind"] == kind and t.meta["style"] == "reference" for t in trees)
        assert (max(t.num_spawned for t in trees) > 0) == (kind == "apr")


def test_unsolvable_and_out_of_range_problems_are_skipped(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    rows = [
        {"numbers": [1, 2, 3], "target": 6},
        {"numbers": [1, 1, 1], "target": 99},
        {"numbers": [1, 2, 3, 4, 5, 6, 7], "target": 10},
        {"numbers": [4, 5], "target": 20},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "t.jsonl"
    code, _, err = _run(capsys, "traces", "--kind", "sosp", "--problems", str(path), "--out", str(out))
    assert code == 0
    assert "skipped problem 2 (1 1 1 -> 99): is not solvable" in err
    assert "skipped problem 3" in err and "7 numbers" in err
    assert "wrote 2 of 4" in err and "skipped 2" in err
    assert [ThreadTree.from_json(line).problem for line in out.read_text().splitlines()] == [rows[0], rows[3]]


@pytest.mark.parametrize(
    "bad_line,message",
    [
        ('{"numbers": [1, 2], "target": 3', "bad JSON"),
        ('{"numbers": [1, 2]}', "missing key 'target'"),
        ('{"numbers": "12", "target": 3}', "'numbers' must be"),
    ],
)
def test_malformed_problem_file_names_file_and_line(tmp_path, capsys, bad_line, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"numbers": [1, 2, 3], "target": 6}\n\n' + bad_line + "\n")
    code, _, err = _run(capsys, "traces", "--kind", "apr", "--problems", str(path), "--out", str(tmp_path / "t.jsonl"))
    line = _one_error_line(err)
    assert code == 2 and f"{path}:3:" in line and message in line


def test_user_errors_are_one_line(tmp_path, capsys):
    cases = [
        (["traces", "--kind", "tree", "--problems", "p", "--out", "o"], "invalid choice: 'tree'"),
        (["traces", "--kind", "apr", "--problems", str(tmp_path / "none.jsonl"), "--out", "o"], "none.jsonl"),
        (["problems", "--count", "many", "--out", "o"], "--count"),
        (["problems", "--count", "3", "--numbers", "9", "--out", str(tmp_path / "o")], "num_inputs"),
        ([], "command"),
        (["build", "--config.data.vocab_sise=3"], "did you mean config.data.vocab_size"),
        (["build", "--config=" + str(tmp_path / "nope.py")], "config file not found"),
    ]
    for argv, message in cases:
        code, _, err = _run(capsys, *argv)
        assert code == 2 and message in _one_error_line(err), (argv, err)


def test_build_prints_the_cache_dir_and_reuses_it(tmp_path, capsys):
    argv = [
        "build",
        f"--config={REPO}/configs/default.py",
        f"--config.data.dir={tmp_path}",
        "--config.task.num_train=60",
        "--config.task.num_validation=10",
        "--config.task.num_test=10",
        "--config.data.num_workers=1",
    ]
    code, out, _ = _run(capsys, *argv)
    cache = out.strip().splitlines()[-1]
    assert code == 0 and os.path.isfile(os.path.join(cache, "info.json"))
    assert cache.startswith(str(tmp_path))
    code, out, _ = _run(capsys, *argv)
    assert code == 0 and "reusing" in out and out.strip().splitlines()[-1] == cache


def test_module_entry_point_exit_code(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("not json\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "apr_jax.data",
            "traces",
            "--kind",
            "apr",
            "--problems",
            str(path),
            "--out",
            str(tmp_path / "t.jsonl"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {path}:1: bad JSON (Expecting value)"
