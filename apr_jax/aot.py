"""Ahead-of-time compile of the train step, or of the evaluation engine, for a
named TPU slice, on any host.

    python -m apr_jax.aot --config=configs/countdown4_apr_228m.py --topology=v4-32,v5p-64
    python -m apr_jax.aot --config=configs/countdown4_apr_228m.py --topology=v4-32,v5p-64 \
        --remat=none,dots,full     # one compile per policy and slice
    python -m apr_jax.aot --config=configs/countdown4_apr_228m.py --topology=v4-32,v5p-64 \
        --step=engine --problems=256   # the spawn/join engine evaluating 256 problems

The engine compile is the decoder evaluation runs (``eval`` section, the run's
mesh, each batch shard with its own lanes) with one row and one KV-length
bucket: the other buckets are smaller copies of the same branch, so the
largest one sets the memory plan and one branch keeps the compile short.

XLA compiles exactly the program ``python -m apr_jax.train`` would run on that
slice (same model, optimizer, mesh, shardings, batch and attention kernel) and
reports the memory it plans per device, so a sharding that does not fit shows
up before anyone pays for the slice. Nothing is executed and no TPU is needed,
but the TPU compiler is: it ships in the ``libtpu`` wheel (the ``tpu`` extra).
On a host without TPUs, keep it out of site-packages (an installed libtpu makes
every JAX start probe for TPU hardware) and install it aside:

    pip install --target ~/.cache/apr_jax/libtpu "libtpu==0.0.42.*"   # jax 0.10.2
    python -m apr_jax.aot ...   # finds it there; or set TPU_LIBRARY_PATH / --libtpu=PATH

Without libtpu the command says so in one line: a CPU-only jaxlib cannot
compile for TPU at all. ``--topology=cpu`` compiles for this host's devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from apr_jax.cli import Command, Flag, int_flag, parse_command_line, run_command
from apr_jax.config.loading import load_run_config
from apr_jax.config.sections import RunConfig
from apr_jax.data.pipeline import FEATURES, TREE_FEATURES
from apr_jax.data.tree_sequence import MASK_RANGES
from apr_jax.decode.engine import decode_page_size, make_decoder
from apr_jax.decode.model_api import NnxDecode
from apr_jax.decode.protocol_ids import ProtocolIds
from apr_jax.evaluation.scoring import engine_config
from apr_jax.model.config import REMATS, num_params
from apr_jax.runtime import sharding
from apr_jax.training import train_state
from apr_jax.training.optim import learning_rate_schedule
from apr_jax.training.train_step import make_train_step

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class TopologySpec:
    """A TPU slice as the compiler sees it."""

    accelerator_type: str  # the gcloud name, e.g. "v4-32"
    chip: str  # compiler's chip name: v4, v5p, v5e, v6e
    shape: str  # chips per axis, e.g. "2x2x4"
    chip_config: str  # "megacore" (one device per chip on v4/v5p) or "default"
    chips_per_host: tuple[int, int, int]
    hbm_bytes_per_device: int

    @property
    def num_devices(self) -> int:
        return math.prod(int(x) for x in self.shape.split("x"))

    @property
    def num_hosts(self) -> int:
        return max(1, self.num_devices // math.prod(self.chips_per_host))


# Chips per slice -> chip grid. v4/v5p names count TensorCores (2 per chip);
# v5e ("v5litepod") and v6e names count chips.
_GRID_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8", 512: "8x8x8"}
_GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_FAMILIES = {  # prefix: (chip, cores per chip, grids, chip config, HBM GiB per device)
    "v4": ("v4", 2, _GRID_3D, "megacore", 32),
    "v5p": ("v5p", 2, _GRID_3D, "megacore", 95),
    "v5litepod": ("v5e", 1, _GRID_2D, "default", 16),
    "v6e": ("v6e", 1, _GRID_2D, "default", 32),
}


def known_accelerator_types() -> list[str]:
    names = []
    for prefix, (_, cores, grids, _, _) in _FAMILIES.items():
        names += [f"{prefix}-{chips * cores}" for chips in grids]
    return names


def topology_spec(accelerator_type: str) -> TopologySpec:
    """The compiler's view of a gcloud accelerator type; ValueError if unknown."""
    prefix, _, count = accelerator_type.rpartition("-")
    family = _FAMILIES.get(prefix)
    if family is None or not count.isdigit() or int(count) % family[1] or int(count) // family[1] not in family[2]:
        raise ValueError(
            f"unknown TPU accelerator type {accelerator_type!r}; known: {', '.join(known_accelerator_types())}"
        )
    chip, cores, grids, chip_config, hbm_gib = family
    shape = grids[int(count) // cores]
    host = (2, 2, 1)  # four chips per host ...
    if shape.count("x") == 1 and int(count) <= 8:  # ... except single-host v5e/v6e slices
        host = (*(int(x) for x in shape.split("x")), 1)
    return TopologySpec(accelerator_type, chip, shape, chip_config, host, hbm_gib * GIB)


DEFAULT_LIBTPU = "~/.cache/apr_jax/libtpu/libtpu/libtpu.so"


def libtpu_path(explicit: str | None = None) -> str | None:
    """The TPU compiler library: ``explicit``, TPU_LIBRARY_PATH, an installed
    libtpu module, or ``DEFAULT_LIBTPU``; None when there is none."""
    if explicit:
        path = os.path.expanduser(explicit)
        if not os.path.isfile(path):
            raise ValueError(f"--libtpu={explicit}: no such file")
        return path
    env = os.environ.get("TPU_LIBRARY_PATH")
    if env and os.path.isfile(os.path.expanduser(env)):
        return os.path.expanduser(env)
    try:
        import libtpu  # type: ignore[import-not-found]
    except ImportError:
        default = os.path.expanduser(DEFAULT_LIBTPU)
        return default if os.path.isfile(default) else None
    return libtpu.get_library_path()


def topology_devices(spec: TopologySpec, libtpu: str | None = None) -> list[jax.Device]:
    """Compile-only devices of the slice (needs libtpu, not a TPU)."""
    from jax.experimental import topologies

    path = libtpu_path(libtpu)
    if path is None:
        raise RuntimeError(
            "compiling for TPU needs the TPU compiler (libtpu), which CPU-only jaxlib lacks; "
            'install it with `pip install --target ~/.cache/apr_jax/libtpu "libtpu==0.0.42.*"` '
            "(found there by default), or pass --libtpu=PATH / set TPU_LIBRARY_PATH"
        )
    # libtpu reads these when it initialises; on a host without TPUs they would
    # otherwise be looked up from the (absent) TPU VM metadata. Set only while
    # the plugin starts, so nothing leaks into later (sub)processes.
    settings = {"TPU_LIBRARY_PATH": path}
    if not (os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")):
        # No TPU VM here: no metadata to look up and no chips to guard, so
        # several compile-only processes may load libtpu at once.
        settings.update(
            TPU_ACCELERATOR_TYPE=spec.accelerator_type,
            TPU_WORKER_HOSTNAMES="localhost",
            TPU_SKIP_MDS_QUERY="1",
            ALLOW_MULTIPLE_LIBTPU_LOAD="1",
        )
    with _environment(settings):
        topology = topologies.get_topology_desc(
            f"{spec.chip}:{spec.shape}",
            "tpu",
            chip_config_name=spec.chip_config,
            chips_per_host_bounds=spec.chips_per_host,
            num_slices=1,
            wrap=(False, False, False),
        )
    return list(topology.devices)


@contextlib.contextmanager
def _environment(settings: dict[str, str]) -> Iterator[None]:
    """Environment variables set for a block, then restored."""
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def abstract_train_state(
    config: RunConfig, vocab_size: int, mesh: jax.sharding.Mesh, platform: str | None = None
) -> tuple[train_state.Graphs, train_state.TrainState, train_state.TrainState]:
    """(graphs, abstract state, state shardings) of the trainer's model (built
    for ``platform``, default this host's backend) and optimizer."""

    def make():
        model = train_state.new_model(config, vocab_size, platform)
        return model, train_state.new_optimizer(model, config)

    graphs, abstract = train_state.split(*nnx.eval_shape(make))
    shardings = sharding.model_state_shardings(abstract, mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    return graphs, abstract, shardings


def abstract_batch(config: RunConfig, mesh: jax.sharding.Mesh) -> dict:
    """The train step's batch as the input pipeline makes it (with the tree
    features in the inherit family)."""
    shape_BxL = (config.train.batch_size, config.data.seq_len)
    batch_sharding = sharding.batch_sharding(mesh)
    batch = {name: jax.ShapeDtypeStruct(shape_BxL, jnp.int32, sharding=batch_sharding) for name in FEATURES}
    if config.data.context == "inherit":
        batch.update(
            {
                name: jax.ShapeDtypeStruct((*shape_BxL, MASK_RANGES), jnp.int32, sharding=batch_sharding)
                for name in TREE_FEATURES
            }
        )
    return batch


def compile_train_step(config: RunConfig, vocab_size: int, devices: Sequence[jax.Device]) -> jax.stages.Compiled:
    """Lowers and compiles train.py's step for ``devices`` without running it."""
    mesh = sharding.make_mesh(config.mesh, devices)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = config.train.batch_size // config.train.grad_accum
    if micro % shards:
        raise ValueError(
            f"config.train.batch_size={config.train.batch_size} (microbatch {micro}) "
            f"does not divide over the {shards} data-parallel devices of the mesh "
            f"{dict(mesh.shape)}"
        )
    graphs, state, shardings = abstract_train_state(config, vocab_size, mesh, devices[0].platform)
    step = make_train_step(
        graphs,
        shardings,
        sharding.batch_sharding(mesh),
        grad_accum=config.train.grad_accum,
        learning_rate=learning_rate_schedule(config.train),
    )
    with jax.set_mesh(mesh):  # as train.py calls it
        return step.lower(state, abstract_batch(config, mesh), jax.ShapeDtypeStruct((), jnp.int32)).compile()


def compile_engine(
    config: RunConfig, vocab_size: int, devices: Sequence[jax.Device], num_problems: int, prompt_width: int
) -> jax.stages.Compiled:
    """Lowers and compiles evaluation's engine loop (``num_problems`` prompts of
    ``prompt_width`` tokens, the ``eval`` section's samples, lanes and limits)
    for ``devices`` without running it."""
    mesh = sharding.make_mesh(config.mesh, devices)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if num_problems % shards:
        raise ValueError(
            f"--problems={num_problems} does not divide over the {shards} data-parallel "
            f"devices of the mesh {dict(mesh.shape)}"
        )
    model = nnx.eval_shape(lambda: train_state.new_model(config, vocab_size, devices[0].platform))
    graphdef, params = nnx.split(model)
    params = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        params,
        sharding.model_state_shardings(params, mesh),
    )
    cfg = dataclasses.replace(engine_config(config, samples=int(config.eval.samples)), row_buckets=1, kv_buckets=1)
    decode = make_decoder(
        NnxDecode(graphdef),
        model.init_cache,
        cfg,
        ProtocolIds(),
        num_problems,
        prompt_width,
        page_size=decode_page_size(cfg, model.decode_page_size),
    )
    batch = sharding.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    args = (
        params,
        jax.ShapeDtypeStruct((num_problems, prompt_width), jnp.int32, sharding=batch),
        jax.ShapeDtypeStruct((num_problems,), jnp.int32, sharding=batch),
        jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        jax.eval_shape(lambda: jax.random.key(0)),
        jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
    )
    with jax.set_mesh(mesh):  # as evaluation calls it
        return decode.lower(*args).compile()


def memory_report(compiled: jax.stages.Compiled) -> dict[str, int]:
    """Bytes XLA plans per device: inputs, outputs, temporaries, aliased
    (donated inputs reused as outputs) and their peak sum."""
    m = compiled.memory_analysis()
    report = {
        "arguments": int(m.argument_size_in_bytes),
        "outputs": int(m.output_size_in_bytes),
        "temporaries": int(m.temp_size_in_bytes),
        "aliased": int(m.alias_size_in_bytes),
        "code": int(m.generated_code_size_in_bytes),
    }
    report["total"] = (
        report["arguments"] + report["outputs"] - report["aliased"] + report["temporaries"] + report["code"]
    )
    return report


def check_topology(
    config: RunConfig,
    accelerator_type: str,
    libtpu: str | None = None,
    step: str = "train",
    problems: int = 0,
    prompt_width: int = 32,
) -> dict[str, Any]:
    """Compile ``step`` ("train" or "engine": evaluating ``problems`` prompts)
    for one slice ("cpu": this host's devices); returns its per-device memory
    plan and whether it fits the device memory."""
    if accelerator_type == "cpu":
        devices, hosts, hbm = jax.devices("cpu"), 1, None
    else:
        spec = topology_spec(accelerator_type)
        devices, hosts, hbm = topology_devices(spec, libtpu), spec.num_hosts, spec.hbm_bytes_per_device
    started = time.time()
    result = {
        "topology": accelerator_type,
        "step": step,
        "remat": config.model.remat,
        "devices": len(devices),
        "hosts": hosts,
        "device_kind": devices[0].device_kind,
        "hbm_per_device": hbm,
    }
    try:
        if step == "engine":
            result["problems"] = problems
            compiled = compile_engine(config, config.data.vocab_size, devices, problems, prompt_width)
        else:
            compiled = compile_train_step(config, config.data.vocab_size, devices)
    except jax.errors.JaxRuntimeError as e:  # the compiler itself refuses a plan over HBM
        if not str(e).startswith("RESOURCE_EXHAUSTED"):
            raise
        result.update(compile_s=round(time.time() - started, 1), memory=None, fits=False, error=str(e).splitlines()[0])
        return result
    memory = memory_report(compiled)
    result.update(compile_s=round(time.time() - started, 1), memory=memory, fits=hbm is None or memory["total"] <= hbm)
    return result


def _size(num_bytes: int) -> str:
    return f"{num_bytes / GIB:.2f} GiB" if num_bytes >= GIB // 10 else f"{num_bytes / 2**20:.1f} MiB"


def format_result(result: dict[str, Any]) -> str:
    what = f"engine ({result['problems']} problems)" if result.get("step") == "engine" else f"remat={result['remat']}"
    if result["memory"] is None:
        return (
            f"{result['topology']} {what}: {result['devices']} x "
            f"{result['device_kind']} ({result['hosts']} hosts): DOES NOT FIT: {result['error']} "
            f"[compiled in {result['compile_s']}s]"
        )
    m = {k: _size(v) for k, v in result["memory"].items()}
    verdict = "fits" if result["fits"] else "DOES NOT FIT"
    return (
        f"{result['topology']} {what}: {result['devices']} x {result['device_kind']} "
        f"({result['hosts']} hosts), per device: arguments {m['arguments']}, "
        f"temporaries {m['temporaries']}, outputs {m['outputs']} "
        f"(aliased {m['aliased']}), total {m['total']}"
        + (f" of {result['hbm_per_device'] / GIB:.0f} GiB HBM: {verdict}" if result["hbm_per_device"] else "")
        + " "
        f"[compiled in {result['compile_s']}s]"
    )


COMMAND = Command(
    "python -m apr_jax.aot",
    "Compile the train step or the evaluation engine ahead of time for TPU slices; report memory per device.",
    flags=(
        Flag("config", "the config file (default configs/default.py)", value="FILE"),
        Flag(
            "topology",
            "slices, comma-separated (v4-32, v5p-64, ...; cpu: this host's devices)",
            value="NAMES",
            required=True,
            example="v4-32,v5p-64",
        ),
        Flag(
            "remat",
            f"remat policies to compile, comma-separated: {', '.join(REMATS)} (default config.model.remat)",
            value="POLICIES",
        ),
        Flag("step", "what to compile, comma-separated: train, engine (default train)", value="STEPS"),
        Flag(
            "problems", "problems the engine evaluates at once (default config.eval.batch_problems or 256)", value="N"
        ),
        Flag(
            "libtpu",
            "the libtpu.so to compile with (default: TPU_LIBRARY_PATH, an installed "
            "libtpu, or ~/.cache/apr_jax/libtpu)",
            value="PATH",
        ),
        Flag("json", "also write the results as JSON", value="FILE"),
    ),
    overrides="set one config key, e.g. --config.train.batch_size=16",
    examples=(
        "python -m apr_jax.aot --config=configs/countdown4_apr_228m.py --topology=v4-32,v5p-64 --remat=none,dots,full",
    ),
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int:
        flags, overrides = parse_command_line(argv, COMMAND)
        if not flags.get("topology"):
            raise ValueError("--topology is required, e.g. --topology=v4-32,v5p-64")
        config = load_run_config(flags.get("config"), overrides)
        names = [t.strip() for t in flags["topology"].split(",") if t.strip()]
        remats = [r.strip() for r in flags.get("remat", config.model.remat).split(",") if r.strip()]
        for remat in remats:
            if remat not in REMATS:
                raise ValueError(f"--remat={remat} is not one of {', '.join(REMATS)}")
        steps = [x.strip() for x in flags.get("step", "train").split(",") if x.strip()]
        for step in steps:
            if step not in ("train", "engine"):
                raise ValueError(f"--step={step} is not one of train, engine")
        problems = int_flag(flags, "problems", int(config.eval.batch_problems) or 256, zero_ok=False)
        for name in names:
            if name != "cpu":
                topology_spec(name)  # every name checked before the first compile
        print(
            f"{config.name}: {num_params(config.model) / 1e6:.2f}M parameters, batch "
            f"{config.train.batch_size} x {config.data.seq_len}, mesh {config.section('mesh')}",
            flush=True,
        )
        results = []
        for step in steps:
            for remat in remats if step == "train" else [config.model.remat]:
                run = config.replace(model=dataclasses.replace(config.model, remat=remat))
                for name in names:
                    results.append(check_topology(run, name, flags.get("libtpu"), step, problems))
                    print(format_result(results[-1]), flush=True)
        if flags.get("json"):
            with open(flags["json"], "w") as f:
                json.dump(results, f, indent=1)
        return 0 if all(r["fits"] for r in results) else 1

    return run_command(body, usage=(ValueError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
