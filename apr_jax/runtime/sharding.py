"""Device mesh from config, logical-axis rules, shardings and multi-host start-up.

Weights and activations are named with logical axes (``embed``, ``mlp``,
``activation_batch`` ...). ``LOGICAL_RULES`` maps each to mesh axes of the mesh
("data", "fsdp", "tensor"). A mesh axis is used at most once per array: a later
dimension whose rule names an axis already taken stays unsharded on it, and an
axis that does not divide the dimension is dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import threading
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Parameters.
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    # Activations.
    ("batch", BATCH_AXES),
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # KV cache [kv_heads, layers, lanes, slots, head_dim].
    ("cache_layers", None),
    ("cache_batch", BATCH_AXES),
    ("cache_length", None),
    ("cache_kv_heads", "tensor"),
    ("cache_head_dim", None),
)
_RULES = dict(LOGICAL_RULES)

LogicalAxes = Sequence[str | None]


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; exactly one may be -1, meaning "all remaining devices"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = self.sizes
        for name, size in zip(MESH_AXES, sizes):
            if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
                raise ValueError(f"mesh.{name} must be a positive integer or -1, got {size!r}")
        if sizes.count(-1) > 1:
            raise ValueError(
                f"at most one mesh axis may be -1, got data={self.data} fsdp={self.fsdp} tensor={self.tensor}"
            )

    @property
    def sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    @classmethod
    def from_config(cls, mesh_cfg: Any) -> "MeshConfig":
        """From a ``mesh`` section (a MeshConfig, ConfigDict or mapping); absent
        axes take the defaults above."""
        if isinstance(mesh_cfg, cls):
            return mesh_cfg
        section = dict(mesh_cfg.to_dict() if hasattr(mesh_cfg, "to_dict") else mesh_cfg)
        return cls(**{f.name: section.get(f.name, f.default) for f in dataclasses.fields(cls)})

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """Axis sizes with -1 filled in; their product must equal ``num_devices``."""
        known = math.prod(s for s in self.sizes if s != -1)
        sizes = self.sizes
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"mesh axes {dict(zip(MESH_AXES, sizes))} cannot fill "
                    f"{num_devices} devices ({num_devices} is not divisible by {known})"
                )
            sizes = tuple(num_devices // known if s == -1 else s for s in sizes)
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"mesh axes {dict(zip(MESH_AXES, sizes))} multiply to "
                f"{math.prod(sizes)}, but there are {num_devices} devices"
            )
        return sizes  # type: ignore[return-value]


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes ("data", "fsdp", "tensor") over ``devices`` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_cfg.resolve(len(devices))
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_to_spec(
    logical_axes: LogicalAxes, mesh: Mesh | Any | None = None, shape: Sequence[int] | None = None
) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry ``logical_axes``.

    With ``mesh``, mesh axes of size 1 are left out; with ``shape``, axes that
    do not divide their dimension are left out too.
    """
    if shape is not None and len(shape) != len(logical_axes):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match array shape {tuple(shape)}")
    axis_sizes = dict(mesh.shape) if mesh is not None else {}
    used: set[str] = set()
    entries = []
    for dim, name in enumerate(logical_axes):
        if name is None:
            entries.append(None)
            continue
        if name not in _RULES:
            raise ValueError(f"logical axis {name!r} has no rule in LOGICAL_RULES")
        rule = _RULES[name]
        candidates = (rule,) if isinstance(rule, str) else tuple(rule or ())
        chosen, divisor = [], 1
        for axis in candidates:
            size = axis_sizes.get(axis, 1) if mesh is not None else 1
            if axis in used or (mesh is not None and size == 1):
                continue
            if shape is not None and shape[dim] % (divisor * size):
                continue
            chosen.append(axis)
            divisor *= size
        used.update(chosen)
        entries.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*entries)


def logical_to_sharding(logical_axes: LogicalAxes, mesh: Mesh, shape: Sequence[int] | None = None) -> NamedSharding:
    """NamedSharding on ``mesh`` for an array with ``logical_axes``."""
    return NamedSharding(mesh, logical_to_spec(logical_axes, mesh, shape))


def _variable_axes(variable: nnx.Variable) -> tuple | None:
    return variable.get_metadata().get("out_sharding")


