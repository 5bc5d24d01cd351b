"""The multi-thread spawn/join engine, driven by a scripted model (exact token
ids) and by a random tiny model (robustness)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.scripted import record_history

from apr_jax import threads as threads_lib
from apr_jax.decode import engine_loop
from apr_jax.decode.engine import Engine, EngineConfig, to_thread_trees
from apr_jax.decode.model_api import DecodeModel
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.decode.sampler import SamplingConfig, generate
from apr_jax.decode.toy_model import ToyConfig
from apr_jax.decode.toy_model import decode as toy_decode
from apr_jax.decode.toy_model import init_cache as toy_init_cache
from apr_jax.decode.toy_model import init_params as toy_init_params

BOS, EOS, CHILD, SO, SC, SEP, JO, JC, RO, RC, TR = 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
FILL = 13  # what a scripted thread writes when its script says nothing
V, P = 64, 64
ROOT = [20, 21]  # root prompt; scripts of the root are keyed by 20


# ---- scripted model --------------------------------------------------------
# The cache is each lane's token history. A thread is keyed by the first token of
# its prompt (the root) or of its spawn message (a child; <child> itself for an
# empty message); after the token at position p it emits table[key, p].


def _scripted_decode(table, tokens_BxT, positions_BxT, hist, lanes_B, kv_len):
    hist, mine = record_history(hist, tokens_BxT, positions_BxT, lanes_B)
    key_BxT = jnp.where((mine[:, 1:2] == CHILD) & (positions_BxT >= 2), mine[:, 2:3], mine[:, 1:2])
    next_BxT = table[key_BxT, jnp.clip(positions_BxT, 0, P - 1)]
    return jax.nn.one_hot(next_BxT, V) * 10.0, hist


def _scripted_cache(batch, max_len):
    return jnp.zeros((batch, max_len), jnp.int32)


def scripted(scripts):
    """scripts[key][p] = tokens: emit tokens[i] after position p + i."""
    table = np.full((V, P), FILL, np.int32)
    for key, parts in scripts.items():
        for start, toks in parts.items():
            table[key, start : start + len(toks)] = toks
    return DecodeModel(jnp.asarray(table), _scripted_decode, _scripted_cache)


BASE = EngineConfig(
    max_children=2,
    max_rounds=2,
    max_depth=2,
    tokens_per_thread=12,
    max_context=32,
    max_threads=8,
    row_buckets=1,
    kv_buckets=1,
    batch_problems=0,
)


def run_scripted(scripts, **limits):
    out = Engine(scripted(scripts), dataclasses.replace(BASE, **limits)).run([ROOT])
    return out.samples[0][0]


def roles_of(thread):
    return "".join(r[0] for r in thread.roles)  # p / m / j per token


# ---- scripted scenarios ----------------------------------------------------
def test_spawn_and_join_exact_tokens():
    s = run_scripted(
        {20: {2: [14, SO, 30, SEP, 31, SC], 14: [16, EOS]}, 30: {2: [15, RO, 40, RC]}, 31: {2: [RO, 41, 42, RC]}}
    )
    root, a, b = s.threads
    assert root.tokens == [BOS, 20, 21, 14, SO, 30, SEP, 31, SC, JO, 40, SEP, 41, 42, JC, 16, EOS]
    assert roles_of(root) == "ppp" + "m" * 6 + "j" * 6 + "mm"
    assert a.tokens == [BOS, CHILD, 30, 15, RO, 40, RC] and roles_of(a) == "pppmmmm"
    assert b.tokens == [BOS, CHILD, 31, RO, 41, 42, RC]
    assert (root.stop, a.stop, b.stop) == ("eos", "return", "return")
    assert root.children == [1, 2] and a.parent == b.parent == 0
    assert (a.depth, a.spawn_round) == (1, 0)
    assert s.children_per_spawn == [2]
    assert s.written_tokens == 8 + 4 + 4
    assert s.sequential_tokens == 8 + 4
    assert s.max_context_used == 17
    assert all(v == 0 for v in s.limits_hit.values())


def test_compile_is_timed_apart_once_per_batch_shape():
    script = {20: {2: [14, SO, 30, SC], 14: [16, EOS]}, 30: {2: [RO, 40, RC]}}
    engine = Engine(scripted(script), BASE)
    first, second = engine.run([ROOT]), engine.run([ROOT])
    third = engine.run([ROOT, ROOT])  # another batch shape: compiled once more
    assert first.compile_s > 0 and second.compile_s == 0 and third.compile_s > 0
    assert [t.tokens for t in first.samples[0][0].threads] == [t.tokens for t in second.samples[0][0].threads]


def test_extra_messages_are_dropped_and_counted():
    s = run_scripted(
        {
            20: {2: [SO, 30, SEP, 31, SEP, 32, SC], 14: [EOS]},
            30: {2: [RO, 40, RC]},
            31: {2: [RO, 41, RC]},
            32: {2: [RO, 42, RC]},
        }
    )
    assert s.num_threads == 3
    assert [t.tokens[2] for t in s.threads[1:]] == [30, 31]
    assert s.limits_hit["dropped_children"] == 1
    assert s.root.tokens[10:] == [JO, 40, SEP, 41, JC, EOS]


def test_child_that_never_returns_is_joined_as_trunc():
    s = run_scripted({20: {2: [SO, 30, SEP, 31, SC], 12: [EOS]}, 30: {2: [RO, 40, RC]}})
    never = s.threads[2]
    assert never.stop == "token_limit" and never.written == 12
    assert never.tokens == [BOS, CHILD, 31] + [FILL] * 12
    assert s.root.tokens[8:] == [JO, 40, SEP, TR, JC, EOS]
    assert s.limits_hit["token_limit"] == 1
    assert s.sequential_tokens == 6 + 12


NESTED = {20: {2: [SO, 30, SC], 8: [EOS]}, 30: {2: [SO, 50, SC], 8: [RO, 51, RC]}, 50: {2: [RO, 52, RC]}}


def test_nested_spawn_with_max_depth_2():
    s = run_scripted(NESTED, max_depth=2)
    root, child, grandchild = s.threads
    assert root.tokens == [BOS, 20, 21, SO, 30, SC, JO, 51, JC, EOS]
    assert child.tokens == [BOS, CHILD, 30, SO, 50, SC, JO, 52, JC, RO, 51, RC]
    assert roles_of(child) == "pppmmmjjjmmm"
    assert grandchild.tokens == [BOS, CHILD, 50, RO, 52, RC]
    assert [t.depth for t in s.threads] == [0, 1, 2]
    assert grandchild.parent == 1 and child.children == [2]
    assert s.sequential_tokens == 4 + 6 + 3


def test_nested_spawn_refused_with_max_depth_1():
    s = run_scripted(NESTED, max_depth=1)
    root, child = s.threads
    assert child.stop == "depth_limit" and child.tokens == [BOS, CHILD, 30, SO, 50, SC]
    assert root.tokens == [BOS, 20, 21, SO, 30, SC, JO, TR, JC, EOS]
    assert s.limits_hit["depth_limit"] == 1


def test_max_depth_0_treats_spawn_blocks_as_text():
    s = run_scripted({20: {2: [SO, 30, SC, EOS]}}, max_depth=0)
    assert s.num_threads == 1
    assert s.root.tokens == [BOS, 20, 21, SO, 30, SC, EOS] and s.root.stop == "eos"


def test_unterminated_spawn_at_token_limit():
    s = run_scripted({20: {2: [SO, 30]}})
    assert s.num_threads == 1
    assert s.root.stop == "token_limit" and s.root.written == 12
    assert s.root.tokens == [BOS, 20, 21, SO, 30] + [FILL] * 10


TWO_ROUNDS = {20: {2: [SO, 30, SC], 8: [SO, 31, SC], 15: [EOS]}, 30: {2: [RO, 40, RC]}, 31: {2: [RO, 41, 42, RC]}}


def test_two_spawn_rounds():
    s = run_scripted(TWO_ROUNDS, max_rounds=2)
    assert s.root.tokens == [BOS, 20, 21, SO, 30, SC, JO, 40, JC, SO, 31, SC, JO, 41, 42, JC, EOS]
    assert s.children_per_spawn == [1, 1]
    assert [t.spawn_round for t in s.threads] == [-1, 0, 1]
    assert s.sequential_tokens == 7 + 3 + 4


def test_spawn_beyond_max_rounds_stops_the_thread():
    s = run_scripted(TWO_ROUNDS, max_rounds=1)
    assert s.num_threads == 2
    assert s.root.stop == "round_limit" and s.root.tokens[-3:] == [SO, 31, SC]
    assert s.limits_hit["round_limit"] == 1


def test_protocol_tokens_out_of_place_are_text():
    # Root: </return>, <join>, </join>, <sep>, </spawn> without <spawn>: all text.
    s = run_scripted({20: {2: [RC, JO, JC, SEP, SC, TR, EOS]}})
    assert s.num_threads == 1 and s.root.stop == "eos"
    assert s.root.tokens[3:] == [RC, JO, JC, SEP, SC, TR, EOS]


def test_empty_message_and_return_without_open():
    # "<spawn></spawn>": one child with an empty message (keyed by <child>);
    # it writes </return> with no <return>: an empty return message. (Once it
    # has written 15, the scripted model keys it by 15.)
    s = run_scripted({20: {2: [SO, SC], 6: [EOS]}, CHILD: {1: [15]}, 15: {2: [RC]}})
    root, child = s.threads
    assert child.tokens == [BOS, CHILD, 15, RC] and child.stop == "return"
    assert root.tokens == [BOS, 20, 21, SO, SC, JO, JC, EOS]


def test_join_that_does_not_fit_is_truncated():
    s = run_scripted({20: {21: [SO, 30, SC]}, 30: {2: [RO, 40, 41, 42, 43, 44, 45, 46, RC]}}, tokens_per_thread=30)
    root = s.root
    assert root.stop == "context_limit" and len(root.tokens) == 32
    assert root.tokens[22:25] == [SO, 30, SC]
    assert root.tokens[25:] == [JO, 40, 41, 42, 43, 44, 45]
    assert roles_of(root)[25:] == "j" * 7


def test_context_limit_without_spawn():
    s = run_scripted({}, tokens_per_thread=100)
    assert s.root.stop == "context_limit" and len(s.root.tokens) == 32


def test_pool_exhaustion_drops_messages():
    out = Engine(
        scripted({20: {2: [SO, 30, SEP, 31, SC], 10: [EOS]}, 30: {2: [RO, 40, RC]}}),
        dataclasses.replace(BASE, max_threads=2),
    ).run([ROOT])
    s = out.samples[0][0]
    assert s.num_threads == 2 and s.limits_hit["dropped_pool"] == 1
    assert s.root.tokens[8:] == [JO, 40, JC, EOS]


def test_several_problems_and_samples_are_independent():
    model = scripted({20: {2: [SO, 30, SC], 8: [EOS]}, 22: {1: [16, EOS]}, 30: {2: [RO, 40, RC]}})
    out = Engine(model, dataclasses.replace(BASE, samples_per_problem=2, batch_problems=2)).run(
        [[20, 21], [22], [20, 21]]
    )
    assert [len(p) for p in out.samples] == [2, 2, 2]
    assert len(out.steps) == 2  # two batches of two problems
    for n in (0, 2):
        for s in out.samples[n]:
            assert s.root.tokens == [BOS, 20, 21, SO, 30, SC, JO, 40, JC, EOS]
    assert out.samples[1][1].root.tokens == [BOS, 22, 16, EOS]


def test_bad_input_is_a_clear_error():
    engine = Engine(scripted({}), BASE)
    with pytest.raises(ValueError, match="prompt 0 has"):
        engine.run([[20] * 31])
    with pytest.raises(ValueError, match="non-empty list"):
        engine.run([])
    with pytest.raises(ValueError, match="max_children"):
        EngineConfig(max_children=0)
    with pytest.raises(ValueError, match="not a DecodeModel"):
        Engine("model", BASE)


def test_config_from_eval_section_and_pool_size():
    from apr_jax.config.loading import load_run_config

    config = load_run_config(
        None,
        [
            "config.eval.tokens_per_thread=200",
            "config.eval.batch_problems=32",
            "config.eval.max_children=4",
            "config.eval.max_rounds=2",
            "config.eval.temperature=0.0",
        ],
    )
    cfg = EngineConfig.from_eval_config(config.eval, max_context=512)
    assert (cfg.max_children, cfg.max_rounds, cfg.max_depth, cfg.tokens_per_thread) == (4, 2, 1, 200)
    assert cfg.sampling.greedy and cfg.batch_problems == 32 and cfg.max_context == 512
    assert cfg.threads_per_sample == 1 + 2 * 4
    assert dataclasses.replace(cfg, max_depth=0).threads_per_sample == 1
    assert dataclasses.replace(cfg, max_depth=2).threads_per_sample == 64  # 1 + 8 + 64 capped
    assert cfg.full_tree == 9 and dataclasses.replace(cfg, max_depth=2).full_tree == 73
    assert dataclasses.replace(cfg, max_rounds=0).full_tree == 1
    assert dataclasses.replace(cfg, max_threads=5).threads_per_sample == 5


# ---- to_thread_trees --------------------------------------------------------
class _Tok:
    names = {
        BOS: "<s>",
        EOS: "</s>",
        CHILD: "<child>",
        SO: "<spawn>",
        SC: "</spawn>",
        SEP: "<sep>",
        JO: "<join>",
        JC: "</join>",
        RO: "<return>",
        RC: "</return>",
        TR: "<trunc>",
    }
    bos_id, eos_id = BOS, EOS

    def decode(self, ids):
        return "".join(self.names.get(i, f"[{i}]") for i in ids)

    def encode(self, text):
        raise NotImplementedError


def test_to_thread_trees():
    model = scripted({20: {2: [14, SO, 30, SEP, 31, SC], 13: [16, EOS]}, 30: {2: [RO, 40, RC]}, 31: {2: [17]}})
    out = Engine(model, BASE).run([ROOT])
    (tree,) = to_thread_trees(out, _Tok(), [{"id": 7}])
    tree.validate()
    root, a, b = tree.threads
    assert [(seg.role, seg.text) for seg in root.segments] == [
        ("prompt", "[20][21]"),
        ("model", "[14]<spawn>[30]<sep>[31]</spawn>"),
        ("join", "<join>[40]<sep><trunc></join>"),
        ("model", "[16]"),
    ]
    assert [(seg.role, seg.text) for seg in a.segments] == [
        ("prompt", "<child>[30]"),
        ("model", "<return>[40]</return>"),
    ]
    assert (root.stop, a.stop, b.stop) == ("eos", "return", "token_limit")
    assert tree.problem == {"id": 7} and tree.meta["spawn_round"] == [-1, 0, 0]
    assert tree.meta["sequential_tokens"] == 8 + 12
    with pytest.raises(ValueError, match="problems"):
        to_thread_trees(out, _Tok(), [])


# ---- real (random) model ----------------------------------------------------
TOY = ToyConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=2, d_ff=64)


def _toy_decode(params, tokens, positions, cache, lanes, kv_len):
    return toy_decode(TOY, params, tokens, positions, cache, lanes, kv_len)


def _toy_cache(batch, max_len):
    return toy_init_cache(TOY, batch, max_len)


def _biased_decode(params, tokens, positions, cache, lanes, kv_len):
    """Random model pushed towards protocol tokens, so spawns happen often."""
    logits, cache = toy_decode(TOY, params["toy"], tokens, positions, cache, lanes, kv_len)
    return logits + params["bias"], cache


@pytest.fixture(scope="module")
def toy_params():
    return toy_init_params(TOY, jax.random.key(0))


def test_no_spawning_equals_plain_sampler(toy_params):
    model = DecodeModel(toy_params, _toy_decode, _toy_cache)
    prompts = [[5 + i, 20, 30 + i] for i in range(3)] + [[40, 41, 42, 43, 44, 45]]
    cfg = EngineConfig(max_depth=0, tokens_per_thread=16, max_context=32, row_buckets=1, kv_buckets=1)
    out = Engine(model, cfg).run(prompts)
    plain = generate(model, [[BOS] + p for p in prompts], max_new_tokens=16, stop_ids=(EOS,))
    for n, p in enumerate(prompts):
        root = out.samples[n][0].root
        assert root.written == plain.lengths[n]
        assert root.tokens[1 + len(p) :] == list(plain.tokens[n, : plain.lengths[n]])


def test_random_model_never_crashes_and_respects_limits(toy_params):
    bias = np.zeros((V,), np.float32)
    bias[[SO, SC, SEP, RO, RC]] = 3.0
    bias[EOS] = 1.0
    model = DecodeModel({"toy": toy_params, "bias": jnp.asarray(bias)}, _biased_decode, _toy_cache)
    cfg = EngineConfig(
        max_children=3,
        max_rounds=2,
        max_depth=2,
        tokens_per_thread=12,
        max_context=40,
        max_threads=12,
        sampling=SamplingConfig(temperature=1.0),
        row_buckets=1,
        kv_buckets=1,
    )
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(13, V, size=int(rng.integers(1, 8)))) for _ in range(50)]
    out = Engine(model, cfg).run(prompts, jax.random.key(3))
    spawned = 0
    for n, per_problem in enumerate(out.samples):
        s = per_problem[0]
        assert s.root.tokens[: 1 + len(prompts[n])] == [BOS] + prompts[n]
        assert s.root.stop != "running"
        for i, t in enumerate(s.threads):
            assert t.stop in threads_lib.STOPS and t.stop != "running"
            assert t.written <= cfg.tokens_per_thread
            assert len(t.tokens) <= cfg.max_context
            assert t.depth <= cfg.max_depth and t.rounds <= cfg.max_rounds
            assert sum(r == "model" for r in t.roles) == t.written
            if i:
                assert t.tokens[:2] == [BOS, CHILD] and t.depth == s.threads[t.parent].depth + 1
        assert s.sequential_tokens <= s.written_tokens
        spawned += s.num_threads - 1
    assert spawned > 20  # the bias makes the random model spawn
    trees = to_thread_trees(out, _Tok(), [{"n": n} for n in range(50)])
    for tree in trees:
        tree.validate()


def test_loop_state_constants_match_threads_stops():
    assert engine_loop.STOP["running"] == threads_lib.STOPS.index("running")
    assert ProtocolIds().trunc == TR


# ---- the project's Flax model ------------------------------------------------
def test_engine_runs_the_flax_transformer():
    from flax import nnx
    from helpers.tiny import tiny_model_config

    from apr_jax.model.transformer import Transformer

    cfg = tiny_model_config(vocab_size=V, num_heads=2, num_kv_heads=1)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    prompts = [[20, 21, 22], [30, 31, 32, 33, 34]]
    out = Engine(
        model, EngineConfig(max_depth=0, tokens_per_thread=10, max_context=24, row_buckets=2, kv_buckets=1)
    ).run(prompts)
    plain = generate(model, [[BOS] + p for p in prompts], max_new_tokens=10, stop_ids=(EOS,))
    for n, p in enumerate(prompts):
        root = out.samples[n][0].root
        assert root.tokens[1 + len(p) :] == list(plain.tokens[n, : plain.lengths[n]])


def test_no_step_copies_the_kv_pool():
    """The largest bucket (every lane, the whole context) reads the pool in
    place, layer by layer: the compiled loop's temporaries stay a small part
    of the pool (a gathered copy of the pool made them half of it and more)."""
    from flax import nnx
    from helpers.tiny import tiny_model_config

    from apr_jax.decode.engine import make_decoder
    from apr_jax.decode.model_api import as_decode_model
    from apr_jax.model.transformer import Transformer

    model = as_decode_model(
        Transformer(tiny_model_config(vocab_size=V, num_layers=4, num_heads=2, max_len=256), rngs=nnx.Rngs(0))
    )
    cfg = EngineConfig(
        max_children=2,
        max_rounds=1,
        max_depth=1,
        tokens_per_thread=8,
        max_context=256,
        lanes=64,
        row_buckets=2,
        kv_buckets=2,
    )
    decode = make_decoder(model.decode_fn, model.init_cache, cfg, ProtocolIds(), 8, 4)
    args = (
        model.params,
        jnp.zeros((8, 4), jnp.int32),
        jnp.full((8,), 4, jnp.int32),
        jnp.int32(8),
        jax.random.key(0),
        jnp.int32(0),
    )
    temp = decode.lower(*args).compile().memory_analysis().temp_size_in_bytes
    pool = jax.eval_shape(lambda: model.init_cache(64, 256))
    assert temp < 0.25 * (pool.k.size + pool.v.size) * pool.k.dtype.itemsize


# ---- lanes: reuse, continuous batching, the cache -----------------------------
def test_lanes_stream_problems_through_a_small_pool():
    """Five problems x two samples, each spawning two children, through five
    lanes (one sample in flight at a time): every tree equals its solo run."""
    scripts = {
        20: {2: [SO, 30, SEP, 31, SC], 14: [16, EOS]},
        22: {1: [SO, 31, SC], 9: [EOS]},
        30: {2: [15, RO, 40, RC]},
        31: {2: [RO, 41, 42, RC]},
    }
    prompts = [ROOT, [22], ROOT, [22], ROOT]
    cfg = dataclasses.replace(BASE, samples_per_problem=2, max_depth=1, prefill_chunk=3)
    alone = [Engine(scripted(scripts), cfg).run([p]).samples[0][0] for p in prompts[:2]]
    out = Engine(scripted(scripts), dataclasses.replace(cfg, lanes=cfg.lanes_per_group)).run(prompts)
    assert cfg.lanes_per_group == 3  # root + max_children at max_depth 1
    for n, per_problem in enumerate(out.samples):
        for s in per_problem:
            assert [t.tokens for t in s.threads] == [t.tokens for t in alone[n % 2].threads]
            assert [t.roles for t in s.threads] == [t.roles for t in alone[n % 2].threads]
            assert s.limits_hit["dropped_pool"] == 0
    assert out.steps[0] > 5 * max(Engine(scripted(scripts), cfg).run(prompts).steps)


def test_split_by_kv_length_reads_fewer_slots_and_writes_the_same_threads():
    """A long thread (prompt 22 writes until its token limit) runs beside a
    spawning sample's short children: one call per KV-length bucket keeps the
    children from reading the long thread's slot count, and changes nothing else."""
    scripts = {20: {20: [SO, 30, SEP, 31, SC], 31: [16, EOS]}, 30: {2: [15, RO, 40, RC]}, 31: {2: [RO, 41, 42, RC]}}
    cfg = EngineConfig(
        max_children=2,
        max_rounds=1,
        max_depth=1,
        tokens_per_thread=30,
        max_context=40,
        prefill_chunk=4,
        row_buckets=4,
        kv_buckets=3,
        batch_problems=0,
    )
    runs = [
        Engine(scripted(scripts), dataclasses.replace(cfg, split_by_kv_length=split)).run([ROOT, [22]])
        for split in (False, True)
    ]
    for a, b in zip(*(r.samples for r in runs)):
        assert [t.tokens for t in a[0].threads] == [t.tokens for t in b[0].threads]
        assert [t.roles for t in a[0].threads] == [t.roles for t in b[0].threads]
    assert len(runs[0].samples[0][0].threads) == 3 and len(runs[0].samples[1][0].threads[0].tokens) == 32
    whole, split = (r.counters for r in runs)
    assert whole["tokens_fed"] == split["tokens_fed"]
    assert split["kv_slots_live"] <= split["kv_slots_read"] < whole["kv_slots_read"]
    assert split["model_calls"] > whole["model_calls"]


