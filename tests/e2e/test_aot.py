"""apr_jax.aot: named TPU slices, the abstract train state's shardings (equal to
what train.py builds), ahead-of-time compiles with per-device memory plans for
this host's CPUs and, where libtpu is available, for TPU slices without a TPU."""

import json
import subprocess

import jax
import pytest
from flax import nnx
from helpers.paths import REPO_ROOT

from apr_jax import aot
from apr_jax.config.loading import load_run_config
from apr_jax.runtime import sharding
from apr_jax.training import train_state

REPO = REPO_ROOT
TINY = [
    "config.model.num_layers=2",
    "config.model.d_model=32",
    "config.model.num_heads=2",
    "config.model.num_kv_heads=1",
    "config.model.d_ff=64",
    "config.model.max_len=128",
    "config.data.seq_len=128",
    "config.train.batch_size=32",
]
HAVE_LIBTPU = aot.libtpu_path() is not None


def test_topology_specs_of_named_slices():
    v4 = aot.topology_spec("v4-32")
    assert (v4.chip, v4.shape, v4.num_devices, v4.num_hosts) == ("v4", "2x2x4", 16, 4)
    v5p = aot.topology_spec("v5p-64")
    assert (v5p.shape, v5p.num_devices, v5p.num_hosts, v5p.chip_config) == ("2x4x4", 32, 8, "megacore")
    v5e = aot.topology_spec("v5litepod-8")
    assert (v5e.chip, v5e.shape, v5e.num_hosts, v5e.chips_per_host) == ("v5e", "2x4", 1, (2, 4, 1))
    with pytest.raises(ValueError, match=r"unknown TPU accelerator type 'v4-33'; known: v4-8, v4-16"):
        aot.topology_spec("v4-33")
    with pytest.raises(ValueError, match="unknown TPU accelerator type 'tpu'"):
        aot.topology_spec("tpu")


def test_launch_scripts_agree_on_hosts_per_slice():
    script = "source launch/common.sh; for t in $KNOWN_ACCELERATORS; do echo $t $(accelerator_hosts $t); done"
    out = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout.split(
        "\n"
    )
    hosts = dict(line.split() for line in out if line)
    assert sorted(hosts) == sorted(aot.known_accelerator_types())
    for name, count in hosts.items():
        assert aot.topology_spec(name).num_hosts == int(count), name


def test_abstract_state_shardings_match_the_trainer():
    config = load_run_config(None, TINY + ["config.mesh.data=2", "config.mesh.fsdp=4"])
    mesh = sharding.make_mesh(sharding.MeshConfig.from_config(config.mesh))
    _, model, optimizer = train_state.build_model_and_optimizer(config, 96, mesh)
    real = nnx.state((model, optimizer))
    _, abstract, shardings = aot.abstract_train_state(config, 96, mesh)
    real_leaves = jax.tree.leaves(real)
    abstract_leaves = jax.tree.leaves(abstract)
    assert len(real_leaves) == len(abstract_leaves)
    fsdp_sharded = 0
    for r, a in zip(real_leaves, abstract_leaves):
        assert (r.shape, r.dtype) == (a.shape, a.dtype)
        assert r.sharding.is_equivalent_to(a.sharding, r.ndim), (r.shape, r.sharding, a.sharding)
        fsdp_sharded += "fsdp" in str(a.sharding.spec)
    assert fsdp_sharded > 10  # parameters and both Adam moments


def test_cpu_compile_reports_memory_per_device(capsys, tmp_path):
    report = tmp_path / "aot.json"
    assert aot.main(["--topology=cpu", f"--json={report}", *(f"--{o}" for o in TINY)]) == 0
    out = capsys.readouterr().out
    assert "default: 0.02M parameters, batch 32 x 128" in out
    line = [l for l in out.splitlines() if l.startswith("cpu")][0]
    assert line.startswith("cpu remat=none: 8 x cpu (1 hosts), per device: arguments ")
    [result] = json.loads(report.read_text())
    memory = result["memory"]
    assert result["fits"] and memory["arguments"] > 0 and memory["temporaries"] > 0
    # The donated state is aliased into the outputs: only metrics are new.
    assert memory["aliased"] > 0.9 * memory["outputs"]
    assert memory["total"] == (
        memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temporaries"] + memory["code"]
    )


