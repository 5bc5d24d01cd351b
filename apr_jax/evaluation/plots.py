"""Figures: matplotlib without a display, and one way to finish and save a
figure (legend when something is labelled, caption under the axes, PNG)."""

from __future__ import annotations

import textwrap
from typing import Any, Sequence


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (imported on first
    use: only commands that draw pay for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str, *, legend_axes: Sequence[Any] = (), caption: str = "") -> None:
    """Lay out ``fig``, draw a legend on each of ``legend_axes`` that has
    labelled artists, put ``caption`` (wrapped) under the axes, write ``path``
    and free the figure."""
    for ax in legend_axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if caption:
        lines = textwrap.wrap(caption, 110)
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, va="bottom")
        fig.tight_layout(rect=(0, 0.035 + 0.025 * len(lines), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
