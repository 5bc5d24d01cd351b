"""benchmarks/accelerator.sh end to end on the CPU at toy sizes (--tiny):
every step runs under its timeout, each writes its figures, and the summary
gathers them."""

import os
import subprocess
import sys

import pytest
from helpers.cpu_flags import FAST_COMPILE
from helpers.paths import REPO_ROOT

REPO = REPO_ROOT
SCRIPT = os.path.join(REPO, "benchmarks", "accelerator.sh")


def test_unknown_argument_is_one_line():
    done = subprocess.run(["bash", SCRIPT, "--tinyy"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown argument --tinyy (see --help)"


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", SCRIPT, "--tiny", "--no-install", "--out", str(out), "--python", sys.executable, "--budget", "900"],
        capture_output=True,
        text=True,
        timeout=1000,
        env={**os.environ, "XLA_FLAGS": FAST_COMPILE, "JAX_PLATFORMS": "cpu"},
    )  # one CPU device, as on a plain host
    summary = (out / "summary.txt").read_text()
    assert done.returncode == 0, summary + done.stderr[-2000:]
    for step in ("attention", "train_T4096", "train_T1024", "decode", "h200"):
        assert f"END {step} rc=0" in summary, (step, summary)
    assert "imports ok" in summary
    # The Triton kernel ran (interpreted), agreed with XLA and made no T x T array.
    [attention] = [l for l in summary.splitlines() if l.startswith("attention 2x64x2x16")]
    assert ": triton (" in attention and "T x T arrays False" in attention
    assert float(attention.split("max rel grad diff ")[1]) < 1e-4
    assert "batch 8 x 128 remat full" in summary and "batch 8 x 64 remat full" in summary
    assert any(l.startswith("decode ") and "tokens/s" in l for l in summary.splitlines()), summary
    assert "h200 held-out accuracy: " in summary and "held-out accuracy: none" not in summary