def test_engine_compile_shards_the_kv_pool_over_the_batch_devices(capsys, tmp_path):
    """--step=engine compiles evaluation's decoder under the mesh: each of the
    8 batch shards holds its own lanes, so a device plans about an eighth of
    the whole KV pool (and at least that)."""
    report = tmp_path / "aot.json"
    overrides = [*TINY, "config.eval.lanes=16", "config.eval.max_children=2", "config.eval.max_rounds=1"]
    assert (
        aot.main(
            ["--topology=cpu", "--step=engine", "--problems=16", f"--json={report}", *(f"--{o}" for o in overrides)]
        )
        == 0
    )
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("cpu")][0]
    assert line.startswith("cpu engine (16 problems): 8 x cpu (1 hosts), per device: arguments ")
    [result] = json.loads(report.read_text())
    pool = 16 * 128 * 2 * 2 * 1 * 16 * 4  # lanes x slots x layers x (k, v) x kv_heads x head_dim x f32
    assert result["fits"] and pool / 8 <= result["memory"]["temporaries"] < pool / 2


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "error: --topology is required, e.g. --topology=v4-32,v5p-64"),
        (["--topology=v4-32,v9-8"], "error: unknown TPU accelerator type 'v9-8'"),
        (["--topology=cpu", "--config.train.batch_size=12"], "does not divide over the 8 data-parallel"),
        (["--topology=v4-8", "--libtpu=/nope/libtpu.so"], "error: --libtpu=/nope/libtpu.so: no such file"),
        (["--topolgy=v4-8"], "error: unknown flag --topolgy; did you mean --topology?"),
        (["--topology=cpu", "--remat=none,some"], "error: --remat=some is not one of none, dots, full"),
        (["--topology=cpu", "--step=decode"], "error: --step=decode is not one of train, engine"),
        (["--topology=cpu", "--step=engine", "--problems=12"], "--problems=12 does not divide over the 8"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys):
    assert aot.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_remat_policies_each_compile_with_their_own_memory(tmp_path):
    """--remat lists policies: one compile per policy; recomputing whole
    blocks plans fewer temporary bytes than keeping every activation."""
    report = tmp_path / "aot.json"
    assert aot.main(["--topology=cpu", "--remat=none,full", f"--json={report}", *(f"--{o}" for o in TINY)]) == 0
    none, full = json.loads(report.read_text())
    assert (none["remat"], full["remat"]) == ("none", "full")
    assert full["memory"]["temporaries"] < none["memory"]["temporaries"]


def test_missing_libtpu_is_explained(monkeypatch):
    monkeypatch.setenv("TPU_LIBRARY_PATH", "")
    monkeypatch.setattr(aot, "DEFAULT_LIBTPU", "/nonexistent/libtpu.so")
    monkeypatch.setitem(__import__("sys").modules, "libtpu", None)
    with pytest.raises(RuntimeError, match="compiling for TPU needs the TPU compiler"):
        aot.topology_devices(aot.topology_spec("v4-8"))


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu not installed (see apr_jax/aot.py)")
def test_tpu_slice_compiles_without_a_tpu():
    config = load_run_config(None, TINY + ["config.model.attention=auto", "config.mesh.data=1", "config.mesh.fsdp=-1"])
    spec = aot.topology_spec("v5p-64")
    devices = aot.topology_devices(spec)
    assert len(devices) == 32 and devices[0].device_kind.startswith("TPU v5")
    assert len({d.process_index for d in devices}) == spec.num_hosts == 8
    compiled = aot.compile_train_step(config, 96, devices)
    # "auto" attention follows the target: the splash (Mosaic) kernel, under shard_map.
    assert "tpu_custom_call" in compiled.as_text()
    memory = aot.memory_report(compiled)
    assert 0 < memory["arguments"] < memory["total"] < 2**30


@pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu not installed (see apr_jax/aot.py)")
def test_engine_compiles_for_a_tpu_slice():
    """The spawn/join engine compiles for TPU under the run's mesh (the TPU
    compiler aborts on some scatter patterns that the CPU compiler accepts;
    128-slot rows once did, in the spawn's message copy)."""
    config = load_run_config(
        None, TINY + ["config.eval.lanes=16", "config.eval.max_children=2", "config.eval.max_rounds=1"]
    )
    result = aot.check_topology(config, "v4-8", step="engine", problems=16)
    assert result["fits"] and result["devices"] == 4 and result["memory"]["outputs"] > 0  # the KV pool
