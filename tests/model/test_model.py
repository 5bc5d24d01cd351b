"""Tests for apr_jax.model: config, counts, FLOPs, and the packed training forward."""

import contextlib
import functools
import io

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from helpers.tiny import tiny_model_config

from apr_jax.model import ModelConfig, Transformer, attention, flops_per_token, num_params, peak_flops_per_device
from apr_jax.runtime import sharding

VOCAB = 64


def random_tokens(batch, length, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB)


def arange_positions(batch, length):
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


@nnx.jit
def forward(model, tokens, positions, segment_ids):
    return model(tokens, positions, segment_ids)


# --- config ---------------------------------------------------------------


def test_from_config_reads_default_model_section():
    from configs.default import get_config

    cfg = ModelConfig.from_config(get_config().model, vocab_size=96)
    assert (cfg.vocab_size, cfg.num_layers, cfg.d_model, cfg.num_kv_heads) == (96, 4, 128, 2)
    assert cfg.head_dim == 32 and cfg.attention == "auto" and isinstance(cfg.rope_theta, float)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("d_model", 30, "model.d_model"),
        ("num_kv_heads", 3, "model.num_heads"),
        ("param_dtype", "float16", "model.param_dtype"),
        ("compute_dtype", "fp32", "model.compute_dtype"),
        ("attention", "flash", "model.attention"),
        ("num_layers", 0, "model.num_layers"),
    ],
)
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_model_config(**{field: value})


def test_from_config_missing_field():
    section = ml_collections.ConfigDict(dict(num_layers=2, d_model=32))
    with pytest.raises(ValueError, match="config.model.num_heads is missing"):
        ModelConfig.from_config(section, vocab_size=VOCAB)


@pytest.mark.parametrize("tie", [True, False])
def test_num_params_matches_model(tie):
    cfg = tiny_model_config(tie_embeddings=tie, num_kv_heads=1)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert num_params(cfg) == actual
    embedding = VOCAB * cfg.d_model * (1 if tie else 2)
    assert num_params(cfg, non_embedding=True) == actual - embedding


@pytest.mark.parametrize(
    "switches",
    [
        dict(head_dim=16),
        dict(qkv_bias=True),
        dict(qk_norm=True),
        dict(d_model=24, head_dim=10, qkv_bias=True, qk_norm=True, tie_embeddings=False),
    ],
)
def test_num_params_counts_pretrained_switches(switches):
    cfg = tiny_model_config(**switches)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    assert num_params(cfg) == sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert model.blocks[0].attn.q_DxNxH.get_value().shape == (cfg.d_model, cfg.num_heads, cfg.head_dim)


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(d_model=30), "config.model.d_model=30 is not divisible by config.model.num_heads=4"),
        (dict(head_dim=7), "model head_dim \\(7\\) must be even"),
        (dict(head_dim=-2), "model.head_dim must be a positive integer"),
        (dict(norm_eps=0.0), "model.norm_eps must be positive"),
    ],
)
def test_pretrained_switch_validation(fields, message):
    with pytest.raises(ValueError, match=message):
        tiny_model_config(**fields)
    assert tiny_model_config(d_model=30, head_dim=8).head_dim == 8  # an explicit head_dim frees d_model


def test_flops_per_token_formula():
    cfg = tiny_model_config()
    n_matmul = num_params(cfg, non_embedding=True) - (2 * cfg.num_layers + 1) * cfg.d_model + cfg.d_model * VOCAB
    attn = 6 * cfg.num_layers * cfg.d_model * 100
    assert flops_per_token(cfg, 100) == 6 * n_matmul + attn
    assert flops_per_token(cfg, 200) > flops_per_token(cfg, 100)


def test_peak_flops_on_cpu_is_the_measured_matmul_rate_per_device():
    import jax

    peak = peak_flops_per_device()
    assert peak is not None and 1e9 < peak * jax.local_device_count() < 1e13