def test_long_queues_take_the_long_chunk_and_write_the_same_threads():
    """With ``long_prefill_chunks=(16,)`` a 15-token prompt (``<bos>``
    included) and an 8-token join block are fed in one step each instead of
    five and three: fewer loop steps, the same threads and the same tokens fed.
    With ``(10, 16)`` each queue takes the narrowest call at least half its
    length: the 9 queued at the join (``</spawn>`` and the block) one step at
    10 wide, the prompt 10, then 3 and 3 (for 15, 5 and 2 queued): two steps
    more, 2 rows x (16 - 10) forwards fewer at the join."""
    long_root = [20] + [21] * 13
    scripts = {
        20: {14: [SO, 30, SEP, 31, SEP, 32, SC], 29: [EOS]},
        30: {2: [RO, 40, 41, RC]},
        31: {2: [RO, 42, RC]},
        32: {2: [RO, 43, RC]},
    }
    cfg = EngineConfig(
        max_children=3,
        max_rounds=1,
        max_depth=1,
        tokens_per_thread=20,
        max_context=40,
        prefill_chunk=3,
        row_buckets=2,
        kv_buckets=2,
        batch_problems=0,
    )
    runs = [
        Engine(scripted(scripts), dataclasses.replace(cfg, long_prefill_chunks=longs)).run([long_root])
        for longs in ((), (16,), (10, 16))
    ]
    short, wide, ladder = (r.samples[0][0] for r in runs)
    for other in (wide, ladder):
        assert [t.tokens for t in other.threads] == [t.tokens for t in short.threads]
        assert [t.roles for t in other.threads] == [t.roles for t in short.threads]
    assert short.root.tokens[22:31] == [JO, 40, 41, SEP, 42, SEP, 43, JC, EOS]
    # Prompt of 15 (with <bos>): 5 steps at 3 tokens, 1 at 16; join of 8: 3 steps against 1.
    assert runs[0].steps[0] - runs[1].steps[0] == (5 - 1) + (3 - 1)
    assert runs[2].steps[0] == runs[1].steps[0] + 2
    assert runs[2].counters["tokens_fed"] == runs[1].counters["tokens_fed"] == runs[0].counters["tokens_fed"]
    # The root alone in the 2-row bucket: its prompt costs 2 x (10 + 3 + 3) = 2 x 16 either way.
    assert runs[2].counters["forwards_computed"] == runs[1].counters["forwards_computed"] - 2 * (16 - 10)


