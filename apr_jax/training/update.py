"""The update core SFT and GRPO share: gradients summed over microbatches,
the global gradient norm, the non-finite guard and the learning-rate log.
Only the loss differs between the two; everything here is pure and traced
inside their jitted steps."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from apr_jax.training.optim import Schedule
from apr_jax.training.train_state import Graphs, TrainState

# value_and_grad(params, microbatch) -> ((loss, aux), grads)
ValueAndGrad = Callable[[Any, Any], tuple[tuple[jax.Array, Any], Any]]


def summed_gradients(
    value_and_grad: ValueAndGrad,
    params: Any,
    microbatches: Any,
    *,
    active: Callable[[Any], jax.Array] | None = None,
    max_keys: Sequence[str] = (),
) -> tuple[tuple[jax.Array, Any], Any]:
    """``((loss, aux), grads)`` summed over the leading axis of ``microbatches``
    with one scan; the entries ``max_keys`` of a dict ``aux`` (non-negative
    values) are maxed instead. A microbatch for which ``active`` is false
    contributes zeros without being computed (all-padding microbatches)."""
    first = jax.tree.map(lambda x: x[0], microbatches)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(value_and_grad, params, first))

    def compute(micro):
        return value_and_grad(params, micro)

    def body(total, micro):
        if active is None:
            out = compute(micro)
        else:
            out = jax.lax.cond(active(micro), compute, lambda m: zeros, micro)
        summed = jax.tree.map(jnp.add, total, out)
        if max_keys:
            (loss, aux), grads = summed
            aux = {**aux, **{k: jnp.maximum(total[0][1][k], out[0][1][k]) for k in max_keys}}
            summed = ((loss, aux), grads)
        return summed, None

    total, _ = jax.lax.scan(body, zeros, microbatches)
    return total


def apply_gradients(
    graphs: Graphs,
    state: TrainState,
    grads: Any,
    loss: jax.Array,
    learning_rate: Schedule | None = None,
    schedule_steps: jax.Array | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update of ``state`` by ``grads``; when ``loss`` or the
    gradient norm is not finite the state comes back unchanged. The schedule
    ends at ``schedule_steps`` (None: ``train.steps``; ``apr_jax.training.optim``).
    Returns the new state and ``grad_norm``, ``finite`` and (with
    ``learning_rate``, the optimizer's schedule) ``lr``."""
    # merge() shares Variables with ``state``; the identity map keeps an
    # unaliased copy of the old values for the guard.
    old = jax.tree.map(lambda x: x, (state.model, state.opt))
    model, optimizer = graphs.merge(state)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    optimizer.update(model, grads, **({} if schedule_steps is None else {"schedule_steps": schedule_steps}))
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), (nnx.state(model), nnx.state(optimizer)), old)
    metrics = {"grad_norm": grad_norm, "finite": finite}
    if learning_rate is not None:
        metrics["lr"] = learning_rate(optimizer.step[...] - 1, schedule_steps)
    return TrainState(new[0], new[1], state.ref), metrics
