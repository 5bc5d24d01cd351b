"""Test set-up: eight virtual CPU devices so multi-device code runs on a
laptop, and the toy SFT model the RL tests start from."""

import fcntl
import gc
import os

import pytest
from helpers.cpu_flags import FAST_COMPILE, xla_flags

os.environ.setdefault("XLA_FLAGS", xla_flags(8))
if FAST_COMPILE not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + FAST_COMPILE
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session", autouse=True)
def xla_compile_cache(tmp_path_factory):
    """One persistent XLA compile cache per test session, shared by the xdist
    workers and the subprocesses tests start: many tests compile the same
    programs (a tiny model's train step, engine loop, GRPO update)."""
    import jax

    base = tmp_path_factory.getbasetemp()
    root = str((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xla_cache")
    settings = {"jax_compilation_cache_dir": root, "jax_persistent_cache_min_compile_time_secs": 1.0}
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)


@pytest.fixture(scope="module", autouse=True)
def free_compiled_programs():
    """Each test module's compiled programs are dropped when it ends. An XLA
    CPU executable holds about 17 memory maps, and a worker that kept every
    program of the suite would reach the kernel's limit (vm.max_map_count,
    65530 by default), where LLVM aborts the worker mid-compile."""
    yield
    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def sft(tmp_path_factory):
    """The toy RL setting's (tests/rl_toy.py) starting point: a tiny model
    trained 150 SFT steps; it knows the trace format, rarely the answer.
    Trained once per test session, shared by the xdist workers."""
    from helpers.rl_toy import TOY

    from apr_jax.config.loading import load_run_config
    from apr_jax.training.run import run_training

    base = tmp_path_factory.getbasetemp()
    # Under xdist every worker's base sits in one per-session folder.
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "rl_sft_shared"
    root.mkdir(exist_ok=True)
    data, workdir = str(root / "data"), str(root / "sft")
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            config = load_run_config(
                None,
                TOY
                + [
                    f"config.data.dir={data}",
                    "config.train.batch_size=16",
                    "config.train.steps=150",
                    "config.train.warmup_steps=10",
                    "config.train.log_every=150",
                    "config.train.eval_every=1000",
                    "config.train.eval_batches=1",
                    "config.train.checkpoint_every=1000",
                ],
            )
            run_training(config, workdir)
            (root / "done").write_text("ok")
        fcntl.flock(lock, fcntl.LOCK_UN)
    return {"data": data, "sft": workdir}


@pytest.fixture(scope="module")
def tiny_model():
    """A ``tiny_model_config()`` Transformer with seed-0 parameters."""
    from flax import nnx
    from helpers.tiny import tiny_model_config

    from apr_jax.model.transformer import Transformer

    return Transformer(tiny_model_config(), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A dataset cache shared by one test module's runs."""
    return str(tmp_path_factory.mktemp("data"))