def model_state_shardings(state: Any, mesh: Mesh) -> Any:
    """A tree like ``state`` (an nnx State) holding each value's NamedSharding.

    Variables use their ``out_sharding`` logical axes; anything else with a
    shape is replicated.
    """
    replicated = NamedSharding(mesh, PartitionSpec())

    def to_sharding(leaf):
        if isinstance(leaf, nnx.Variable):
            axes = _variable_axes(leaf)
            value = leaf.get_value()
            if not axes:
                return leaf.replace(replicated)
            return leaf.replace(logical_to_sharding(axes, mesh, value.shape))
        return replicated if hasattr(leaf, "shape") else None

    return jax.tree.map(to_sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Places every parameter of ``model`` on ``mesh`` per its logical axes (in place)."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, model_state_shardings(state, mesh)))
    return model


def create_sharded_model(make_model: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
    """Builds ``make_model()`` directly in its sharded layout (no full copy on one device)."""
    abstract = nnx.eval_shape(make_model)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = model_state_shardings(abstract_state, mesh)

    init = jax.jit(lambda: nnx.state(make_model()), out_shardings=shardings)
    with jax.set_mesh(mesh):
        state = init()
    return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over ("data", "fsdp"); the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def constrain(x: jax.Array, logical_axes: LogicalAxes) -> jax.Array:
    """Sharding constraint by logical axes under ``jax.set_mesh``; a no-op without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not mesh.are_all_axes_auto:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, mesh, x.shape))


DISTRIBUTED_TIMEOUT_S = 300.0


def _startup_watchdog(timeout_s: float, what: str) -> threading.Timer:
    """A timer that ends the process with one clear line if start-up hangs.

    A coordinator that waits past its own deadline aborts inside C++ with a
    stack dump; this fires first and says what is wrong."""

    def fire() -> None:
        sys.stderr.write(
            f"error: multi-process start-up timed out after {timeout_s:.0f}s: {what} did not "
            f"all join; start the same command on every worker of the slice at once (launch/run.sh "
            f"does, with --worker=all), or set APR_JAX_DISTRIBUTED_TIMEOUT=seconds\n"
        )
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(timeout_s, fire)
    timer.daemon = True
    return timer


def initialize_distributed(force: bool = False) -> bool:
    """Starts multi-process JAX when the environment asks for it; returns True if it did.

    Uses JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID when all
    three are set; ``force`` (or APR_JAX_DISTRIBUTED=auto, as launch/run.sh sets
    on pod slices) calls ``jax.distributed.initialize()`` with JAX's own
    detection (TPU pod slices, SLURM, ...). Otherwise a no-op. If the processes
    have not all joined within APR_JAX_DISTRIBUTED_TIMEOUT seconds (default
    300), the process exits with one line saying so instead of hanging.
    """
    if jax.distributed.is_initialized():
        return False
    force = force or os.environ.get("APR_JAX_DISTRIBUTED", "") == "auto"
    raw_timeout = os.environ.get("APR_JAX_DISTRIBUTED_TIMEOUT", "") or str(DISTRIBUTED_TIMEOUT_S)
    try:
        timeout_s = float(raw_timeout)
    except ValueError:
        timeout_s = -1.0
    if not timeout_s > 0:
        raise ValueError(f"APR_JAX_DISTRIBUTED_TIMEOUT must be a positive number of seconds, got {raw_timeout!r}")
    names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    present = [n for n in names if os.environ.get(n)]
    if present and len(present) != len(names):
        missing = sorted(set(names) - set(present))
        raise ValueError(f"multi-process start-up needs {', '.join(missing)} as well as {', '.join(present)}")
    if not present and not force:
        return False
    kwargs: dict[str, Any] = {}
    what = "the processes of this slice"
    if present:
        kwargs = dict(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
        what = f"the {kwargs['num_processes']} processes of coordinator {kwargs['coordinator_address']}"
    watchdog = _startup_watchdog(timeout_s, what)
    watchdog.start()
    try:  # JAX's own deadline is later, so the watchdog's clear message comes first.
        jax.distributed.initialize(initialization_timeout=int(timeout_s) + 30, **kwargs)
    finally:
        watchdog.cancel()
    logging.info(
        "jax.distributed: process %d of %d, %d local devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
    )
    return True


def global_batch_from_process(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each host's rows into global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    local_shards = shards // jax.process_count()
    out = {}
    for name, array in local_batch.items():
        array = np.asarray(array)
        if array.ndim == 0 or array.shape[0] % max(1, local_shards):
            raise ValueError(
                f"batch field {name!r} with shape {array.shape} does not split "
                f"into {local_shards} per-host batch shards"
            )
        global_shape = (array.shape[0] * jax.process_count(), *array.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, array, global_shape)
    return out


def replicated_host_to_global(tree: Any, shardings: Any) -> Any:
    """Host values that every process holds in full (numpy or single-device
    arrays) -> global arrays with ``shardings``, each process filling its own
    devices' shards; works on one process and across several."""

    def put(value, sharding):
        host = np.asarray(jax.device_get(value))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)
