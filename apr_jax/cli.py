"""How every ``python -m apr_jax.*`` command ends: a user's mistake or a
failed run is one line ``error: ...`` on stderr and an exit code, never a
traceback (``APR_JAX_DEBUG=1`` re-raises, for the traceback)."""

from __future__ import annotations

import os
import sys
from typing import Callable

USAGE_ERROR = 2  # bad flags, config, input files
RUN_FAILED = 1  # the run itself failed (checkpoint, training)

Errors = tuple[type[BaseException], ...]


def one_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when empty)."""
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def run_command(body: Callable[[], int | None], *, usage: Errors, failures: Errors = ()) -> int:
    """Run a command's ``body`` and return its exit code (0 when it returns
    None). ``usage`` errors exit ``USAGE_ERROR``, ``failures`` ``RUN_FAILED``."""
    try:
        code = body()
    except usage + failures as e:
        if os.environ.get("APR_JAX_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return USAGE_ERROR if isinstance(e, usage) else RUN_FAILED
    return 0 if code is None else code
