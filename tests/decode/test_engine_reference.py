"""The production engine against the reference loop (tests/reference_engine_loop.py):
greedy decoding of the default config's test-split prompts gives the same
threads token for token, whatever the lane pool, prefill chunk and buckets.

The model is a random toy decoder pushed towards the protocol tokens, so it
spawns, returns and hits limits often. Chunked prefill reorders float32 sums,
so where a thread diverges the test requires a near-tie: the reference's two
best logits at that token within ``TIE``."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import reference_engine_loop as ref

from apr_jax.config.trace import TraceConfig
from apr_jax.data.tokenizer import Tokenizer
from apr_jax.decode.engine import Engine, EngineConfig
from apr_jax.decode.model_api import DecodeModel
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.toy_model import ToyConfig, init_cache, init_params
from apr_jax.decode.toy_model import decode as toy_decode
from apr_jax.tasks.countdown.problems import make_splits
from apr_jax.tasks.countdown.render import problem_prompt
from apr_jax.tasks.countdown.traces import make_trace
from configs.default import get_config

NUM_PROBLEMS = 16
SEEDS = (2, 5, 6, 8)  # between them: children that return, end with eos, hit the token limit
TIE = 1e-3
TOY = ToyConfig(vocab_size=96, d_model=32, num_layers=2, num_heads=2, d_ff=64)
CFG = EngineConfig(
    max_children=4,
    max_rounds=2,
    max_depth=1,
    tokens_per_thread=24,
    max_context=64,
    samples_per_problem=2,
    row_buckets=1,
    kv_buckets=1,
)


def _decode(params, tokens, positions, cache, lanes=None, kv_len=None):
    """The toy decoder plus a random bias on the protocol tokens chosen by the
    input token, so greedy threads spawn, return, end and hit limits."""
    logits, cache = toy_decode(TOY, params["toy"], tokens, positions, cache, lanes, kv_len)
    return logits + params["bias_VxV"][tokens], cache


def _init_cache(lanes, length):
    return init_cache(TOY, lanes, length)


def _reference_decode(params, tokens, positions, cache):
    return _decode(params, tokens, positions, cache)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    c = get_config()
    t = c.task
    splits = make_splits(
        200,
        0,
        NUM_PROBLEMS,
        num_inputs=t.num_inputs,
        min_number=t.min_number,
        max_number=t.max_number,
        min_target=t.min_target,
        max_target=t.max_target,
        seed=t.seed,
    )
    trace_cfg = TraceConfig(style=c.trace.style)
    texts = [th.text for p in splits["train"] for th in make_trace(p, trace_cfg).threads]
    tok = Tokenizer.train(texts, c.data.vocab_size, tmp_path_factory.mktemp("tok") / "t.model")
    ids = ProtocolIds.from_tokenizer(tok)
    prompts = [tok.encode(problem_prompt(p, c.trace.style)) for p in splits["test"]]
    protocol = [ids.spawn_open, ids.spawn_close, ids.sep, ids.return_open, ids.return_close, ids.eos]
    models = []
    for seed in SEEDS:
        bias_VxV = np.zeros((TOY.vocab_size, TOY.vocab_size), np.float32)
        bias_VxV[:, protocol] = np.random.default_rng(seed).uniform(0, 3.5, (TOY.vocab_size, len(protocol)))
        models.append(
            DecodeModel(
                {"toy": init_params(TOY, jax.random.key(seed)), "bias_VxV": jnp.asarray(bias_VxV)}, _decode, _init_cache
            )
        )
    return ids, prompts, [(m, reference_threads(m, ids, prompts)) for m in models]


def reference_threads(model, ids, prompts):
    """[problem][sample] -> list of (tokens, roles, stop, parent) from the reference loop."""
    S, L, K = CFG.threads_per_sample, CFG.max_context, CFG.samples_per_problem
    groups = len(prompts) * K
    buf = np.full((groups * S, L), ids.pad, np.int32)
    length = np.zeros((groups * S,), np.int32)
    for n, prompt in enumerate(prompts):
        for k in range(K):
            row = (n * K + k) * S
            buf[row, : 1 + len(prompt)] = [ids.bos] + prompt
            length[row] = 1 + len(prompt)
    spec = ref.LoopSpec(
        ids=ids,
        slots=S,
        max_children=CFG.max_children,
        max_context=L,
        prefill_width=max(map(len, prompts)) + 1,
        sampling=CFG.sampling,
    )
    limits = ref.Limits(*(jnp.int32(v) for v in (CFG.max_rounds, CFG.max_depth, CFG.tokens_per_thread, S * L)))
    s = ref.run_loop(
        model.params,
        jnp.asarray(buf),
        jnp.asarray(length),
        jnp.ones((groups,), bool),
        model.init_cache(groups * S, L),
        jax.random.key(0),
        limits,
        spec=spec,
        decode_fn=_reference_decode,
    )
    s = jax.device_get(s)
    out = []
    for n in range(len(prompts)):
        per = []
        for k in range(K):
            g = n * K + k
            rows = range(g * S, g * S + int(s["next_free"][g]))
            per.append(
                [
                    (
                        s["buf"][r, : s["length"][r]].tolist(),
                        s["role"][r, : s["length"][r]].tolist(),
                        int(s["stop"][r]),
                        int(s["parent"][r]),
                    )
                    for r in rows
                ]
            )
        out.append(per)
    return out


def assert_same_or_near_tie(model, expected, got):
    tokens, roles, stop, parent = expected
    role_ids = {"prompt": 0, "model": 1, "join": 2}
    if got.tokens == tokens:
        assert [role_ids[r] for r in got.roles] == roles
        assert (got.parent, ref.threads_lib.STOPS[stop]) == (parent, got.stop)
        return
    j = next(i for i, (a, b) in enumerate(zip(got.tokens + [-1], tokens + [-1])) if a != b)
    assert roles[j] == 1, f"a thread diverges at an engine-written token {j}"
    logits = model.decode_fn(
        model.params, jnp.asarray([tokens[:j]]), jnp.arange(j)[None], model.init_cache(1, len(tokens))
    )[0][0, -1]
    top2 = np.sort(np.asarray(logits))[-2:]
    assert top2[1] - top2[0] < TIE, f"divergence at token {j} is not a near-tie: {top2}"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"prefill_chunk": 2, "long_prefill_chunks": (8,), "row_buckets": 3, "kv_buckets": 2},
        {"prefill_chunk": 4, "kv_buckets": 3, "split_by_kv_length": True},
        {"lanes": 5, "prefill_chunk": 64},  # one sample in flight at a time
        {"lanes": 12, "row_buckets": 2, "kv_buckets": 2, "batch_problems": 7, "prefill_chunk": 1},
    ],
)
def test_greedy_threads_equal_the_reference_loop(setting, changes):
    ids, prompts, runs = setting
    stops = set()
    for model, expected in runs:
        out = Engine(model, dataclasses.replace(CFG, **changes), ids).run(prompts)
        for n, per_problem in enumerate(out.samples):
            for k, sample in enumerate(per_problem):
                assert len(sample.threads) == len(expected[n][k])
                for got, want in zip(sample.threads, expected[n][k]):
                    assert_same_or_near_tie(model, want, got)
                    stops.add((got.parent >= 0, got.stop))
    assert {(True, "return"), (True, "eos"), (True, "token_limit"), (False, "eos")} <= stops
