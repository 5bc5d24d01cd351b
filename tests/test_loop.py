"""The shared training loop with a scripted task: the NaN policy (each bad
step counted once, the error names the step and the last good checkpoint),
the check one step late, and SIGTERM (saved, resumed where it stopped)."""

import json
import os
import signal

import optax
import pytest
from flax import nnx

from apr_jax import train_state
from apr_jax.loop import LoopSettings, TrainingError, run_loop


class Counter:
    """A data stream whose position is checkpointed."""

    def __init__(self):
        self.position = 0

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = json.loads(state)["position"]

    def start_prefetch(self):  # grain's restore calls it
        pass


class ScriptedTask:
    nan_label = "scripted "
    nan_advice = "try something else"

    def __init__(self, bad_steps=(), check_lag=1, signal_at=None, start=None):
        model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
        _, self.state = train_state.split(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))
        self.data = Counter()
        self.bad_steps, self.check_lag, self.signal_at = set(bad_steps), check_lag, signal_at
        self.start = start or {}

    def meta(self):
        return {}

    def describe(self):
        return "scripted task"

    def start_row(self):
        return {**self.start, "warnings": ["scripted warning"]} if self.start else {}

    def step(self):
        self.data.position += 1
        if self.data.position == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"finite": self.data.position not in self.bad_steps}

    def row(self, step, metrics):
        return {"position": float(self.data.position)}


def settings(**changes):
    base = dict(steps=6, log_every=2, checkpoint_every=2, keep_checkpoints=5, on_nan="skip",
                time_limit_minutes=0.0)
    return LoopSettings(**{**base, **changes})


def logged(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("check_lag", [0, 1])
def test_skip_counts_every_bad_step_once(tmp_path, check_lag):
    result = run_loop(ScriptedTask(bad_steps=(2, 3), check_lag=check_lag), settings(), str(tmp_path))
    assert result.step == 6 and not result.preempted
    assert [r.get("skipped_steps", 0) for r in logged(tmp_path)] == [1, 2, 2]


@pytest.mark.parametrize("check_lag", [0, 1])
def test_stop_names_the_step_and_the_last_good_checkpoint(tmp_path, check_lag):
    with pytest.raises(TrainingError) as e:
        run_loop(ScriptedTask(bad_steps=(5,), check_lag=check_lag), settings(on_nan="stop"), str(tmp_path))
    assert str(e.value) == ("scripted loss or gradient became NaN/Inf at step 5; the update was discarded "
                            "and training stopped; last good checkpoint: 4; try something else")


def test_sigterm_saves_and_the_next_run_resumes_there(tmp_path, capsys):
    first = run_loop(ScriptedTask(signal_at=3), settings(), str(tmp_path))
    assert first.preempted and first.step == 3
    assert "received signal 15: saved step 3" in capsys.readouterr().out
    task = ScriptedTask()
    second = run_loop(task, settings(), str(tmp_path))
    assert second.step == 6 and not second.preempted and task.data.position == 6
    assert [r["step"] for r in logged(tmp_path)] == [2, 4, 6]


def test_start_row_is_logged_at_step_zero_of_a_fresh_run_only(tmp_path, capsys):
    start = {"held_out": 0.5}
    run_loop(ScriptedTask(signal_at=3, start=start), settings(), str(tmp_path))
    assert "warning: scripted warning" in capsys.readouterr().out
    run_loop(ScriptedTask(start=start), settings(), str(tmp_path))
    rows = logged(tmp_path)
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    assert rows[0]["held_out"] == 0.5 and rows[0]["warnings"] == ["scripted warning"]


def test_stop_at_ends_early_and_keeps_the_schedule(tmp_path):
    assert run_loop(ScriptedTask(), settings(), str(tmp_path), stop_at=4).step == 4
    assert run_loop(ScriptedTask(), settings(), str(tmp_path)).step == 6
