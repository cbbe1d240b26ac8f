"""Charts for report pages: matplotlib figures (Agg, no pyplot) as ``data:image/png`` URIs.

The PNGs carry no metadata (no software version, no date), so the same numbers give the same
bytes and a rebuilt page equals the original."""

from __future__ import annotations

import base64
import io
from typing import Any


def figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def data_uri(fig: Any) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def colours() -> tuple:
    import matplotlib

    return matplotlib.colormaps["tab10"].colors
