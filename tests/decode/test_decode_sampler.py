"""Sampler: greedy / temperature / top-p, and the plain batched generator."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apr_jax.decode import sampler
from apr_jax.decode.sampler import SamplingConfig, generate, sample_tokens
from apr_jax.decode.toy_model import ToyConfig, full_forward_logits, make_toy_model


@pytest.fixture(scope="module")
def model():
    return make_toy_model(ToyConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=2, d_ff=64), jax.random.key(1))


def test_config_validation():
    assert SamplingConfig().greedy
    assert not SamplingConfig(temperature=0.7).greedy
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(temperature=1.0, top_p=0.0)


def test_greedy_and_tiny_top_p_equal_argmax():
    logits = jax.random.normal(jax.random.key(0), (16, 50))
    argmax = np.asarray(jnp.argmax(logits, -1))
    np.testing.assert_array_equal(sample_tokens(jax.random.key(3), logits, SamplingConfig()), argmax)
    tiny = SamplingConfig(temperature=1.0, top_p=1e-6)
    np.testing.assert_array_equal(sample_tokens(jax.random.key(3), logits, tiny), argmax)


def test_temperature_sampling_is_deterministic_given_key():
    logits = jnp.zeros((256, 10))
    cfg = SamplingConfig(temperature=1.0)
    a = sample_tokens(jax.random.key(5), logits, cfg)
    b = sample_tokens(jax.random.key(5), logits, cfg)
    c = sample_tokens(jax.random.key(6), logits, cfg)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_top_p_keeps_only_the_nucleus():
    probs = jnp.asarray([0.5, 0.3, 0.15, 0.05])
    logits = jnp.broadcast_to(jnp.log(probs), (4000, 4))
    draws = np.asarray(sample_tokens(jax.random.key(0), logits, SamplingConfig(1.0, top_p=0.6)))
    assert set(np.unique(draws)) == {0, 1}
    assert abs(np.mean(draws == 0) - 0.5 / 0.8) < 0.05


def test_temperature_scales_the_distribution():
    logits = jnp.broadcast_to(jnp.log(jnp.asarray([0.8, 0.2])), (8000, 2))
    hot = np.asarray(sample_tokens(jax.random.key(1), logits, SamplingConfig(temperature=1e6)))
    cold = np.asarray(sample_tokens(jax.random.key(1), logits, SamplingConfig(temperature=1.0)))
    assert abs(np.mean(hot == 0) - 0.5) < 0.03
    assert abs(np.mean(cold == 0) - 0.8) < 0.03


def test_bucket_length():
    assert [sampler.bucket_length(n) for n in (1, 8, 9, 16, 17, 100)] == [8, 8, 16, 16, 32, 128]


def test_generate_matches_step_by_step_full_forward(model):
    prompts = [[2, 5, 9, 14], [2, 7], [2, 30, 31, 32, 33, 34, 35, 36, 37, 38]]
    out = generate(model, prompts, max_new_tokens=12, stop_ids=(3,))
    width = 32  # causal: right padding does not change earlier logits
    forward = jax.jit(lambda params, tokens: full_forward_logits(dataclasses.replace(model, params=params), tokens))
    for row, prompt in enumerate(prompts):
        seq = list(prompt)
        for _ in range(int(out.lengths[row])):
            padded = np.zeros((1, width), np.int32)
            padded[0, : len(seq)] = seq
            logits = forward(model.params, jnp.asarray(padded))
            seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
            if seq[-1] == 3:
                break
        np.testing.assert_array_equal(out.tokens[row, : out.lengths[row]], seq[len(prompt) :])


def test_generate_stops_rows_at_stop_tokens(model):
    prompts = [[2, 5, 9, 14], [2, 7]]
    free = generate(model, prompts, max_new_tokens=8, stop_ids=())
    assert list(free.lengths) == [8, 8]
    stop = int(free.tokens[0, 2])  # row 0's third token becomes a stop token
    out = generate(model, prompts, max_new_tokens=8, stop_ids=(stop,))
    first = int(np.argmax(free.tokens[0] == stop))
    assert out.lengths[0] == first + 1
    np.testing.assert_array_equal(out.tokens[0, : first + 1], free.tokens[0, : first + 1])
    assert np.all(out.tokens[0, first + 1 :] == 0)


def test_generate_is_reproducible_with_sampling(model):
    cfg = SamplingConfig(temperature=1.0, top_p=0.9)
    a = generate(model, [[2, 5], [2, 6, 7]], 10, sampling=cfg, key=jax.random.key(2))
    b = generate(model, [[2, 5], [2, 6, 7]], 10, sampling=cfg, key=jax.random.key(2))
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_generate_rejects_bad_input(model):
    with pytest.raises(ValueError, match="non-empty list"):
        generate(model, [], 4)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[2], []], 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [[2]], 0)
    with pytest.raises(ValueError, match="not a DecodeModel"):
        generate(object(), [[2]], 4)
