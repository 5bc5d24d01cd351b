"""The inherit family's engine against its training: a tiny decoder trained to
reproduce one tree (as its tree sequence) is decoded greedily by the engine in
stitch and linear mode. The engine must write the same tree, feed no inherited
token again, and give every sampled token the log-probability the training
forward gives it on the engine's own tree: forks, KV tables and stitched joins
read exactly what the tree sequence's mask lets each token see."""

import jax
import numpy as np
import pytest
from flax import nnx
from helpers.inherit import NESTED_LIMITS, CharEncoder, memorized_model, nested_tree, sequence_batch, sequence_mask
from helpers.tiny import tiny_model_config

from apr_jax.data.tree_sequence import thread_rows, tree_sequence
from apr_jax.decode import DecodeModel, Engine, EngineConfig, ProtocolIds, SamplingConfig, engine_loop, to_thread_trees
from apr_jax.model.transformer import Transformer
from apr_jax.training.loss import next_token_targets, token_cross_entropy

ENC = CharEncoder()


def _teacher_forced_logp(model, seq):
    """log p of each token given what it may see, at its layout index (0 where untrained)."""
    batch = sequence_batch(seq)
    logits = model(batch["tokens"], batch["positions"], sequence_mask(seq))
    targets, weights = next_token_targets(batch["tokens"], batch["loss_mask"], batch["segment_ids"])
    logp = -token_cross_entropy(logits, targets) * weights
    return np.concatenate([[0.0], np.asarray(logp[0, :-1])])  # logp of token i sits at i


@pytest.mark.parametrize("join", ["stitch", "linear"])
def test_engine_decodes_the_tree_its_training_sequence_teaches(join):
    script = nested_tree().with_context("inherit", join)
    model = memorized_model(join)
    cfg = EngineConfig(
        **NESTED_LIMITS,
        batch_problems=1,
        row_buckets=1,
        kv_buckets=2,
        context="inherit",
        join=join,
    )
    engine = Engine(model, cfg, ProtocolIds())
    prompt = ENC.encode(script.threads[0].segments[0].text)
    arrays = engine.run_arrays([prompt], jax.random.key(0))
    out = engine.run([prompt])
    [tree] = to_thread_trees(out, ENC, [script.problem])

    # The same tree: every thread's own text, children and stops.
    assert [t.to_dict()["threads"] for t in (tree,)] == [script.to_dict()["threads"]]

    # No inherited token is fed again: every token of the tree sequence is fed
    # once, but the root's final EOS and (linear) each child's last token.
    seq = tree_sequence(tree, ENC, join)
    unfed = 1 + (len(tree.threads) - 1 if join == "linear" else 0)
    assert out.counters["tokens_fed"] == len(seq) - unfed

    # KV held: each token's K/V once; an engine copying prefixes holds every thread's whole context.
    [[sample]] = out.samples
    assert sample.kv_slots == len(seq)
    assert sample.kv_slots_unshared == sum(len(row.index_S) for row in thread_rows(seq)) > len(seq)

    # Each sampled token's log-prob equals the training forward's on the engine's tree.
    want_T = _teacher_forced_logp(model, seq)
    logp_SxL = arrays["logp"][0, 0]
    for i in np.flatnonzero(seq.loss_mask_T):
        thread, position = seq.thread_T[i], seq.positions_T[i]
        np.testing.assert_allclose(logp_SxL[thread, position], want_T[i], rtol=1e-3, atol=1e-5)


def test_chunks_buckets_and_lanes_do_not_change_an_inherit_result():
    """Stitch mode under other feed widths, row and KV buckets, a smaller
    pool and the paged table kernel (interpreted here): the same tokens and
    log-probabilities, sample by sample."""
    script = nested_tree().with_context("inherit", "stitch")
    model = memorized_model("stitch")
    prompt = ENC.encode(script.threads[0].segments[0].text)
    base = dict(
        **NESTED_LIMITS,
        max_threads=6,
        context="inherit",
    )
    runs = []
    for extra in (
        dict(batch_problems=3, row_buckets=1, kv_buckets=1, prefill_chunk=8),
        dict(batch_problems=3, row_buckets=3, kv_buckets=3, prefill_chunk=2, long_prefill_chunks=(5,)),
        dict(batch_problems=3, lanes=12, prefill_chunk=3, split_by_kv_length=True, kv_buckets=2),
        # 5 pages per lane: the stitched root reads 46 slots, more than one lane holds.
        dict(batch_problems=3, row_buckets=2, prefill_chunk=4, decode_attention="paged", page_size=8, max_context=40),
    ):
        cfg = EngineConfig(**{**base, **extra}, sampling=SamplingConfig(1.0, 1.0))
        engine = Engine(model, cfg, ProtocolIds())
        runs.append(engine.run_arrays([prompt, ENC.encode("Q"), prompt], jax.random.key(3)))
    paged, gathered = runs[-1]["counters"], runs[0]["counters"]
    read = engine_loop.COUNTERS.index("kv_slots_read")
    assert paged[read] < gathered[read]  # the kernel reads the listed pages only
    for other in runs[1:]:
        width = other["buf"].shape[-1]  # the 40-slot run's buffers: the others' first 40 slots
        assert not runs[0]["buf"][..., width:].any()
        np.testing.assert_array_equal(other["buf"], runs[0]["buf"][..., :width])
        np.testing.assert_array_equal(other["length"], runs[0]["length"])
        np.testing.assert_allclose(other["logp"], runs[0]["logp"][..., :width], atol=2e-5)


@pytest.mark.parametrize("join", ["stitch", "linear"])
def test_garbage_output_never_breaks_the_inherit_engine(join):
    """Random weights that favour the protocol's tags, sampled hot: every
    rollout ends within the limits, as a valid tree whose tree sequence builds."""
    model = Transformer(tiny_model_config(vocab_size=ENC.vocab_size, max_len=64), rngs=nnx.Rngs(5))
    graphdef, state = nnx.split(model)
    bias_V = np.zeros(ENC.vocab_size, np.float32)
    bias_V[4:13] = 3.0  # <child> ... <trunc>
    bias_V[ENC.eos_id] = -2.0

    def decode_fn(params, tokens, positions, cache, lanes, kv_len, table=None):
        logits, cache = nnx.merge(graphdef, params).decode(tokens, positions, cache, lanes, kv_len, table=table)
        return logits + bias_V, cache

    decode_model = DecodeModel(params=state, decode_fn=decode_fn, init_cache=model.init_cache)
    cfg = EngineConfig(
        max_children=3,
        max_rounds=2,
        max_depth=2,
        tokens_per_thread=12,
        max_context=64,
        max_threads=8,
        batch_problems=4,
        row_buckets=2,
        kv_buckets=2,
        context="inherit",
        join=join,
        sampling=SamplingConfig(1.5, 1.0),
    )
    out = Engine(decode_model, cfg, ProtocolIds()).run([ENC.encode("P"), ENC.encode("Qx")] * 2, jax.random.key(1))
    trees = to_thread_trees(out, ENC, [{"answer": "1"}] * 4)
    assert sum(len(t.threads) for t in trees) > 4  # it did spawn
    for tree, sample in zip(trees, out.flat()):
        tree.validate()
        assert all(t.stop != "running" for t in tree.threads)
        assert all(t.written <= cfg.tokens_per_thread and t.depth <= cfg.max_depth for t in sample.threads)
        assert all(len(t.tokens) <= cfg.max_context for t in sample.threads)
        tree_sequence(tree, ENC, join)  # the rollout is a well-formed inherit-family tree
