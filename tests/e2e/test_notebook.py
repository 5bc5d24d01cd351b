"""launch/colab_tpu_demo.ipynb runs headless on the CPU, end to end, with tiny
step counts injected after its parameters cell (so it cannot rot); its install
cell installs apr_jax from each kind of source into a fresh environment; its
config compiles ahead of time for Colab's TPU."""

import os
import shutil
import site
import subprocess
import sys

import nbformat
import pytest
from helpers.paths import REPO_ROOT
from helpers.tiny import TINY_RUN
from nbclient import NotebookClient

REPO = REPO_ROOT
NOTEBOOK = os.path.join(REPO, "launch", "colab_tpu_demo.ipynb")
TINY = TINY_RUN + [
    "config.task.num_train=160",
    "config.train.warmup_steps=2",
    "config.train.log_every=2",
    "config.train.eval_every=4",
    "config.train.checkpoint_every=4",
    "config.eval.tokens_per_thread=48",
    "config.eval.max_children=2",
    "config.eval.max_rounds=1",
]


def outputs_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out["text"])
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(out["data"]["text/plain"])
    return "".join(parts)


@pytest.mark.slow
def test_notebook_executes_on_cpu(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    [params] = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    injected = nbformat.v4.new_code_cell(
        f"STEPS = 4\nNUM_PROBLEMS = 2\nWORKDIR = {str(tmp_path / 'run')!r}\n"
        f"DATA_DIR = {str(tmp_path / 'data')!r}\nOVERRIDES = {TINY!r}"
    )
    nb.cells.insert(params + 1, injected)

    client = NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell

    text = "\n".join(outputs_text(c) for c in nb.cells if c.cell_type == "code")
    assert "apr_jax is already installed" in text
    assert "default: 2 layers of width 32, batch 8 x 128 tokens, xla attention" in text
    assert "'step': 4" in text
    assert "checkpoint step 4: problems 2" in text and "accuracy" in text
    assert "[thread 0 depth 0 stop=" in text and "solution:" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the plots cell shows a figure"
    assert os.path.getsize(tmp_path / "run" / "colab_demo.png") > 10_000


# --- The install cell, run as Colab runs it: in an environment without apr_jax.

INSTALL_MARKER = 'find_spec("apr_jax")'


def code_cell(nb, marker: str) -> str:
    """The source of the notebook's one code cell containing ``marker``."""
    [source] = [c.source for c in nb.cells if c.cell_type == "code" and marker in c.source]
    return source


def parameters_cell(nb) -> str:
    [source] = [c.source for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return source


def fresh_venv(root) -> tuple[str, dict]:
    """(python, environment) of a new virtual environment, with its own pip,
    where apr_jax is not importable but its dependencies are: this test
    interpreter's site-packages minus apr_jax's own install is joined to it as
    a site dir, so the notebook's real ``pip install`` finds every dependency
    installed (pip fetches only the build backend, setuptools, as it does on
    Colab)."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    deps = root / "deps"
    deps.mkdir()
    for site_packages in site.getsitepackages():
        for name in os.listdir(site_packages):
            if "apr_jax" in name.lower().replace("-", "_") or (deps / name).exists():
                continue  # the package itself (and its editable-install hook)
            (deps / name).symlink_to(os.path.join(site_packages, name))
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with open(os.path.join(purelib, "test_dependencies.pth"), "w") as f:
        f.write(f"import site; site.addsitedir({str(deps)!r})\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return python, env


def run_install_cell(python: str, env: dict, cwd, source: str, after: str = "") -> subprocess.CompletedProcess:
    """The notebook's install cell with ``SOURCE = source`` as one program run
    by ``python`` in ``cwd`` (a kernel's first cells), then ``after``."""
    cell = code_cell(nbformat.read(NOTEBOOK, as_version=4), INSTALL_MARKER)
    program = f"SOURCE = {source!r}\n{cell}\n{after}\n"
    return subprocess.run([python, "-c", program], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def where_apr_jax(python: str, env: dict, cwd) -> str:
    """The folder ``import apr_jax`` loads from in a new process (a restarted runtime)."""
    out = subprocess.run(
        [python, "-c", "import apr_jax, os; print(os.path.dirname(apr_jax.__file__))"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() if out.returncode == 0 else f"not importable: {out.stderr.strip()[-200:]}"


def git_head(path) -> str:
    return subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def require_git_checkout():
    try:
        return git_head(REPO)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"{REPO} is not a git checkout")


def test_install_cell_without_a_source_says_what_to_set(tmp_path):
    python, env = fresh_venv(tmp_path)
    assert where_apr_jax(python, env, tmp_path).startswith("not importable")
    result = run_install_cell(python, env, tmp_path, "")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "apr_jax is not installed: set SOURCE in the parameters cell to its git URL"
    ), result.stdout
    # Headless, "upload" (Colab's dialog) and a missing file are one clear error each.
    result = run_install_cell(python, env, tmp_path, "upload")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ValueError: SOURCE = \"upload\" needs Colab's upload dialog; elsewhere set SOURCE to the file's path"
    )
    result = run_install_cell(python, env, tmp_path, "checkout.zip")
    assert result.stderr.strip().splitlines()[-1] == ("FileNotFoundError: SOURCE = 'checkout.zip': no such file")
    assert not os.path.exists(tmp_path / "apr_jax_src")


@pytest.mark.slow
def test_install_cell_clones_a_git_url_and_survives_a_runtime_reset(tmp_path):
    """SOURCE = file://<this checkout>: the cell clones its HEAD and pip-installs
    the clone (editable) into a fresh environment; ``import apr_jax`` then loads
    the clone, in the same kernel and in a restarted one. Running the cell again
    says it is installed; with the install lost and the clone kept, it reuses
    the clone and installs again."""
    head = require_git_checkout()
    python, env = fresh_venv(tmp_path)
    work = tmp_path / "content"
    work.mkdir()
    clone = work / "apr_jax_src"
    assert where_apr_jax(python, env, work).startswith("not importable")

    after = "import apr_jax.config.loading as m, os; print('loaded', os.path.dirname(os.path.dirname(m.__file__)))"
    again = code_cell(nbformat.read(NOTEBOOK, as_version=4), INSTALL_MARKER)
    result = run_install_cell(python, env, work, f"file://{REPO}", f"{after}\n{again}")
    assert result.returncode == 0, result.stderr[-3000:]
    # Installed, importable in the same kernel, and the cell run again there is a no-op.
    assert result.stdout == (
        f"installed apr_jax from {clone}\nloaded {clone / 'apr_jax'}\n"
        f"apr_jax is already installed ({clone / 'apr_jax'})\n"
    ), result.stdout
    assert git_head(clone) == head
    assert where_apr_jax(python, env, tmp_path) == str(clone / "apr_jax")  # any new process

    # A restarted runtime runs the cell again: nothing to do.
    result = run_install_cell(python, env, work, f"file://{REPO}")
    assert result.stdout == f"apr_jax is already installed ({clone / 'apr_jax'})\n", result.stderr

    # The clone is kept but the install is gone: the clone is reused, not cloned again.
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "apr_jax"], env=env, check=True)
    assert where_apr_jax(python, env, tmp_path).startswith("not importable")
    (clone / "kept").write_text("the same clone")
    result = run_install_cell(python, env, work, f"file://{REPO}", after)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing apr_jax_src/" in result.stdout and f"loaded {clone / 'apr_jax'}" in result.stdout
    assert (clone / "kept").exists() and "Cloning" not in result.stderr
    assert where_apr_jax(python, env, tmp_path) == str(clone / "apr_jax")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tar.gz", "zip", "whl"])
def test_install_cell_installs_an_archive_or_a_wheel(tmp_path, kind):
    """SOURCE = a path to an archive of the checkout (with one top folder, as
    ``git archive --prefix`` and GitHub's downloads make it, or without) or to
    a wheel built from it; a URL is fetched to such a file first."""
    require_git_checkout()
    python, env = fresh_venv(tmp_path)
    work = tmp_path / "content"
    work.mkdir()
    archive = tmp_path / f"apr_jax-main.{'zip' if kind == 'zip' else 'tar.gz'}"
    prefix = [] if kind == "zip" else ["--prefix=apr_jax-main/"]
    subprocess.run(["git", "-C", REPO, "archive", "-o", str(archive), *prefix, "HEAD"], check=True)
    if kind == "whl":
        shutil.unpack_archive(archive, tmp_path / "checkout")
        subprocess.run(
            [
                python,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "-w",
                str(tmp_path / "dist"),
                str(tmp_path / "checkout" / "apr_jax-main"),
            ],
            env=env,
            check=True,
        )
        [archive] = (tmp_path / "dist").glob("apr_jax-*.whl")
    source = archive.as_uri() if kind == "zip" else str(archive)  # a URL, or a path

    result = run_install_cell(python, env, work, source)
    assert result.returncode == 0, result.stderr[-3000:]
    if kind == "whl":
        assert f"installed apr_jax from {archive}\n" in result.stdout
        assert not (work / "apr_jax_src").exists()
        assert where_apr_jax(python, env, tmp_path).startswith(str(tmp_path / "venv"))  # its site-packages
    else:
        assert f"installed apr_jax from {work / 'apr_jax_src'}\n" in result.stdout
        assert where_apr_jax(python, env, tmp_path) == str(work / "apr_jax_src" / "apr_jax")
        assert not (work / "apr_jax_src.unpacking").exists()
    result = run_install_cell(python, env, work, source)
    assert result.stdout.startswith("apr_jax is already installed ("), result.stderr


# --- The notebook's config, compiled ahead of time for Colab's TPU.

# Colab's TPU runtime: one v5e chip (Colab's "v5e-1"; apr_jax.aot's v5litepod-1).
COLAB_TPU = "v5litepod-1"


def notebook_config() -> dict:
    """The notebook's parameters cell, then the cell that loads ``config``, run
    as they are written; returns their variables."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    namespace = {}
    exec(parameters_cell(nb), namespace)
    exec(code_cell(nb, "load_run_config("), namespace)
    return namespace


@pytest.mark.slow
def test_notebook_config_compiles_for_the_colab_tpu():
    """The train step and the decoding engine of exactly the notebook's config
    compile for a v5e-1 (no TPU needed, libtpu is), with the attention kernel
    ``model.attention`` resolves to on a TPU, and fit its 16 GiB."""
    from apr_jax import aot
    from apr_jax.model.attention import resolve_implementation

    if aot.libtpu_path() is None:
        pytest.skip("libtpu not installed (see apr_jax/aot.py)")
    cells = notebook_config()
    config = cells["config"]
    implementation = resolve_implementation(config.model.attention, config.model.compute_dtype, "tpu")
    assert implementation in ("splash", "xla"), f"{implementation} is not a TPU kernel (interpreted there)"
    spec = aot.topology_spec(COLAB_TPU)
    devices = aot.topology_devices(spec)
    assert len(devices) == 1 and devices[0].device_kind == "TPU v5 lite"

    train_step = aot.compile_train_step(config, config.data.vocab_size, devices)
    # splash is a Mosaic kernel: a tpu_custom_call in the compiled step; xla has none.
    assert ("tpu_custom_call" in train_step.as_text()) == (implementation == "splash"), implementation
    problems = int(config.eval.batch_problems) or cells["NUM_PROBLEMS"]
    engine = aot.compile_engine(config, config.data.vocab_size, devices, problems, prompt_width=32)
    for name, compiled in (("train step", train_step), (f"engine ({problems} problems)", engine)):
        memory = aot.memory_report(compiled)
        print(
            f"{COLAB_TPU} {name}, {implementation} attention: "
            + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in memory.items())
        )
        assert 0 < memory["total"] <= spec.hbm_bytes_per_device, (name, memory)
