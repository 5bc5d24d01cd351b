"""GRPO in the inherit family: rollouts sampled by the engine in stitch and
linear mode become tree-sequence rows (``apr_jax.rl.tree_pack``), and the
update's forward on those rows gives every sampled token the log-probability
the engine sampled it with: the packing, the moved hidden ranges and the
tree mask reproduce what each token saw while decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers.inherit import NESTED_LIMITS, CharEncoder, memorized_model, nested_tree

from apr_jax.decode import EngineConfig, ProtocolIds, SamplingConfig
from apr_jax.decode.engine_loop import ROLE_MODEL
from apr_jax.decode.model_api import as_decode_model
from apr_jax.model.tree_mask import TreeMask
from apr_jax.rl.grpo import GrpoConfig, make_grpo_update, target_logprobs
from apr_jax.rl.rollout import encode_prompts, engine_arrays, make_rollout
from apr_jax.rl.tree_pack import pack_tree_update
from apr_jax.training import train_state

ENC = CharEncoder()
P, G = 2, 3
TEMPERATURE = 2.5  # the memorized decoder is near-certain; a hot sampler makes the log-probs tell


def _rollouts(join):
    """Two prompts, three samples each, hot, from the memorized decoder."""
    model = memorized_model(join)
    cfg = EngineConfig(
        **NESTED_LIMITS,
        row_buckets=1,
        kv_buckets=2,
        context="inherit",
        join=join,
        sampling=SamplingConfig(temperature=TEMPERATURE),
        samples_per_problem=G,
        batch_problems=0,
    )
    decode = as_decode_model(model)
    prompt = ENC.encode(nested_tree().threads[0].segments[0].text)
    rollout = make_rollout(decode.decode_fn, decode.init_cache, cfg, ProtocolIds(), prompt_width=4)
    batch = jax.device_get(rollout(decode.params, jax.random.key(3), encode_prompts([prompt, prompt], width=4)))
    return model, engine_arrays(batch, P)


@pytest.mark.parametrize("join", ["stitch", "linear"])
def test_tree_rows_reproduce_the_sampling_logprobs_and_the_update_trains_on_them(join):
    model, arrays = _rollouts(join)
    threads_N = arrays["next_free"].reshape(-1)
    assert (threads_N > 1).sum() >= 3 and threads_N.max() >= 4  # most forked, some more than once
    adv_N = np.linspace(-1.0, 1.0, P * G).astype(np.float32)
    keep_N = np.array([True] * (P * G - 1) + [False])
    packed, truncated = pack_tree_update(
        arrays, adv_N, keep_N, join=join, ids=ProtocolIds(), minibatches=2, row_len=256
    )
    assert truncated == 0 and packed.tokens_RxL.shape == (P * G, 256)
    assert packed.segment_ids_RxL.max() >= 2  # rows hold several trees: hidden ranges moved with them

    # Every model-written token of a kept rollout is trained once, with its rollout's advantage.
    written_N = (arrays["role"] == ROLE_MODEL).sum(axis=(2, 3)).reshape(-1)
    for n in range(P * G):
        mine = (packed.rollout_RxL == n) & (packed.mask_RxL > 0)
        assert mine.sum() == (written_N[n] if keep_N[n] else 0), n
        assert np.all(packed.adv_RxL[mine] == adv_N[n])

    # The tree-masked forward on the packed rows gives each token the engine's log-prob.
    mask = TreeMask(
        jnp.asarray(packed.segment_ids_RxL),
        jnp.asarray(packed.hidden_from_RxLxM),
        jnp.asarray(packed.hidden_until_RxLxM),
    )
    logits = model(jnp.asarray(packed.tokens_RxL), jnp.asarray(packed.positions_RxL), mask)
    logp_RxL = np.asarray(target_logprobs(logits, jnp.asarray(packed.tokens_RxL), TEMPERATURE))
    counted = packed.mask_RxL > 0
    np.testing.assert_allclose(logp_RxL[counted], packed.old_logp_RxL[counted], atol=2e-4)
    assert np.abs(packed.old_logp_RxL[counted]).mean() > 0.05  # sampled, not only near-certain tokens

    # The GRPO update on these rows: its recomputed old log-probs match the
    # engine's, the step is finite and moves the parameters.
    graphs, state = train_state.split(model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param))
    cfg = GrpoConfig(kl_coef=0.0, minibatches=2, microbatches=1, temperature=TEMPERATURE, old_logprobs="recompute")
    update = make_grpo_update(graphs, cfg, num_rollouts=P * G)
    new_state, metrics = update(jax.tree.map(jnp.array, state), packed, None)
    assert bool(metrics["finite"]) and float(metrics["logp_gap_max"]) < 2e-4
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state.model, state.model)
    assert max(jax.tree.leaves(moved)) > 0
