"""Engine fuzzing: random weights, random limits and random sampling settings
must always give well-formed thread trees that respect every limit.

One toy model structure and three sampling settings are compiled once for the
module; weights, prompts, keys and the traced limits vary per example."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apr_jax import threads as threads_lib
from apr_jax.decode.engine import Engine, EngineConfig, to_thread_trees
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.sampler import SamplingConfig
from apr_jax.decode.toy_model import ToyConfig, init_params, make_toy_model

IDS = ProtocolIds()
TOY = ToyConfig(vocab_size=24, d_model=16, num_layers=1, num_heads=2, d_ff=32)
BASE_MODEL = make_toy_model(TOY, jax.random.key(0))  # one decode_fn: compiled once per setting
SAMPLINGS = (SamplingConfig(0.0, 1.0), SamplingConfig(1.0, 1.0), SamplingConfig(1.5, 0.8))
MAX_CHILDREN, MAX_THREADS, MAX_CONTEXT, SAMPLES = 3, 8, 40, 2
RESERVED = list(range(IDS.child, IDS.trunc + 1))  # the protocol's reserved tokens


class IdsAsText:
    def decode(self, ids):
        return " ".join(str(i) for i in ids)


def random_model(seed: int, protocol_boost: float):
    """Random weights whose logits favour the reserved tokens by a random
    offset, so spawns, returns and stray tags happen often, and EOS seldom."""
    params = init_params(TOY, jax.random.key(seed))
    bias_V = np.zeros(TOY.vocab_size, np.float32)
    bias_V[RESERVED] = protocol_boost * np.random.default_rng(seed).uniform(0.5, 1.0, len(RESERVED))
    bias_V[IDS.eos] = -protocol_boost
    return dataclasses.replace(BASE_MODEL_BIASED, params=(params, jnp.asarray(bias_V)))


def _biased_decode(params_and_bias, tokens_BxT, positions_BxT, cache, lanes_B, kv_len):
    params, bias_V = params_and_bias
    logits, cache = BASE_MODEL.decode_fn(params, tokens_BxT, positions_BxT, cache, lanes_B, kv_len)
    return logits + bias_V, cache


BASE_MODEL_BIASED = dataclasses.replace(BASE_MODEL, decode_fn=_biased_decode)


@pytest.mark.slow
@settings(max_examples=7, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**20),
    boost=st.sampled_from([0.0, 2.0, 4.0]),
    sampling=st.sampled_from(SAMPLINGS),
    max_rounds=st.integers(0, 3),
    max_depth=st.integers(0, 2),
    tokens_per_thread=st.integers(1, 24),
    small_pool=st.booleans(),
    prompts=st.lists(st.lists(st.integers(13, TOY.vocab_size - 1), min_size=1, max_size=7), min_size=2, max_size=2),
)
def test_random_models_give_well_formed_trees_within_limits(
    seed, boost, sampling, max_rounds, max_depth, tokens_per_thread, small_pool, prompts
):
    cfg = EngineConfig(
        max_children=MAX_CHILDREN,
        max_rounds=max_rounds,
        max_depth=max_depth,
        tokens_per_thread=tokens_per_thread,
        max_context=MAX_CONTEXT,
        sampling=sampling,
        samples_per_problem=SAMPLES,
        max_threads=MAX_THREADS,
        prefill_chunk=4,
        row_buckets=1,
        kv_buckets=1,
    )
    if small_pool:  # one sample in flight at a time
        cfg = dataclasses.replace(cfg, lanes=cfg.lanes_per_group)
    out = Engine(random_model(seed, boost), cfg, IDS).run(prompts, jax.random.key(seed))
    assert len(out.samples) == len(prompts)
    for n, per_problem in enumerate(out.samples):
        assert len(per_problem) == SAMPLES
        for sample in per_problem:
            check_sample(sample, prompts[n], cfg)
    trees = to_thread_trees(out, IdsAsText(), [{"numbers": [1], "target": 1}] * len(prompts))
    for tree in trees:
        tree.validate()
        assert threads_lib.ThreadTree.from_json(tree.to_json()) == tree


def check_sample(sample, prompt, cfg):
    threads = sample.threads
    assert 1 <= len(threads) <= MAX_THREADS
    root = threads[0]
    assert root.parent == -1 and root.tokens[: 1 + len(prompt)] == [IDS.bos] + prompt
    assert root.roles[: 1 + len(prompt)] == ["prompt"] * (1 + len(prompt))
    for i, t in enumerate(threads):
        assert t.stop in threads_lib.STOPS and t.stop != "running", (i, t.stop)
        assert len(t.tokens) == len(t.roles) <= MAX_CONTEXT
        assert t.written == t.roles.count("model") <= cfg.tokens_per_thread
        assert t.rounds <= cfg.max_rounds and t.depth <= cfg.max_depth
        if i:
            assert t.tokens[:2] == [IDS.bos, IDS.child] and 0 <= t.parent < i
            assert t.depth == threads[t.parent].depth + 1
            assert i in threads[t.parent].children
        if t.stop == "eos":
            assert t.tokens[-1] == IDS.eos and t.roles[-1] == "model"
        if t.stop == "return":
            assert i > 0 and t.tokens[-1] == IDS.return_close
        # Join blocks are written only by the engine, framed by <join> ... </join>.
        joins = [k for k, r in enumerate(t.roles) if r == "join"]
        if joins:
            assert t.tokens[joins[0]] == IDS.join_open
            assert t.roles[joins[0] - 1] == "model" and t.tokens[joins[0] - 1] == IDS.spawn_close
    assert all(0 <= c <= MAX_CHILDREN for c in sample.children_per_spawn)
    assert sample.written_tokens == sum(t.written for t in threads)
    assert sample.sequential_tokens <= sample.written_tokens


def test_same_key_same_output():
    cfg = EngineConfig(
        max_children=MAX_CHILDREN,
        max_rounds=2,
        max_depth=1,
        tokens_per_thread=16,
        max_context=MAX_CONTEXT,
        sampling=SAMPLINGS[2],
        samples_per_problem=SAMPLES,
        max_threads=MAX_THREADS,
        row_buckets=2,
        kv_buckets=1,
    )
    engine = Engine(random_model(7, 6.0), cfg, IDS)
    a = engine.run([[13, 14], [15]], jax.random.key(3))
    b = engine.run([[13, 14], [15]], jax.random.key(3))
    assert [[s.threads for s in p] for p in a.samples] == [[s.threads for s in p] for p in b.samples]
