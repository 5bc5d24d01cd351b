"""Checkpoints: model parameters, optimizer state, data-iterator state, the
resolved config and the tokenizer, saved together (asynchronously, atomically)
by orbax under ``WORKDIR/checkpoints/<step>/``.

A checkpoint that cannot be read (truncated, partly written) is skipped with a
warning naming it, and the previous one is used; nothing is ever deleted here
except by orbax's keep-the-last-K policy after a newer save succeeded.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from typing import Any, Callable

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

ITEMS = ("params", "opt_state", "data", "meta")


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unusable; the message is one line for the user."""


class _IteratorSnapshot:
    """A data iterator's state captured now, so an async save cannot race the
    training loop that keeps advancing the live iterator."""

    def __init__(self, iterator: Any):
        self._state = json.dumps(iterator.get_state(), indent=1).encode()

    def get_state(self) -> bytes:
        return self._state


def encode_file(path: str) -> str:
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def decode_bytes(data_b64: str) -> bytes:
    """The bytes ``encode_file`` stored (e.g. a tokenizer's serialized model)."""
    return base64.b64decode(data_b64)


class _DropReadOnlyNotice(logging.Filter):
    """Orbax announces every read-only manager with a warning; reading a
    finished run is routine, so that line is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")


class Checkpointer:
    """Save and restore training state under ``workdir/checkpoints``."""

    def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.read_only = read_only
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
        )
        notice_filter, absl_logger = _DropReadOnlyNotice(), logging.getLogger("absl")
        absl_logger.addFilter(notice_filter)
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        finally:
            absl_logger.removeFilter(notice_filter)

    # ---- saving ----------------------------------------------------------
    def save(self, step: int, params: Any, opt_state: Any, data_iterator: Any, meta: dict[str, Any]) -> None:
        """Start saving; returns once the arrays are copied off the device."""
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(data_iterator)),
            meta=ocp.args.JsonSave(dict(meta, step=step)),
        )
        self.manager.save(step, args=args, force=True)

    def save_params(self, step: int, params: Any, meta: dict[str, Any]) -> None:
        """Save parameters and meta only: a starting point for another run
        (``train.init_from``, ``rl.init_from``), e.g. a converted pretrained model."""
        args = ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(dict(meta, step=step)))
        self.manager.save(step, args=args, force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # ---- reading ---------------------------------------------------------
    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def restore_meta(self, step: int) -> dict[str, Any]:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_latest(
        self, abstract_params: Any, abstract_opt_state: Any | None, data_iterator: Any | None
    ) -> tuple[int, Any, Any, dict] | None:
        """Restore the newest readable checkpoint, falling back past damaged
        ones with a warning. Returns (step, params, opt_state, meta) or None
        when there is no checkpoint; ``data_iterator`` is restored in place."""
        steps = self.steps()
        damaged: list[int] = []
        for step in reversed(steps):
            try:
                items = dict(params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore())
                if abstract_opt_state is not None:
                    items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
                if data_iterator is not None:
                    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
                _check_finite_tree(restored["params"], step)
                if damaged and not self.read_only:
                    self._move_aside(damaged)
                return step, restored["params"], restored.get("opt_state"), restored["meta"]
            except Exception as e:  # any unreadable checkpoint: fall back, never delete
                damaged.append(step)
                error = f"{type(e).__name__}: {_first_sentence(str(e))}".rstrip(": ")
                if len(damaged) == 1:
                    newest_error = error
                print(
                    f"warning: checkpoint {os.path.join(self.directory, str(step))} is "
                    f"damaged or incompatible ({error}); falling back",
                    flush=True,
                )
        if steps:
            raise CheckpointError(
                f"no readable checkpoint in {self.directory} (tried steps {steps}; step {steps[-1]}: {newest_error})"
            )
        return None

    def _move_aside(self, steps: list[int]) -> None:
        """Move damaged checkpoints newer than the restored one out of the way
        (to ``WORKDIR/damaged_checkpoints``), so the resumed run can save those
        steps again; they are kept for inspection, never deleted."""
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            aside = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                source = os.path.join(self.directory, str(step))
                target = os.path.join(aside, str(step))
                suffix = 1
                while os.path.exists(target):
                    target, suffix = os.path.join(aside, f"{step}.{suffix}"), suffix + 1
                os.rename(source, target)
                print(f"warning: moved damaged checkpoint {source} to {target}", flush=True)
        self.manager.reload()


def split_checkpoint_path(path: str) -> tuple[str, int | None]:
    """(workdir, step) named by ``path``: ``WORKDIR/checkpoints/STEP`` is one
    step of WORKDIR; any other path is a workdir (step None: its newest)."""
    path = os.path.abspath(path)
    step_dir = os.path.basename(path)
    if step_dir.isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints":
        return os.path.dirname(os.path.dirname(path)), int(step_dir)
    return path, None


def has_checkpoints(workdir: str) -> bool:
    """Whether ``workdir`` holds at least one checkpoint step folder."""
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def restore_params(
    path: str, abstract_params: Any, check_meta: Callable[[dict[str, Any], str], None] | None = None
) -> tuple[Any, dict[str, Any], str]:
    """(params, meta, checkpoint folder) of the checkpoint at ``path``: a
    workdir (its newest step) or ``WORKDIR/checkpoints/STEP``. ``abstract_params``
    gives shapes, dtypes and shardings: each process reads only its shards.
    ``check_meta(meta, folder)`` may refuse the checkpoint before its arrays are read."""
    path = os.path.abspath(path)
    workdir, wanted = split_checkpoint_path(path)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise CheckpointError(f"{path} holds no checkpoints (expected {workdir}/checkpoints/STEP)")
    checkpointer = Checkpointer(workdir, read_only=True, async_save=False)
    steps = checkpointer.steps()
    step = wanted if wanted is not None else (steps[-1] if steps else None)
    if step is None or step not in steps:
        raise CheckpointError(
            f"no checkpoint {'step ' + str(step) + ' ' if step is not None else ''}"
            f"in {workdir}/checkpoints (have {steps})"
        )
    source = os.path.join(checkpointer.directory, str(step))
    if check_meta is not None:
        check_meta(checkpointer.restore_meta(step), source)
    try:
        restored = checkpointer.manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore())
        )
    except Exception as e:  # orbax raises many kinds; one line for the user
        raise CheckpointError(
            f"checkpoint {source} cannot be read into this model ({type(e).__name__}: {_first_sentence(str(e))})"
        ) from None
    return restored["params"], restored["meta"], source


def _first_sentence(message: str, limit: int = 160) -> str:
    """The start of an exception message, short enough for a one-line error."""
    first = (message.splitlines() or [""])[0].split(". ")[0]
    return first[:limit]


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_finite_tree(tree: Any, step: int) -> None:
    if not bool(_all_finite(tree)):
        raise CheckpointError(f"checkpoint step {step} holds non-finite parameters")
