"""The named train state and how training builds it.

``TrainState`` is the pytree the jitted steps take and return: the model's
variables, the optimizer's state (its update count included) and, for RL,
the frozen reference parameters. ``Graphs`` are the static halves that turn
it back into NNX objects inside a step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from apr_jax.config.sections import RunConfig
from apr_jax.model.config import ModelConfig
from apr_jax.model.transformer import Transformer
from apr_jax.runtime import sharding
from apr_jax.training.optim import make_optimizer


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    model: nnx.State  # every model variable
    opt: nnx.State  # optimizer state and update count
    ref: nnx.State | None = None  # RL: the frozen reference model's nnx.Param state

    @property
    def step(self) -> jax.Array:
        """Optimizer updates applied so far."""
        return self.opt["step"][...]

    def checkpoint_trees(self) -> tuple[dict, dict]:
        """(params, opt_state) as the pure dicts checkpoints hold."""
        return nnx.to_pure_dict(self.model), nnx.to_pure_dict(self.opt)

    def replace_from_checkpoint(self, params: dict, opt_state: dict) -> None:
        """Take restored pure dicts in place (model and optimizer state)."""
        nnx.replace_by_pure_dict(self.model, params)
        nnx.replace_by_pure_dict(self.opt, opt_state)


@dataclasses.dataclass(frozen=True)
class Graphs:
    """The static structure of the model and the optimizer."""

    model: nnx.GraphDef
    opt: nnx.GraphDef

    def merge(self, state: TrainState) -> tuple[nnx.Module, nnx.Optimizer]:
        return nnx.merge(self.model, state.model), nnx.merge(self.opt, state.opt)


def new_model(config: RunConfig, vocab_size: int, platform: str | None = None) -> Transformer:
    """The model per ``config`` (concrete, or abstract under ``nnx.eval_shape``)
    for training on ``platform`` (default: JAX's default backend)."""
    return Transformer(config.model_for(vocab_size), rngs=nnx.Rngs(config.seed), platform=platform)


def new_optimizer(model: nnx.Module, config: RunConfig) -> nnx.Optimizer:
    return nnx.Optimizer(model, make_optimizer(config.train), wrt=nnx.Param)


def build_model_and_optimizer(
    config: RunConfig, vocab_size: int, mesh: jax.sharding.Mesh
) -> tuple[ModelConfig, Transformer, nnx.Optimizer]:
    """The model created in its sharded layout and its optimizer."""
    model = sharding.create_sharded_model(lambda: new_model(config, vocab_size), mesh)
    with jax.set_mesh(mesh):
        optimizer = new_optimizer(model, config)
    return model.cfg, model, optimizer


def split(model: nnx.Module, optimizer: nnx.Optimizer) -> tuple[Graphs, TrainState]:
    model_graph, model_state = nnx.split(model)
    opt_graph, opt_state = nnx.split(optimizer)
    return Graphs(model_graph, opt_graph), TrainState(model_state, opt_state)


def frozen_params(model_state: nnx.State, graphs: Graphs) -> nnx.State:
    """An unaliased copy of the model's ``nnx.Param`` state (the RL reference)."""
    _, params, _ = nnx.split(nnx.merge(graphs.model, model_state), nnx.Param, ...)
    return jax.jit(lambda t: jax.tree.map(jnp.copy, t))(params)


def shardings_of(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.sharding, tree)


def abstract_like(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
