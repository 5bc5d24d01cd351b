"""Pure, jitted SFT train and eval steps over a ``TrainState``.

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
from flax import nnx

from apr_jax.model.tree_mask import TreeMask
from apr_jax.runtime import sharding
from apr_jax.training.loss import masked_lm_loss
from apr_jax.training.optim import Schedule, learning_rate_schedule
from apr_jax.training.train_state import Graphs, TrainState, build_model_and_optimizer, shardings_of, split
from apr_jax.training.update import apply_gradients, summed_gradients

Batch = dict[str, jax.Array]


def _split_microbatches(batch: Batch, accum: int) -> Batch:
    """[B, ...] -> [accum, B/accum, ...] taking rows i*accum + a into
    microbatch a, so every device keeps its own rows (no resharding)."""

    def split(x):
        return x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def attention_keys(batch: Batch) -> jax.Array | TreeMask:
    """What the batch's tokens attend to: its segment ids, or a ``TreeMask``
    when it holds tree sequences (``hidden_from``/``hidden_until``)."""
    if "hidden_from" not in batch:
        return batch["segment_ids"]
    return TreeMask(batch["segment_ids"], batch["hidden_from"], batch["hidden_until"])


def make_loss_fn(model_graphdef: nnx.GraphDef, rest: Any) -> Callable:
    def loss_fn(params: Any, batch: Batch):
        model = nnx.merge(model_graphdef, params, rest)
        logits = model(batch["tokens"], batch["positions"], attention_keys(batch))
        loss_sum, count, correct = masked_lm_loss(logits, batch)
        return loss_sum, (count, correct)

    return loss_fn


def _split_params(graphs: Graphs, state: TrainState) -> tuple[nnx.GraphDef, Any, Any]:
    return nnx.split(nnx.merge(graphs.model, state.model), nnx.Param, ...)


def make_train_step(
    graphs: Graphs,
    state_shardings: TrainState,
    batch_shardings: Any,
    *,
    grad_accum: int = 1,
    learning_rate: Schedule | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """Returns ``step(state, batch, schedule_steps) -> (state, metrics)``,
    jitted and donating state; ``schedule_steps`` (an int32 scalar, traced) is
    the step where the learning-rate schedule ends (``apr_jax.training.optim``)."""

    def step(state: TrainState, batch: Batch, schedule_steps: jax.Array):
        model_graphdef, params, rest = _split_params(graphs, state)
        grad_fn = jax.value_and_grad(make_loss_fn(model_graphdef, rest), has_aux=True)
        if grad_accum == 1:
            (loss_sum, (count, correct)), grads = grad_fn(params, batch)
        else:
            (loss_sum, (count, correct)), grads = summed_gradients(
                grad_fn, params, _split_microbatches(batch, grad_accum)
            )
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        loss = loss_sum / denom
        state, update = apply_gradients(graphs, state, grads, loss, learning_rate, schedule_steps)
        metrics = {
            "loss": loss,
            "grad_norm": update["grad_norm"],
            "token_accuracy": correct / denom,
            "loss_tokens": count,
            "finite": update["finite"],
        }
        if "lr" in update:
            metrics["lr"] = update["lr"]
        return state, metrics

    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_shardings, None),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )


def make_eval_step(
    graphs: Graphs, state_shardings: TrainState, batch_shardings: Any
) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """Returns ``eval_step(state, batch) -> {loss_sum, count, correct}``."""

    def eval_step(state: TrainState, batch: Batch):
        model_graphdef, params, rest = _split_params(graphs, state)
        loss_sum, (count, correct) = make_loss_fn(model_graphdef, rest)(params, batch)
        return {"loss_sum": loss_sum, "count": count, "correct": correct}

    return jax.jit(eval_step, in_shardings=(state_shardings, batch_shardings))


def build_train_step(config: Any, vocab_size: int, mesh: jax.sharding.Mesh) -> tuple[Any, Graphs, TrainState, Callable]:
    """A run config's model config, graphs, fresh sharded state and jitted
    train step (batches sharded over the mesh's batch axes): what SFT trains
    with and what the throughput benchmarks time."""
    model_cfg, model, optimizer = build_model_and_optimizer(config, vocab_size, mesh)
    graphs, state = split(model, optimizer)
    step = make_train_step(
        graphs,
        shardings_of(state),
        sharding.batch_sharding(mesh),
        grad_accum=config.train.grad_accum,
        learning_rate=learning_rate_schedule(config.train),
    )
    return model_cfg, graphs, state, step
