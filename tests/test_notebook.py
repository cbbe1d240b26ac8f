"""An Explanation where people look at it (issue 26, item 6): plot() and what a notebook shows."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lrpcli import explain

from cli_support import minivgg


def test_plot_draws_the_channel_sum_on_a_symmetric_scale_with_a_colour_bar():
    result = explain(minivgg(), torch.rand(2, 3, 32, 32), "epsilon")
    fig = result.plot(1)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 1 and len(fig.axes) == 2  # the heatmap and its colour bar
    shown = image_axes[0].images[0]
    expected = result.relevance[1].double().sum(0).numpy()
    np.testing.assert_allclose(np.asarray(shown.get_array()), expected)
    low, high = shown.get_clim()
    assert low == -high == -np.abs(expected).max()
    assert "target" in image_axes[0].get_title()


def test_plot_of_rows_is_a_bar_per_feature():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    result = explain(model, torch.rand(3, 5), "epsilon")
    (ax,) = result.plot(2).axes
    heights = [bar.get_width() for bar in ax.patches]
    np.testing.assert_allclose(heights, result.relevance[2].double().numpy())


def test_a_notebook_shows_each_heatmap_as_lrp_explain_draws_it():
    result = explain(minivgg(), torch.rand(3, 3, 32, 32), "epsilon")
    page = result._repr_html_()
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == 3 and "sample 2: target" in page
    with Image.open(io.BytesIO(base64.b64decode(uris[0]))) as image:
        shown = np.asarray(image.convert("RGB"))
    heat = result.heatmap(0)
    factor = shown.shape[0] // heat.shape[0]
    np.testing.assert_array_equal(shown[::factor, ::factor], heat)


def test_a_notebook_shows_rows_as_their_most_relevant_features():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 2)).eval()
    result = explain(model, torch.rand(2, 6), "epsilon")
    page = result._repr_html_()
    top = int(result.relevance[0].abs().argmax())
    assert f"<td>{top}: " in page.split("</tr>")[1] and page.count("<tr>") == 3


NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "quickstart.ipynb"


def test_the_quickstart_notebook_runs_and_shows_heatmaps_rows_and_texts():
    """docs/quickstart.ipynb executed as a user would (a kernel of this Python; nbclient fails on any cell's
    error), each tagged output holding what it should: the heatmaps as inline PNGs, the rows' table, the shaded
    texts, and a PNG figure for every plot()."""
    nbformat = pytest.importorskip("nbformat", reason="the test extra brings nbformat, nbclient and ipykernel")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = {tag: cell.outputs for cell in notebook.cells for tag in cell.metadata.get("tags", [])}
    assert set(outputs) == {"images-html", "images-plot", "rows-html", "rows-plot", "texts-html", "texts-plot"}

    def data(tag: str, kind: str) -> str:
        found = [out["data"][kind] for out in outputs[tag] if kind in out.get("data", {})]
        assert len(found) == 1, f"{tag}: {len(found)} outputs of {kind}"
        return found[0]

    images = data("images-html", "text/html")
    assert "lrpcli Explanation" in images and images.count('src="data:image/png;base64,') == 4
    rows = data("rows-html", "text/html")
    assert "most relevant features" in rows and rows.count("<tr>") == 6  # the header and five rows
    texts = data("texts-html", "text/html")
    assert "lrpcli TextExplanation</b>: 2 text(s) with attnlrp" in texts and texts.count('title="') > 20
    for tag in ("images-plot", "rows-plot", "texts-plot"):
        with Image.open(io.BytesIO(base64.b64decode(data(tag, "image/png")))) as figure:
            assert min(figure.size) > 100
