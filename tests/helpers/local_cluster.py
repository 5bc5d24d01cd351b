"""Several JAX processes on one machine: a local coordinator, gloo
collectives, a few virtual CPU devices each; shared by the multi-process tests."""

import os
import socket
import subprocess
import time

import pytest

from helpers.cpu_flags import xla_flags
from helpers.paths import REPO_ROOT

REPO = REPO_ROOT
PROCESSES = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(port: int, process_id: int, num_processes: int, timeout_s: int, cache_dir: str = "") -> dict:
    env = dict(os.environ)
    if cache_dir:  # the resumed run reuses the programs the first run compiled
        env.update(
            JAX_COMPILATION_CACHE_DIR=cache_dir,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    env.update(
        XLA_FLAGS=xla_flags(4),
        JAX_PLATFORMS="cpu",
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(num_processes),
        JAX_PROCESS_ID=str(process_id),
        APR_JAX_DISTRIBUTED_TIMEOUT=str(timeout_s),
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def run_processes(argvs_envs: list[tuple[list[str], dict]], timeout_s: float) -> list[tuple]:
    """Starts every process, waits for all; kills all and fails on a hang."""
    procs = [
        subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv, env in argvs_envs
    ]
    deadline = time.time() + timeout_s
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.time()))
            results.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        for p in procs:
            p.communicate()
        pytest.fail(f"processes still running after {timeout_s}s (a collective or barrier hangs)")
    return results
