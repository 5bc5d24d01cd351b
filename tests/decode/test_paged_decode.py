"""Paged decode attention: the Pallas paged kernels (interpreted on the CPU)
read each row's pages in place and give the xla gather's logits, in a model
call and through the spawn/join engine."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers.tiny import tiny_model_config

from apr_jax.decode.engine import Engine, EngineConfig, decode_axes, decode_page_size
from apr_jax.decode.model_api import DecodeModel, as_decode_model
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.model import Transformer
from apr_jax.model.attention import resolve_decode_attention

VOCAB, SLOTS, PAGE = 32, 32, 8
CFG = tiny_model_config(vocab_size=VOCAB, max_len=SLOTS)


@pytest.fixture(scope="module")
def model():
    return Transformer(CFG, rngs=nnx.Rngs(0))


@nnx.jit(static_argnums=5)
def _decode(model, tokens_BxT, positions_BxT, cache, lanes_B, page_size):
    return model.decode(tokens_BxT, positions_BxT, cache, lanes_B, None, page_size)


def _filled_cache(model, lengths):
    """A pool whose lane n holds ``lengths[n]`` random tokens, then a shorter
    thread over it: slots past each lane's live length keep stale keys."""
    rng = np.random.default_rng(0)
    n = len(lengths)
    cache = model.init_cache(n, SLOTS)
    lanes = jnp.arange(n, dtype=jnp.int32)
    for fill in (np.minimum(np.asarray(lengths) + 9, SLOTS - 1), np.asarray(lengths)):
        positions = np.where(np.arange(SLOTS)[None] < fill[:, None], np.arange(SLOTS)[None], -1)
        tokens = rng.integers(0, VOCAB, (n, SLOTS))
        _, cache = _decode(model, jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32), cache, lanes, 0)
    return cache


def test_paged_logits_and_cache_equal_the_xla_gather(model):
    lengths = [3, 17, 0, 9, 30, 8]
    cache = _filled_cache(model, lengths)
    lanes_B = jnp.asarray([3, 0, 4, 1, 5, 2], jnp.int32)  # rows in shuffled lanes
    pos_Bx1 = jnp.asarray([[lengths[int(n)]] for n in lanes_B], jnp.int32).at[3, 0].set(-1)  # row 3: padding
    tok_Bx1 = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (6, 1)), jnp.int32)
    want, want_cache = _decode(model, tok_Bx1, pos_Bx1, cache, lanes_B, 0)
    got, got_cache = _decode(model, tok_Bx1, pos_Bx1, cache, lanes_B, PAGE)
    real = np.asarray(pos_Bx1[:, 0] >= 0)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=2e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(got_cache.k[:, 0]), np.asarray(want_cache.k[:, 0]))
    np.testing.assert_allclose(np.asarray(got_cache.v), np.asarray(want_cache.v), atol=1e-5)


def test_tpu_kernel_interpreted_matches_within_its_bfloat16_reads(model):
    """The TPU kernel (interpreted) takes the same pages, tables and lengths;
    it reads K and V as bfloat16, hence the looser tolerance."""
    from jax.experimental.pallas import tpu as pltpu

    tpu_model = nnx.merge(nnx.graphdef(Transformer(CFG, rngs=nnx.Rngs(0), platform="tpu")), nnx.state(model))
    lengths = [5, 0, 22, 12]
    cache = _filled_cache(model, lengths)
    lanes_B = jnp.asarray([2, 0, 3], jnp.int32)
    pos_Bx1 = jnp.asarray([[22], [5], [12]], jnp.int32)
    tok_Bx1 = jnp.asarray([[4], [9], [17]], jnp.int32)
    want, _ = _decode(model, tok_Bx1, pos_Bx1, cache, lanes_B, 0)
    with pltpu.force_tpu_interpret_mode():
        got, _ = _decode(tpu_model, tok_Bx1, pos_Bx1, cache, lanes_B, PAGE)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=3e-2)


# A scripted bias over the random model: next token = RULES[token], so every
# root spawns children of different lengths that return and are joined; the
# log-probs still carry the model's attention, so they tell the paths apart.
IDS = ProtocolIds()
RULES = {
    21: IDS.spawn_open,
    IDS.spawn_open: 13,
    13: IDS.sep,
    IDS.sep: 14,
    14: IDS.spawn_close,
    IDS.spawn_close: IDS.return_open,
    IDS.return_open: 15,
    15: IDS.return_close,
    IDS.join_close: 16,
    16: IDS.eos,
    22: 16,
}


def _scripted(model) -> DecodeModel:
    base = as_decode_model(model)
    bias_VxV = np.zeros((VOCAB, VOCAB), np.float32)
    for a, b in RULES.items():
        bias_VxV[a, b] = 8.0
    bias_VxV = jnp.asarray(bias_VxV)

    def decode_fn(params, tokens, positions, cache, lanes_B=None, kv_len=None, **paged):
        logits, cache = base.decode_fn(params, tokens, positions, cache, lanes_B, kv_len, **paged)
        return logits + bias_VxV[tokens], cache

    return DecodeModel(base.params, decode_fn, base.init_cache, base.page_size_for)


