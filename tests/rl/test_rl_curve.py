"""The held-out accuracy curve read back from an RL run's metrics.jsonl."""

import json
import os

from apr_jax.rl.curve import curves, main


def test_curve_prints_every_evaluation_and_writes_the_plot(tmp_path, capsys):
    rows = [
        {"step": 0, "eval_accuracy": 0.4},
        {"step": 1, "reward": 0.3, "spawned": 0.9},
        {"step": 2, "reward": 0.5, "spawned": 0.8, "eval_accuracy": 0.45},
    ]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "rew')  # a line cut short
    assert curves(rows) == {
        "eval_accuracy": [(0, 0.4), (2, 0.45)],
        "reward": [(1, 0.3), (2, 0.5)],
        "spawned": [(1, 0.9), (2, 0.8)],
    }
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["step     0  held-out accuracy 40.0%", "step     2  held-out accuracy 45.0%"]
    assert os.path.getsize(tmp_path / "rl_curve.png") > 1000


def test_a_run_without_evaluations_is_one_line(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.3}) + "\n")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {tmp_path}/metrics.jsonl has no held-out evaluations (eval_accuracy); "
        f"train with config.rl.eval_every > 0"
    )
