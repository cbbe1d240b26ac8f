"""Heatmap colours are matplotlib's colour maps, whatever shortcut render.py takes to apply them."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image

from lrpcli import render


def _matplotlib_colours(heat: np.ndarray, name: str) -> np.ndarray:
    """The straightforward way: normalise symmetrically, call the colour map, round to bytes."""
    scale = np.abs(heat[np.isfinite(heat)]).max()
    cmap = matplotlib.colormaps[name] if name != "coldnhot" else render.colormap("coldnhot")
    return (cmap(0.5 + 0.5 * heat / scale)[..., :3] * 255).round().astype(np.uint8)


@pytest.mark.parametrize("name", ["bwr", "seismic", "gray", "viridis", "coldnhot"])
def test_heatmap_colours_are_the_colour_maps(name, tmp_path):
    rng = np.random.default_rng(0)
    heat = rng.normal(size=(12, 9))
    heat[0, 0], heat[0, 1], heat[0, 2] = 4.0, -4.0, 0.0  # both ends of the map and its centre
    expected = _matplotlib_colours(heat, name)
    np.testing.assert_array_equal(render.heatmap_rgb(heat, name), expected)

    path = tmp_path / "h.png"
    render.save_heatmap(path, heat, cmap=name)
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    factor = pixels.shape[0] // heat.shape[0]
    assert factor > 1 and pixels.shape[:2] == (heat.shape[0] * factor, heat.shape[1] * factor)
    np.testing.assert_array_equal(pixels[::factor, ::factor], expected)


def test_not_a_number_gets_the_bad_colour(tmp_path):
    heat = np.array([[1.0, np.nan], [-1.0, 0.0]])
    colours = render.heatmap_rgb(heat, "bwr")
    np.testing.assert_array_equal(colours[0, 1], (matplotlib.colormaps["bwr"](np.nan)[:3] * np.array(255)).round())
    np.testing.assert_array_equal(colours[[0, 1, 1], [0, 0, 1]], _matplotlib_colours(heat, "bwr")[[0, 1, 1], [0, 0, 1]])
    render.save_heatmap(tmp_path / "nan.png", heat)  # more colours than a palette holds: written as RGB
    with Image.open(tmp_path / "nan.png") as image:
        assert image.mode == "RGB"


def test_out_of_range_values_get_the_end_colours():
    table = render.colour_indices(np.array([-0.5, 0.0, 0.999, 1.0, 7.0, np.inf, -np.inf, np.nan]), 256)
    assert table.tolist() == [0, 0, 255, 255, 255, 255, 0, 256]