# --- forward --------------------------------------------------------------


def test_forward_shapes_dtype_and_gqa(tiny_model):
    tokens = random_tokens(3, 10)
    logits = forward(tiny_model, tokens, arange_positions(3, 10), jnp.ones((3, 10), jnp.int32))
    assert logits.shape == (3, 10, VOCAB) and logits.dtype == jnp.float32
    assert tiny_model.blocks[0].attn.q_DxNxH.shape == (32, 4, 8)
    assert tiny_model.blocks[0].attn.k_DxKxH.shape == (32, 2, 8)
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_causality_future_tokens_do_not_change_past(tiny_model):
    tokens = random_tokens(2, 12)
    changed = tokens.at[:, 7:].set((tokens[:, 7:] + 5) % VOCAB)
    pos, seg = arange_positions(2, 12), jnp.ones((2, 12), jnp.int32)
    a, b = forward(tiny_model, tokens, pos, seg), forward(tiny_model, changed, pos, seg)
    np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert float(jnp.abs(a[:, 7:] - b[:, 7:]).max()) > 1e-3


def test_packing_equals_separate_sequences_and_padding_is_finite(tiny_model):
    first, second = random_tokens(1, 5, seed=1), random_tokens(1, 6, seed=2)
    tokens = jnp.concatenate([first, second, jnp.zeros((1, 3), jnp.int32)], axis=1)
    positions = jnp.concatenate([jnp.arange(5), jnp.arange(6), jnp.zeros(3, jnp.int32)])[None]
    segments = jnp.array([[1] * 5 + [2] * 6 + [0] * 3])
    # Both segments alone, one per row (the first right-padded), in the same call.
    alone_tokens = jnp.zeros((2, 14), jnp.int32).at[0, :5].set(first[0]).at[1, :6].set(second[0])
    alone_segments = jnp.zeros((2, 14), jnp.int32).at[0, :5].set(1).at[1, :6].set(1)
    logits = forward(
        tiny_model,
        jnp.concatenate([tokens, alone_tokens]),
        jnp.concatenate([positions, arange_positions(2, 14)]),
        jnp.concatenate([segments, alone_segments]),
    )
    packed, alone = logits[:1], logits[1:]
    np.testing.assert_allclose(packed[0, :5], alone[0, :5], atol=1e-5)
    np.testing.assert_allclose(packed[0, 5:11], alone[1, :6], atol=1e-5)
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_tied_and_untied_heads():
    tied = Transformer(tiny_model_config(tie_embeddings=True), rngs=nnx.Rngs(0))
    untied = Transformer(tiny_model_config(tie_embeddings=False), rngs=nnx.Rngs(0))
    assert not hasattr(tied, "head_DxV") and untied.head_DxV.shape == (32, VOCAB)
    tokens = random_tokens(1, 4)
    args = (tokens, arange_positions(1, 4), jnp.ones((1, 4), jnp.int32))
    # Tied: the head is the embedding, so its gradient flows into embed_VxD only.
    grads = nnx.jit(nnx.grad(lambda m: m(*args).sum()))(tied)
    assert float(jnp.abs(grads.embed_VxD.get_value()).sum()) > 0
    assert forward(untied, *args).shape == forward(tied, *args).shape


def test_bf16_params_and_compute_give_finite_logits():
    cfg = tiny_model_config(param_dtype="bfloat16", compute_dtype="bfloat16")
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    assert model.embed_VxD.get_value().dtype == jnp.bfloat16
    tokens = random_tokens(2, 8)
    logits = forward(model, tokens, arange_positions(2, 8), jnp.ones((2, 8), jnp.int32))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    reference = forward(
        Transformer(tiny_model_config(), rngs=nnx.Rngs(0)), tokens, arange_positions(2, 8), jnp.ones((2, 8), jnp.int32)
    )
    assert float(jnp.abs(logits - reference).max()) < 0.1


