"""Process pools for CPU-bound data work (problem drawing, trace search)."""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor


def _jax_backends_running() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return True


def pool_context() -> multiprocessing.context.BaseContext:
    """fork is fastest, but forking a process whose JAX backend runs threads
    can deadlock; then spawn (the calling script needs an
    ``if __name__ == "__main__"`` guard)."""
    if sys.platform != "linux" or _jax_backends_running():
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("fork")


def process_pool(num_workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(num_workers, mp_context=pool_context())
