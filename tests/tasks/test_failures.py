"""Failure classes of unsolved APR answers, on hand-written thread trees."""

import json

from apr_jax.failures import main
from apr_jax.tasks.countdown.failures import breakdown, child_start, classify

NUMBERS, TARGET = [16, 12, 19], 23  # 19-12=7, 16+7=23


def row(*messages, solved=False):
    threads = [{"parent": -1, "segments": [{"role": "prompt", "text": "16 12 19 -> 23\n"}]}]
    threads += [{"parent": 0, "segments": [{"role": "prompt", "text": m}]} for m in messages]
    return {"numbers": NUMBERS, "target": TARGET, "solved": solved, "tree": {"threads": threads}}


def test_child_start_checks_arithmetic_numbers_and_solvability():
    assert child_start("<child>19-12=7 | 16 7 -> 23", NUMBERS, TARGET) == "solvable"
    assert child_start("<child>16*12=192 | 19 192 -> 23", NUMBERS, TARGET) == "unsolvable"
    assert child_start("<child>19-12=2 | 16 2 -> 23", NUMBERS, TARGET) == "error"  # wrong arithmetic
    assert child_start("<child>19-12=7 | 16 8 -> 23", NUMBERS, TARGET) == "error"  # wrong numbers left
    assert child_start("<child>19-12=7 | 16 7 -> 24", NUMBERS, TARGET) == "error"  # wrong target
    assert child_start("<child>12-12=0 | 16 0 -> 23", NUMBERS, TARGET) == "error"  # 12 used twice
    assert child_start("<child>c4 19-12=7 | 16 7 -> 23", NUMBERS, TARGET) == "solvable"  # prefix
    assert child_start("<child>garbage", NUMBERS, TARGET) == "error"


def test_classes_take_the_first_that_applies():
    good, wrong, dead = (
        "<child>19-12=7 | 16 7 -> 23",
        "<child>19-12=2 | 16 2 -> 23",
        "<child>16*12=192 | 19 192 -> 23",
    )
    assert classify(row(good, solved=True)) is None
    assert classify(row()) == "no spawn"
    assert classify(row(wrong, good)) == "solvable child"
    assert classify(row(wrong, dead)) == "spawn errors"
    assert classify(row(dead, dead)) == "unsolvable choices"
    table = breakdown([row(good, solved=True), row(wrong), {**row(dead), "model": "m@1", "setting": "s"}])
    assert table["results"] == {
        "problems": 2,
        "solved": 1,
        "no spawn": 0,
        "solvable child": 0,
        "spawn errors": 1,
        "unsolvable choices": 0,
    }
    assert table["m@1 s"]["unsolvable choices"] == 1


def test_command_prints_the_table_and_one_line_errors(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [row(solved=True), row("<child>19-12=2 | 16 2 -> 23")]))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "spawn errors" in out and "1 ( 50.0%)" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"solved": false}\n')
    assert main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad} is not a results file") and len(err.splitlines()) == 1
    assert main([str(tmp_path / "missing.jsonl")]) == 1
    assert "cannot read" in capsys.readouterr().err
