"""Training metrics to the console, ``metrics.jsonl`` and TensorBoard, plus a
progress bar with ETA when attached to a terminal."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax

from apr_jax.runtime.jsonl import json_line


class MetricsLogger:
    """Writes one JSON object per logged step; only process 0 writes."""

    def __init__(
        self,
        workdir: str,
        total_steps: int,
        start_step: int = 0,
        tensorboard: bool = True,
        progress: bool | None = None,
    ):
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "metrics.jsonl")
        _drop_records_after(path, start_step)
        self._jsonl = open(path, "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, leave=False)

    def write(self, step: int, metrics: dict[str, Any], *, console: bool = True) -> None:
        """One record; ``metrics["warnings"]`` (a list of lines, optional) is
        kept in the record and printed, one ``warning:`` line each."""
        if not self.enabled:
            return
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in metrics.items() if k != "warnings"})
        warnings = [str(w) for w in metrics.get("warnings", ())]
        if warnings:
            record["warnings"] = warnings
        self._jsonl.write(json_line(record))
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        if console:
            shown = "  ".join(f"{k}={_fmt(v)}" for k, v in record.items() if k not in ("time", "warnings"))
            self.print(shown)
        for line in warnings:
            self.print(f"warning: {line}")

    def set_total(self, total_steps: int) -> None:
        """The run's last step changed (a step budget): the progress bar's end."""
        self.total_steps = total_steps
        if self._bar is not None:
            self._bar.total = total_steps
            self._bar.refresh()

    def advance(self, steps: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (none when it does not exist), lines
    cut short by a crash left out."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _drop_records_after(path: str, step: int) -> None:
    """On resume, forget records of steps after the checkpoint: they are
    about to be trained again and would otherwise appear twice."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    if len(kept) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return round(v, 6) if abs(v) >= 1e-4 or v == 0 else float(f"{v:.4g}")
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