def test_every_lane_holds_a_fresh_forward_of_its_last_thread(toy_params):
    """After a run with lanes reused many times, each lane's keys and values
    up to its last thread's fed length equal a fresh forward of that thread's
    buffer (a stale or skipped write would show here)."""
    from apr_jax.decode.engine import make_decoder

    bias = np.zeros((V,), np.float32)
    bias[[SO, SC, SEP, RO, RC]] = 3.0
    bias[EOS] = 1.0
    params = {"toy": toy_params, "bias": jnp.asarray(bias)}
    cfg = EngineConfig(
        max_children=3,
        max_rounds=2,
        max_depth=1,
        tokens_per_thread=12,
        max_context=40,
        max_threads=7,
        lanes=4,
        prefill_chunk=4,
        row_buckets=2,
        kv_buckets=2,
        sampling=SamplingConfig(temperature=1.0),
    )
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(13, V, size=int(rng.integers(1, 8)))) for _ in range(6)]
    tokens = np.zeros((6, 8), np.int32)
    for n, p in enumerate(prompts):
        tokens[n, : len(p)] = p
    decode = make_decoder(_biased_decode, _toy_cache, cfg, ProtocolIds(), 6, 8)
    s = jax.device_get(
        decode(
            params,
            jnp.asarray(tokens),
            jnp.asarray([len(p) for p in prompts]),
            jnp.int32(6),
            jax.random.key(0),
            jnp.int32(0),
        )
    )
    assert int(s.next_free_N.sum()) > 2 * cfg.lanes  # lanes were reused
    assert np.sum(s.lane_row_C >= 0) >= 2
    # One fresh forward of every used lane's buffer, each cut at its fed length.
    used = [(lane, int(row)) for lane, row in enumerate(s.lane_row_C) if row >= 0]
    rows_U = np.array([row for _, row in used])
    fed_U = np.asarray(s.fed_R)[rows_U]
    L = s.buf_RxL.shape[1]
    positions_UxL = np.where(np.arange(L)[None] < fed_U[:, None], np.arange(L)[None], -1)
    fresh = toy_init_cache(TOY, len(used), L)
    _, fresh = toy_decode(TOY, toy_params, jnp.asarray(s.buf_RxL[rows_U]), jnp.asarray(positions_UxL), fresh)
    for u, (lane, _) in enumerate(used):
        fed = int(fed_U[u])
        for name in ("k", "v"):
            np.testing.assert_allclose(
                s.cache[name][:, lane, :fed], fresh[name][:, u, :fed], atol=1e-5, err_msg=f"lane {lane} {name}"
            )


def test_a_pool_that_cannot_hold_one_problem_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"EngineConfig.lanes=4 cannot hold one problem: a sample needs 5 lanes"):
        EngineConfig(max_children=4, max_depth=1, lanes=4)
    with pytest.raises(ValueError, match="EngineConfig.prefill_chunk must be an int >= 1"):
        EngineConfig(prefill_chunk=0)
    for longs in ((8,), (16, 12), (12, 12), [16]):
        with pytest.raises(
            ValueError,
            match=r"EngineConfig.long_prefill_chunks=.* must be a tuple of "
            r"ascending ints, each more than prefill_chunk=8",
        ):
            EngineConfig(prefill_chunk=8, long_prefill_chunks=longs)
    with pytest.raises(ValueError, match="EngineConfig.row_buckets must be an int >= 1"):
        EngineConfig(row_buckets=0)
    with pytest.raises(ValueError, match="EngineConfig.kv_buckets must be an int >= 1"):
        EngineConfig(kv_buckets=0)
    assert EngineConfig(max_children=4, max_depth=1, lanes=5).lanes_per_group == 5
    assert EngineConfig(max_children=4, max_depth=2, max_threads=9).lanes_per_group == 9
