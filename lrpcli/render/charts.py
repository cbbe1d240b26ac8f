"""Charts for report pages: matplotlib figures (Agg, no pyplot) as ``data:image/png`` URIs.

The PNGs carry no metadata (no software version, no date), so the same numbers give the same
bytes and a rebuilt page equals the original."""

from __future__ import annotations

import base64
import io
from functools import lru_cache
from typing import Any

#: Text as the string it holds: no mathtext for ``$...$`` (a feature, class or composite name such as
#: ``$\frac{$`` fails to parse, or is drawn as a formula), no LaTeX (a matplotlibrc's ``text.usetex``)
PLAIN_TEXT = {"text.usetex": False, "text.parse_math": False, "axes.formatter.use_mathtext": False}


def plain_text(fig: Any) -> None:
    """Draw every string in ``fig`` as plain text: each Text (titles, labels, tick labels, legends) gets
    ``usetex=False`` and ``parse_math=False``, and number formatters write plain numbers (no ``$...$``
    that would now show as such; a log axis's 10^k labels are mathtext and would). Figures made by
    :func:`figure` do this themselves."""
    from matplotlib.axis import Axis
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_usetex(False)
        text.set_parse_math(False)
    for axis in fig.findobj(Axis):
        for formatter in (axis.get_major_formatter(), axis.get_minor_formatter()):
            if hasattr(formatter, "set_usetex"):
                formatter.set_usetex(False)
            if hasattr(formatter, "set_useMathText"):
                formatter.set_useMathText(False)


@lru_cache(maxsize=1)
def _plain_figure() -> type:
    import matplotlib
    from matplotlib.figure import Figure

    class PlainFigure(Figure):
        """A Figure whose strings are plain text whenever it is laid out or drawn (tick labels made
        while drawing included): user strings reach matplotlib as titles, tick labels and legends."""

        def draw(self, renderer):
            plain_text(self)
            with matplotlib.rc_context(PLAIN_TEXT):
                return super().draw(renderer)

        def tight_layout(self, *args, **kwargs):
            plain_text(self)
            with matplotlib.rc_context(PLAIN_TEXT):
                return super().tight_layout(*args, **kwargs)

        def get_tightbbox(self, *args, **kwargs):
            plain_text(self)
            with matplotlib.rc_context(PLAIN_TEXT):
                return super().get_tightbbox(*args, **kwargs)

        def _repr_png_(self) -> bytes:
            """The figure as PNG bytes: a notebook shows it when it is a cell's value (made without pyplot,
            the inline backend would not show it by itself)."""
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", bbox_inches="tight")
            return buffer.getvalue()

    return PlainFigure


def figure(width: float, height: float) -> Any:
    """A figure (Agg, no pyplot) that draws every string as plain text (see :func:`plain_text`)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    with matplotlib.rc_context(PLAIN_TEXT):
        fig = _plain_figure()(figsize=(width, height), dpi=100)
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
