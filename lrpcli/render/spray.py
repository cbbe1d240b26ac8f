"""The 2-D layout of one class's SpRAy analysis as a PNG: each input a dot at its spectral coordinates, coloured
by its cluster, so a small, separate group (a distinct strategy) shows at a glance."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def save_layout(path: Path, layout: np.ndarray, labels: np.ndarray, title: str) -> None:
    """Scatter ``layout`` (inputs, 2) coloured by ``labels`` (cluster per input) to ``path`` (atomically)."""
    from ..outputs import write_atomic
    from .charts import colours, figure

    fig = figure(4, 4)
    axes = fig.subplots()
    palette = colours()
    for cluster in range(int(labels.max()) + 1 if len(labels) else 0):
        chosen = labels == cluster
        axes.scatter(layout[chosen, 0], layout[chosen, 1], s=14, color=palette[cluster % len(palette)], label=f"cluster {cluster} ({int(chosen.sum())})")
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("eigenvector 1")
    axes.set_ylabel("eigenvector 2")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    write_atomic(Path(path), buffer.getvalue())
