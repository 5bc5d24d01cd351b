"""A trained model for inference: its config, tokenizer and parameters from a
workdir (newest readable checkpoint) or one checkpoint folder."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Any, Sequence

import jax
import ml_collections
from flax import nnx

from apr_jax.config import loading as config_lib
from apr_jax.config.sections import RunConfig
from apr_jax.runtime.checkpoint import Checkpointer, CheckpointError, decode_bytes, split_checkpoint_path
from apr_jax.runtime.jsonl import read_jsonl
from apr_jax.tasks.registry import get_task


@dataclasses.dataclass
class Loaded:
    config: RunConfig
    tokenizer: Any
    model: nnx.Module
    step: int
    source: str


def _abstract_model(config: Any) -> Any:
    """The Transformer of ``config`` as shapes only (no parameters allocated)."""
    from apr_jax.model.transformer import Transformer

    return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))


def _on_device(x: Any, device: jax.sharding.Sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)


def load_for_inference(path: str) -> Loaded:
    """Load the model, config and tokenizer from a workdir (newest readable
    checkpoint) or from one checkpoint folder ``WORKDIR/checkpoints/STEP``."""
    from apr_jax.data.tokenizer import load_tokenizer

    path = os.path.abspath(path)
    workdir, wanted = split_checkpoint_path(path)
    if not os.path.exists(workdir):
        raise CheckpointError(f"checkpoint or workdir not found: {workdir}")
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise CheckpointError(f"{path} holds no checkpoints (expected {workdir}/checkpoints/STEP)")
    checkpointer = Checkpointer(workdir, read_only=True, async_save=False)
    steps = checkpointer.steps()
    if wanted is not None and wanted not in steps:
        raise CheckpointError(f"checkpoint step {wanted} not found in {workdir}/checkpoints (have {steps})")
    candidates = [wanted] if wanted is not None else list(reversed(steps))
    if not candidates:
        raise CheckpointError(f"no checkpoint in {workdir}/checkpoints")
    import orbax.checkpoint as ocp

    for step in candidates:
        try:
            meta = checkpointer.restore_meta(step)
            config = RunConfig.from_config(meta["config"])
            tokenizer = load_tokenizer(data=decode_bytes(meta["tokenizer_b64"]))
            model_cfg = config.model_for(tokenizer.vocab_size)
            abstract = _abstract_model(model_cfg)
            graphdef, state = nnx.split(abstract)
            # An explicit target sharding lets orbax read checkpoints written
            # by any topology (e.g. a multi-host slice) into this process.
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree.map(functools.partial(_on_device, device=device), nnx.to_pure_dict(state))
            params = checkpointer.manager.restore(
                step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target))
            )["params"]
            nnx.replace_by_pure_dict(state, params)
            return Loaded(
                config, tokenizer, nnx.merge(graphdef, state), step, os.path.join(checkpointer.directory, str(step))
            )
        except Exception as e:
            if wanted is not None or step == candidates[-1]:
                raise CheckpointError(
                    f"checkpoint {os.path.join(checkpointer.directory, str(step))} cannot be loaded "
                    f"with its own config and tokenizer ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:160] if str(e) else ''})"
                ) from None
            print(
                f"warning: checkpoint step {step} is unreadable ({type(e).__name__}); trying the previous one",
                file=sys.stderr,
            )
    raise CheckpointError(f"no readable checkpoint in {workdir}")


SPLIT_CHOICES = ("train", "validation", "test", "unseen")  # unseen: in no split of the dataset


def with_eval_overrides(config: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """``config`` with ``config.eval.*=value`` overrides applied (the rest of a
    checkpoint's config is what it was trained with). An ``eval`` key that
    the checkpoint's config predates takes its default and can be set too."""
    if not overrides:
        return config
    written = config.to_dict()
    written["eval"] = {**dataclasses.asdict(config.eval), **(written.get("eval") or {})}
    written = ml_collections.ConfigDict(written)
    for item in overrides:
        key, raw = item.split("=", 1)
        key = key.removeprefix("config.")
        if not key.startswith("eval."):
            raise ValueError(
                f"--config.{key}: only config.eval.* can change at evaluation; the rest comes from the checkpoint"
            )
        config_lib.apply_override(written, key, raw)
    return RunConfig.from_config(written)


def problems_for(flags: dict[str, str], config: RunConfig, num: int) -> list[Any]:
    """``--problems`` (every problem, or its first ``--num``), or the first ``num``
    of each split named in ``--split`` (comma-separated, concatenated in that order)."""
    task = get_task(config)
    if "problems" in flags:
        problems = read_jsonl(flags["problems"], task.problem_type.from_dict)
        return problems[:num] if "num" in flags else problems
    from apr_jax.data.build import build_dataset, make_problem_source

    splits = flags.get("split", "test").split(",")
    for split in splits:
        if split not in SPLIT_CHOICES:
            raise ValueError(f"--split={split!r} is not one of {', '.join(SPLIT_CHOICES)}")
    info = build_dataset(config, log=None)
    problems = []
    for split in splits:
        if split != "unseen":
            problems += make_problem_source(info, split)[:num]
            continue
        seen = {p.key for s in info.problem_paths for p in make_problem_source(info, s)}
        if not hasattr(task, "unseen"):
            raise ValueError(f"--split=unseen: the {task.name} task cannot draw problems outside its files")
        unseen = task.unseen(num, seen)
        if not unseen:
            raise ValueError("--split=unseen: every solvable problem in the task's ranges is in a split already")
        problems += unseen
    return problems
