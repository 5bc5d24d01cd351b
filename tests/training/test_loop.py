"""The shared training loop with a scripted task: the NaN policy (each bad
step counted once, the error names the step and the last good checkpoint),
the check one step late, SIGTERM (saved, resumed where it stopped), and the
time limit on a fake clock (the final save, the step budget it plans)."""

import json
import os
import signal

import optax
import pytest
from flax import nnx

from apr_jax.config.sections import TrainConfig
from apr_jax.runtime.checkpoint import Checkpointer
from apr_jax.training import train_state
from apr_jax.training.loop import LoopSettings, TrainingError, run_loop
from apr_jax.training.optim import learning_rate_schedule
from apr_jax.training.step_budget import PROBE_STEPS, SAFETY, read_budget


class FakeClock:
    """Seconds that pass only when a scripted step says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


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

    def __init__(self, bad_steps=(), check_lag=1, signal_at=None, start=None, clock=None, seconds_per_step=0.0):
        model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
        _, self.state = train_state.split(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))
        self.data = Counter()
        self.bad_steps, self.check_lag, self.signal_at = set(bad_steps), check_lag, signal_at
        self.start = start or {}
        self.clock, self.seconds_per_step = clock, seconds_per_step
        self.schedules = {}  # step -> the schedule_steps the loop gave it

    def meta(self):
        return {}

    def describe(self):
        return "scripted task"

    def start_row(self):
        return {**self.start, "warnings": ["scripted warning"]} if self.start else {}

    def step(self):
        self.schedules[self.data.position] = self.schedule_steps
        if self.clock is not None:
            self.clock.now += self.seconds_per_step
        self.data.position += 1
        if self.data.position == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"finite": self.data.position not in self.bad_steps}

    def row(self, step, metrics):
        return {"position": float(self.data.position)}


def settings(**changes):
    base = dict(steps=6, log_every=2, checkpoint_every=2, keep_checkpoints=5, on_nan="skip", time_limit_minutes=0.0)
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
    assert str(e.value) == (
        "scripted loss or gradient became NaN/Inf at step 5; the update was discarded "
        "and training stopped; last good checkpoint: 4; try something else"
    )


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


def test_a_run_stopped_off_a_log_step_still_checks_its_last_step(tmp_path):
    with pytest.raises(TrainingError, match="at step 5;"):
        run_loop(ScriptedTask(bad_steps=(5,)), settings(steps=10, on_nan="stop"), str(tmp_path), stop_at=5)


def test_the_time_limit_saves_the_step_it_stopped_at(tmp_path, capsys):
    clock = FakeClock()  # 60 s per step, a 2.5-minute limit: stopped after step 3, before the probe ends
    task = ScriptedTask(clock=clock, seconds_per_step=60.0)
    result = run_loop(
        task, settings(steps=100, checkpoint_every=50, time_limit_minutes=2.5), str(tmp_path), clock=clock
    )
    assert result.out_of_time and result.step == 3 and result.finished
    assert "time limit of 2.5 min reached at step 3" in capsys.readouterr().out
    assert Checkpointer(str(tmp_path), keep=5).steps() == [3]
    assert run_loop(ScriptedTask(), settings(steps=4), str(tmp_path)).step == 4  # resumes there


def test_a_time_limit_plans_a_step_budget_that_the_schedule_anneals_at(tmp_path):
    clock = FakeClock()  # 1 s per step, 60 s: the first step and the probe take 1 + PROBE_STEPS s
    task = ScriptedTask(clock=clock, seconds_per_step=1.0)
    result = run_loop(task, settings(steps=100, time_limit_minutes=1.0), str(tmp_path), clock=clock)
    probed = 1 + PROBE_STEPS
    planned = probed + int(SAFETY * (60 - probed))
    assert not result.out_of_time and result.step == result.planned_steps == planned < 100
    budget = read_budget(str(tmp_path))
    assert (budget.steps, budget.decided_at, budget.configured_steps) == (planned, probed, 100)
    assert budget.seconds_per_step == pytest.approx(1.0)
    assert [task.schedules[i] for i in (0, probed - 1, probed, planned - 1)] == [100, 100, planned, planned]
    assert logged(tmp_path)[-1]["step"] == planned  # the last step is logged

    # The schedule's learning rate reaches its end value at the budget, not at train.steps.
    lr = learning_rate_schedule(TrainConfig(steps=100, warmup_steps=5, lr=1.0, min_lr_ratio=0.1))
    assert float(lr(planned, budget.steps)) == pytest.approx(0.1)
    assert float(lr(planned, 100)) > 0.5


def test_a_resumed_run_keeps_the_step_budget_it_planned(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    clock = FakeClock()
    reference = ScriptedTask(clock=clock, seconds_per_step=1.0)
    run_loop(reference, settings(steps=100, time_limit_minutes=1.0), str(whole), clock=clock)
    clock = FakeClock()
    first = ScriptedTask(clock=clock, seconds_per_step=1.0)
    assert run_loop(first, settings(steps=100, time_limit_minutes=1.0), str(cut), clock=clock, stop_at=30).step == 30
    clock = FakeClock()  # a faster rerun still trains to the budget planned, not to train.steps
    second = ScriptedTask(clock=clock, seconds_per_step=0.1)
    result = run_loop(second, settings(steps=100, time_limit_minutes=1.0), str(cut), clock=clock)
    assert result.step == read_budget(str(whole)).steps
    assert {**first.schedules, **second.schedules} == reference.schedules


def test_without_a_time_limit_nothing_is_planned(tmp_path):
    task = ScriptedTask()
    result = run_loop(task, settings(steps=20), str(tmp_path))
    assert result.step == result.planned_steps == 20 and read_budget(str(tmp_path)) is None
    assert set(task.schedules.values()) == {20}