def test_engine_threads_and_logprobs_equal_with_paged_and_xla(model):
    scripted = _scripted(model)
    cfg = EngineConfig(
        max_children=2,
        max_rounds=1,
        max_depth=1,
        tokens_per_thread=10,
        max_context=SLOTS,
        max_threads=3,
        lanes=6,
        prefill_chunk=4,
        row_buckets=1,
        kv_buckets=1,
        page_size=PAGE,
    )
    prompts = [[20, 21], [22], [23, 21], [21], [19, 18, 21]]  # more samples than the pool holds at once
    runs = {
        att: Engine(scripted, dataclasses.replace(cfg, decode_attention=att), IDS).run_arrays(
            prompts, jax.random.key(0)
        )
        for att in ("xla", "paged")
    }
    xla, paged = runs["xla"], runs["paged"]
    assert int(xla["next_free"].min()) == 1 and int(xla["next_free"].max()) == 3  # spawns happened
    for name in ("buf", "role", "length", "stop", "parent"):
        np.testing.assert_array_equal(paged[name], xla[name], err_msg=name)
    np.testing.assert_allclose(paged["logp"], xla["logp"], atol=1e-5)
    read = {att: dict(zip(("forwards", "fed", "read", "live", "calls"), runs[att]["counters"])) for att in runs}
    assert read["paged"]["read"] < read["xla"]["read"]


def test_decode_attention_choices_and_bad_settings(model):
    assert decode_page_size(EngineConfig(max_context=SLOTS, decode_attention="auto"), model.decode_page_size) == 0
    assert (
        decode_page_size(
            EngineConfig(max_context=SLOTS, decode_attention="paged", page_size=PAGE), model.decode_page_size
        )
        == PAGE
    )
    assert resolve_decode_attention("auto", "gpu", 64, 16, 256) == 16
    assert resolve_decode_attention("auto", "gpu", 24, 16, 256) == 0  # falls back silently
    with pytest.raises(ValueError, match="eval.page_size=12 does not divide the context"):
        decode_page_size(
            EngineConfig(max_context=SLOTS, decode_attention="paged", page_size=12), model.decode_page_size
        )
    with pytest.raises(ValueError, match="GPU paged kernel .* head_dim >= 16"):
        resolve_decode_attention("paged", "gpu", 24, 16, 256)
    with pytest.raises(ValueError, match="TPU paged kernel needs .* page_size=12"):
        resolve_decode_attention("paged", "tpu", 128, 12, 240)
    assert resolve_decode_attention("auto", "tpu", 64, 16, 256) == 0  # head_dim 64: xla on TPU
    with pytest.raises(ValueError, match="EngineConfig.decode_attention must be one of"):
        EngineConfig(decode_attention="flash")
    with pytest.raises(ValueError, match="needs a model with a paged decode"):
        decode_page_size(EngineConfig(decode_attention="paged"), None)


@pytest.mark.parametrize("attention", ["xla", "paged"])
def test_tensor_devices_decode_prompts_of_their_own(model, attention):
    """Under a data x tensor mesh the engine splits the prompts over the
    tensor axis too (each device holds the whole model inside the loop):
    eight loops for eight devices, the same threads as one device. The same
    engine decodes both: its compiled decoder is keyed by the mesh."""
    from apr_jax.runtime import sharding

    scripted = _scripted(model)
    cfg = EngineConfig(
        max_children=2,
        max_rounds=1,
        max_depth=1,
        tokens_per_thread=10,
        max_context=SLOTS,
        max_threads=3,
        prefill_chunk=4,
        row_buckets=1,
        kv_buckets=1,
        page_size=PAGE,
        decode_attention=attention,
    )
    prompts = [[20, 21], [22], [23, 21], [21], [19, 18, 21], [22], [21], [20, 21]]
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=1, tensor=4))
    params = jax.device_put(scripted.params, sharding.model_state_shardings(scripted.params, mesh))
    engine = Engine(dataclasses.replace(scripted, params=params), cfg, IDS)
    one = engine.run_arrays(prompts, jax.random.key(0))  # no mesh: one loop
    with jax.set_mesh(mesh):
        many = engine.run_arrays(prompts, jax.random.key(0))
        assert decode_axes(jax.sharding.get_abstract_mesh(), 6) == ("data",)  # 6 do not split 8 ways
    assert one["num_groups"].shape == (1,)
    assert many["num_groups"].shape == (8,)  # one loop per device, each with its own samples
    for name in ("buf", "role", "length", "stop", "parent"):
        np.testing.assert_array_equal(many[name], one[name], err_msg=name)
    np.testing.assert_allclose(many["logp"], one["logp"], atol=1e-5)


def test_gpu_engine_lowers_the_paged_kernel_for_cuda():
    """The whole engine for a GPU model with ``paged``, lowered for CUDA on
    this host: the width-1 calls become Triton kernel calls over the whole
    pool (Pallas builds the kernel's Triton IR at lowering, so its block
    shapes are checked here; compiling that IR needs a GPU)."""
    from apr_jax.decode.engine import make_decoder

    shape = dataclasses.replace(CFG, max_len=64, num_heads=2, num_kv_heads=1, head_dim=16)
    gpu = as_decode_model(Transformer(shape, rngs=nnx.Rngs(0), platform="gpu"))
    cfg = EngineConfig(
        max_children=2,
        max_rounds=1,
        max_depth=1,
        tokens_per_thread=16,
        max_context=64,
        max_threads=3,
        prefill_chunk=4,
        row_buckets=2,
        kv_buckets=2,
        page_size=16,
        decode_attention="paged",
    )
    page_size = decode_page_size(cfg, gpu.page_size_for)
    decode = make_decoder(gpu.decode_fn, gpu.init_cache, cfg, IDS, 4, 8, page_size=page_size)
    args = (
        gpu.params,
        jnp.zeros((4, 8), jnp.int32),
        jnp.full((4,), 3, jnp.int32),
        jnp.int32(4),
        jax.random.key(0),
        jnp.int32(0),
    )
    hlo = decode.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert page_size == 16 and "xla.gpu.triton" in hlo
