"""The RL prompt stream: deterministic order over epochs, conditioning, checkpoint state."""

import json

import jax
import numpy as np
import pytest

from apr_jax.rl.prompts import PromptStream
from apr_jax.tasks.countdown.problems import Problem
from apr_jax.tasks.countdown.task import CountdownTask

COUNTDOWN = CountdownTask({}, {"style": "terse"})

PROBLEMS = [Problem((i, i + 1, 2), 10 + i) for i in range(7)]


def test_every_problem_once_per_epoch_and_state_round_trip():
    stream = PromptStream(PROBLEMS, seed=3, prompt=COUNTDOWN.prompt)
    first, asked = stream.take(5)
    assert asked == [None] * 5
    second, _ = stream.take(5)  # crosses into epoch 1
    assert sorted(p.target for p in first + second[:2]) == [p.target for p in PROBLEMS]
    key = stream.next_key()
    state = json.dumps(stream.get_state()).encode()

    resumed = PromptStream(PROBLEMS, seed=3, prompt=COUNTDOWN.prompt)
    resumed.set_state(state)
    assert stream.take(4) == resumed.take(4)
    np.testing.assert_array_equal(jax.random.key_data(stream.next_key()), jax.random.key_data(resumed.next_key()))
    assert not np.array_equal(jax.random.key_data(key), jax.random.key_data(stream.next_key()))


def test_conditioned_prompts_and_errors():
    stream = PromptStream(PROBLEMS, seed=0, prompt=COUNTDOWN.prompt, condition_kind="apr", condition_values=(2, 4))
    problems, asked = stream.take(6)
    assert set(asked) <= {2, 4}
    assert (
        stream.prompt_text(problems[0], 4) == f"c4 {' '.join(map(str, problems[0].numbers))} -> {problems[0].target}\n"
    )
    assert all(t.startswith("c2 ") for t in stream.longest_prompt_texts())
    with pytest.raises(ValueError, match="saved prompt stream has 3 problems"):
        stream.set_state({"epoch": 0, "position": 0, "num_problems": 3, "key": [0, 0]})
    with pytest.raises(ValueError, match="at least one problem"):
        PromptStream([], seed=0, prompt=COUNTDOWN.prompt)
