"""launch/colab_tpu_demo.ipynb runs headless on the CPU, end to end, with tiny
step counts injected after its parameters cell (so it cannot rot)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient
from tiny import TINY_RUN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "launch", "colab_tpu_demo.ipynb")
TINY = TINY_RUN + [
    "config.task.num_train=160", "config.train.warmup_steps=2", "config.train.log_every=2",
    "config.train.eval_every=4", "config.train.checkpoint_every=4", "config.eval.tokens_per_thread=48",
    "config.eval.max_children=2", "config.eval.max_rounds=1",
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
        f"DATA_DIR = {str(tmp_path / 'data')!r}\nOVERRIDES = {TINY!r}")
    nb.cells.insert(params + 1, injected)

    client = NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell

    text = "\n".join(outputs_text(c) for c in nb.cells if c.cell_type == "code")
    assert "apr_jax is already installed" in text
    assert "'step': 4" in text
    assert "checkpoint step 4: problems 2" in text and "accuracy" in text
    assert "[thread 0 depth 0 stop=" in text and "solution:" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the plots cell shows a figure"
    assert os.path.getsize(tmp_path / "run" / "colab_demo.png") > 10_000