def test_remat_policies_give_same_loss_and_grads():
    tokens = random_tokens(2, 8)
    args = (tokens, arange_positions(2, 8), jnp.ones((2, 8), jnp.int32))
    loss = lambda m: jnp.mean(m(*args) ** 2)
    step = nnx.jit(nnx.value_and_grad(loss))
    plain = step(Transformer(tiny_model_config(), rngs=nnx.Rngs(0)))
    for policy in ("dots", "full"):
        remat = step(Transformer(tiny_model_config(remat=policy), rngs=nnx.Rngs(0)))
        np.testing.assert_allclose(plain[0], remat[0], rtol=1e-6, err_msg=policy)
        for a, b in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(remat[1])):
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=policy)


def test_remat_policies_recompute_what_they_name():
    """Saved residuals: none keeps everything, dots only the matmul outputs,
    full only each block's input."""
    args = (random_tokens(2, 8), arange_positions(2, 8), jnp.ones((2, 8), jnp.int32))

    def residual_count(policy):
        model = Transformer(tiny_model_config(remat=policy), rngs=nnx.Rngs(0))
        graph, params = nnx.split(model)
        loss = lambda p: jnp.mean(nnx.merge(graph, p)(*args) ** 2)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            jax.ad_checkpoint.print_saved_residuals(loss, params)
        return len(printed.getvalue().splitlines())

    none, dots, full = (residual_count(p) for p in ("none", "dots", "full"))
    assert none > dots > full, (none, dots, full)


def test_boolean_remat_of_older_configs_maps_to_a_policy():
    assert tiny_model_config(remat=True).remat == "full" and tiny_model_config(remat=False).remat == "none"
    with pytest.raises(ValueError, match="config.model.remat=.some. is not one of none, dots, full"):
        tiny_model_config(remat="some")


def test_bad_inputs_give_clear_errors(tiny_model):
    tokens = random_tokens(2, 6)
    with pytest.raises(ValueError, match="positions shape"):
        tiny_model(tokens, arange_positions(2, 5), jnp.ones((2, 6), jnp.int32))
    with pytest.raises(ValueError, match="tokens must be integers"):
        tiny_model(tokens.astype(jnp.float32), arange_positions(2, 6), jnp.ones((2, 6), jnp.int32))


# --- attention kernels ----------------------------------------------------


def test_resolve_implementation_follows_the_platform():
    assert attention.resolve_implementation("auto", jnp.float32, "cpu") == "xla"
    assert attention.resolve_implementation("auto", jnp.bfloat16, "gpu") == "triton"
    assert attention.resolve_implementation("auto", jnp.float32, "tpu") == "splash"
    assert attention.resolve_implementation("splash", jnp.float32, "cpu") == "splash"
    with pytest.raises(ValueError, match="model.attention='cudnn' needs model.compute_dtype"):
        attention.resolve_implementation("cudnn", jnp.float32, "gpu")


def test_model_built_for_a_platform_uses_its_kernel():
    """The platform is an argument: building for "gpu" on this CPU host picks
    the Triton kernel (run interpreted here) without touching JAX's backend."""
    model = Transformer(tiny_model_config(), rngs=nnx.Rngs(0), platform="gpu")
    assert {b.attn.implementation for b in model.blocks} == {"triton"}
    assert attention.interpret_kernel("triton", "cpu") and not attention.interpret_kernel("triton", "gpu")


