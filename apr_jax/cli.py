"""How every ``python -m apr_jax.*`` command starts and ends. It starts by
keeping compiled XLA programs on disk (``APR_JAX_COMPILE_CACHE``), so running
a command again skips its compiles. It ends with a user's mistake or a failed
run as one line ``error: ...`` on stderr and an exit code, never a traceback
(``APR_JAX_DEBUG=1`` re-raises, for the traceback)."""

from __future__ import annotations

import os
import sys
from typing import Callable

USAGE_ERROR = 2  # bad flags, config, input files
RUN_FAILED = 1  # the run itself failed (checkpoint, training)

Errors = tuple[type[BaseException], ...]

COMPILE_CACHE_ENV = "APR_JAX_COMPILE_CACHE"
DEFAULT_COMPILE_CACHE = "~/.cache/apr_jax/xla"


def enable_compile_cache() -> str | None:
    """JAX's persistent compilation cache in ``$APR_JAX_COMPILE_CACHE``
    (default ``~/.cache/apr_jax/xla``; set it empty to turn the cache off).
    A directory already given to JAX (``JAX_COMPILATION_CACHE_DIR``) is kept.
    Must run before the first compile. Returns the directory in use."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    path = os.environ.get(COMPILE_CACHE_ENV, DEFAULT_COMPILE_CACHE)
    if not path:
        return None
    path = os.path.expanduser(path)
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def one_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when empty)."""
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def run_command(body: Callable[[], int | None], *, usage: Errors, failures: Errors = ()) -> int:
    """Run a command's ``body`` and return its exit code (0 when it returns
    None). ``usage`` errors exit ``USAGE_ERROR``, ``failures`` ``RUN_FAILED``."""
    enable_compile_cache()
    try:
        code = body()
    except usage + failures as e:
        if os.environ.get("APR_JAX_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return USAGE_ERROR if isinstance(e, usage) else RUN_FAILED
    return 0 if code is None else code
