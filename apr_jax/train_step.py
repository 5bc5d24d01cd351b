"""Pure, jitted SFT train and eval steps over an NNX (model, optimizer) state.

The step takes the whole state as one pytree (donated, sharded as it already
is) and a global batch sharded over the batch axes. Gradient accumulation
splits the batch into ``grad_accum`` microbatches inside the step; the loss is
the mean over every model-written token of the whole batch either way.
A step whose loss or gradient is not finite leaves the state unchanged and
reports ``finite=False``; the host decides whether to stop or go on.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from apr_jax.loss import masked_lm_loss

Batch = dict[str, jax.Array]


def _split_microbatches(batch: Batch, accum: int) -> Batch:
    """[B, ...] -> [accum, B/accum, ...] taking rows i*accum + a into
    microbatch a, so every device keeps its own rows (no resharding)."""
    def split(x):
        return x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
    return jax.tree.map(split, batch)


def make_loss_fn(model_graphdef: nnx.GraphDef, rest: Any) -> Callable:
    def loss_fn(params: Any, batch: Batch):
        model = nnx.merge(model_graphdef, params, rest)
        logits = model(batch["tokens"], batch["positions"], batch["segment_ids"])
        loss_sum, count, correct = masked_lm_loss(logits, batch)
        return loss_sum, (count, correct)
    return loss_fn


def make_train_step(graphdef: nnx.GraphDef, state_shardings: Any, batch_shardings: Any,
                    *, grad_accum: int = 1, learning_rate: optax.Schedule | None = None
                    ) -> Callable[[Any, Batch], tuple[Any, dict[str, jax.Array]]]:
    """Returns ``step(state, batch) -> (state, metrics)``, jitted and donating state."""

    def step(state, batch: Batch):
        # merge() shares Variables with ``state``; keep an unaliased copy of the
        # old values for the non-finite guard below.
        old_state = jax.tree.map(lambda x: x, state)
        model, optimizer = nnx.merge(graphdef, state)
        model_graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        grad_fn = jax.value_and_grad(make_loss_fn(model_graphdef, rest), has_aux=True)
        if grad_accum == 1:
            (loss_sum, (count, correct)), grads = grad_fn(params, batch)
        else:
            def body(carry, micro):
                (l, (c, k)), g = grad_fn(params, micro)
                acc_l, acc_c, acc_k, acc_g = carry
                return (acc_l + l, acc_c + c, acc_k + k, jax.tree.map(jnp.add, acc_g, g)), None
            zeros = jax.tree.map(jnp.zeros_like, params)
            init = (jnp.zeros(()), jnp.zeros(()), jnp.zeros(()), zeros)
            (loss_sum, count, correct, grads), _ = jax.lax.scan(
                body, init, _split_microbatches(batch, grad_accum))
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        loss = loss_sum / denom
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        optimizer.update(model, grads)
        new_state = nnx.state((model, optimizer))
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, old_state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "token_accuracy": correct / denom,
                   "loss_tokens": count, "finite": finite}
        if learning_rate is not None:
            metrics["lr"] = learning_rate(optimizer.step[...] - 1)
        return new_state, metrics

    return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))


def make_eval_step(graphdef: nnx.GraphDef, state_shardings: Any, batch_shardings: Any
                   ) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """Returns ``eval_step(state, batch) -> {loss_sum, count, correct}``."""

    def eval_step(state, batch: Batch):
        model, _ = nnx.merge(graphdef, state)
        model_graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        loss_sum, (count, correct) = make_loss_fn(model_graphdef, rest)(params, batch)
        return {"loss_sum": loss_sum, "count": count, "correct": correct}

    return jax.jit(eval_step, in_shardings=(state_shardings, batch_shardings))