@pytest.mark.parametrize("implementation,row_bytes", [("xla", 4 * 8 * 8 * 4), ("cudnn", 8 * 8 * 2)])
def test_dense_attention_over_the_limit_names_the_setting(monkeypatch, implementation, row_bytes):
    """Limit = one row's dense tensor (xla: f32 logits per head; cudnn: the
    bf16 mask): two rows are a one-line error, one row runs."""
    monkeypatch.setattr(attention, "DENSE_LIMIT_BYTES", row_bytes)
    q, kv = jnp.ones((2, 8, 4, 16), jnp.bfloat16), jnp.ones((2, 8, 2, 16), jnp.bfloat16)
    segments = jnp.ones((2, 8), jnp.int32)
    run = functools.partial(attention.packed_attention, implementation=implementation)
    with pytest.raises(
        ValueError,
        match=rf"model.attention='{implementation}' would build a .* "
        r"T x T tensor per layer .*; set model.attention=auto",
    ):
        jax.eval_shape(run, q, kv, kv, segments)
    if implementation == "xla":
        jax.eval_shape(run, q[:1], kv[:1], kv[:1], segments[:1])


def _packed_qkv(b, t=24):
    """Grouped-query inputs (4 heads over 2 KV heads) with packed rows, padding
    at the end and a length that is not a block multiple (the kernel pads)."""
    keys = jax.random.split(jax.random.key(5), 4)
    q = jax.random.normal(keys[0], (b, t, 4, 16))
    k = jax.random.normal(keys[1], (b, t, 2, 16))
    v = jax.random.normal(keys[2], (b, t, 2, 16))
    rows = [[1] * 7 + [2] * 12 + [0] * 5, [1] * 24, [4] * 3 + [5] * 3 + [6] * 17 + [0], [0] * 24]
    segments = jnp.array((rows * b)[:b], jnp.int32)
    weights = jax.random.normal(keys[3], (b, t, 4, 16)) * (segments != 0)[:, :, None, None]
    return (q, k, v, segments), weights


def _value_and_grads(implementation, inputs, weights):
    *qkv, segments = inputs
    loss = lambda q, k, v: jnp.sum(weights * attention.packed_attention(q, k, v, segments, implementation))
    out = attention.packed_attention(*qkv, segments, implementation)
    return out, jax.grad(loss, argnums=(0, 1, 2))(*qkv)


@pytest.mark.parametrize("mesh_sizes", [None, (2, 2, 2)])
def test_triton_kernel_matches_xla_outputs_and_grads(mesh_sizes):
    """Pallas Triton flash attention (interpret mode off GPU) on packed rows
    with padding: the same outputs and q/k/v gradients as XLA attention."""
    inputs, weights = _packed_qkv(2 if mesh_sizes is None else 4)
    run = jax.jit(functools.partial(_value_and_grads, "triton"))
    if mesh_sizes is None:
        triton = run(inputs, weights)
    else:  # batch and heads split over the mesh; the kernel runs in shard_map
        with jax.set_mesh(sharding.make_mesh(sharding.MeshConfig(*mesh_sizes))):
            triton = run(inputs, weights)
    xla = _value_and_grads("xla", inputs, weights)
    real = np.asarray(inputs[3] != 0)
    np.testing.assert_allclose(np.asarray(triton[0])[real], np.asarray(xla[0])[real], atol=1e-5)
    for name, ours, reference in zip("qkv", triton[1], xla[1]):
        np.testing.assert_allclose(ours, reference, atol=1e-4, err_msg=f"d{name}")


def test_gpu_training_forward_lowers_to_triton_without_a_t_by_t_tensor():
    """ "auto" for GPU, lowered for CUDA on this host: the gradient of the
    packed forward calls the Triton kernels and holds no [.., T, T] array."""
    t = 256
    model = Transformer(tiny_model_config(max_len=t, compute_dtype="bfloat16"), rngs=nnx.Rngs(0), platform="gpu")
    graph, params = nnx.split(model)
    tokens = random_tokens(2, t)
    loss = lambda p: jnp.mean(nnx.merge(graph, p)(tokens, arange_positions(2, t), jnp.ones((2, t), jnp.int32)))
    hlo = jax.jit(jax.grad(loss)).trace(params).lower(lowering_platforms=("cuda",)).as_text()
    assert hlo.count("xla.gpu.triton") >= 3  # forward, backward preparation, backward
    assert f"x{t}x{t}x" not in hlo
