"""Heatmap colours are matplotlib's colour maps, whatever shortcut render.py takes to apply them."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image

from lrpcli.render import heatmaps as render


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


# --------------------------------------------------------------------------- scales


def _bwr(unit: np.ndarray) -> np.ndarray:
    """matplotlib's bwr at [0, 1] values (clipped), as bytes: the reference colours."""
    return (matplotlib.colormaps["bwr"](np.clip(unit, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)


@pytest.mark.parametrize(
    "text, mode, percentile, value",
    [
        (None, "per-image", 99.5, None),
        ("per-image", "per-image", 99.5, None),
        ("per_image", "per-image", 99.5, None),
        ("shared", "shared", 99.5, None),
        ("shared:0.25", "shared", 99.5, 0.25),
        ("percentile", "percentile", 99.5, None),
        ("Percentile:99", "percentile", 99.0, None),
        ("percentile:100", "percentile", 100.0, None),
    ],
)
def test_scale_parse(text, mode, percentile, value):
    scale = render.Scale.parse(text)
    assert (scale.mode, scale.percentile, scale.value) == (mode, percentile, value)
    assert render.Scale.parse(str(scale)) == scale  # written to the manifest and run.json, read back alike


@pytest.mark.parametrize(
    "text, fragment",
    [("shard", "did you mean 'shared'"), ("percentile:0", "out of range"), ("percentile:101", "out of range"), ("shared:-1", "out of range"),
     ("shared:nan", "out of range"), ("percentile:high", "not a number"), ("per-image:3", "takes no value")],
)
def test_bad_scales_are_usage_errors(text, fragment):
    from lrpcli.errors import UsageError

    with pytest.raises(UsageError) as caught:
        render.Scale.parse(text)
    assert fragment in f"{caught.value.message} {caught.value.hint}"


def test_scale_of_a_map():
    rng = np.random.default_rng(1)
    heat = rng.normal(size=(20, 20))
    heat[3, 4] = 50.0  # one hot pixel
    assert render.Scale().of(heat) == 50.0
    ranked = np.sort(np.abs(heat).ravel())  # 400 values: the 99th percentile lies at rank 0.99 * 399 = 395.01
    assert render.Scale("percentile", 99.0).of(heat) == pytest.approx(ranked[395] + 0.01 * (ranked[396] - ranked[395]))
    assert render.Scale("percentile", 99.0).of(heat) < 10  # the hot pixel does not set it
    assert render.Scale("percentile", 99.0).of(heat) == pytest.approx(np.percentile(np.abs(heat), 99.0))
    assert render.Scale("shared", value=2.5).of(heat) == 2.5
    sparse = np.zeros((40, 40))
    sparse[0, 0] = -3.0  # all but one zero: the percentile is 0, the largest |R| is used instead
    assert render.Scale("percentile").of(sparse) == 3.0


@pytest.mark.parametrize("scale", [None, 0.5, render.Scale("percentile", 90.0)])
def test_heatmap_at_a_given_scale_is_clipped_to_the_end_colours(scale, tmp_path):
    rng = np.random.default_rng(2)
    heat = rng.normal(size=(16, 16))
    heat[0, 0] = 9.0
    used = {None: 9.0, 0.5: 0.5}.get(scale) if not isinstance(scale, render.Scale) else float(np.percentile(np.abs(heat), 90.0))
    expected = _bwr(0.5 + 0.5 * heat / used)
    returned = render.save_heatmap(tmp_path / "h.png", heat, scale=scale)
    assert returned == pytest.approx(used)
    with Image.open(tmp_path / "h.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    factor = pixels.shape[0] // heat.shape[0]
    np.testing.assert_array_equal(pixels[::factor, ::factor], expected)
    if used < 9.0:
        assert (np.abs(heat) > used).sum() > 5  # clipped pixels exist: they are the end colours
        assert tuple(pixels[0, 0]) == (255, 0, 0)


def test_legend_shows_the_scale_used(tmp_path):
    heat = np.linspace(-1.0, 2.0, 64).reshape(8, 8)
    render.save_heatmap(tmp_path / "a.png", heat, legend=True, scale=0.75)
    render.save_heatmap(tmp_path / "b.png", heat, legend=True)
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png").convert("RGB")) for n in "ab")
    top = render.enlarge(np.zeros((8, 8, 3))).shape[0]
    np.testing.assert_array_equal(a[top:], render.legend_strip(a.shape[1], "bwr", 0.75))
    np.testing.assert_array_equal(b[top:], render.legend_strip(b.shape[1], "bwr", 2.0))  # per image: its own max |R|
    assert not np.array_equal(a[top:], b[top:])  # the labels differ


# --------------------------------------------------------------------------- overlays


def test_colour_overlay_keeps_the_input_s_colours_where_relevance_is_zero():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    heat = np.zeros((6, 6))
    heat[1, 1], heat[2, 2], heat[3, 3] = 4.0, -4.0, 2.0
    out = render.overlay_rgb(heat, pixels, "bwr")
    zero = heat == 0
    np.testing.assert_array_equal(out[zero], pixels[zero])  # the input as it is, in colour
    assert tuple(out[1, 1]) == (255, 0, 0) and tuple(out[2, 2]) == (0, 0, 255)  # |R| at the scale: the map's colour
    half = 0.5 * pixels[3, 3].astype(float) + 0.5 * _bwr(np.array([0.75]))[0].astype(float)  # |R| half the scale: half opaque
    assert np.abs(out[3, 3].astype(float) - half).max() <= 0.5 + 1e-9
    # at a smaller (shared or percentile) scale, values beyond it are fully opaque, not more
    clipped = render.overlay_rgb(heat, pixels, "bwr", scale=2.0)
    assert tuple(clipped[1, 1]) == (255, 0, 0) and tuple(clipped[3, 3]) == (255, 0, 0)


def test_grey_overlay_greys_the_input():
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    heat = np.zeros((5, 5))
    heat[0, 0] = 1.0
    out = render.overlay_rgb(heat, pixels, "bwr", style="grey")
    grey = pixels.astype(float).mean(axis=2)
    assert np.abs(out[1:, 1:].astype(float) - grey[1:, 1:, None]).max() <= 0.5
    expected = 0.3 * grey[0, 0] + 0.7 * np.array([255.0, 0.0, 0.0])  # opacity up to 0.7
    assert np.abs(out[0, 0] - expected).max() <= 0.5
    one_channel = render.overlay_rgb(heat, pixels[..., :1], "bwr")  # a grayscale input keeps its grey
    np.testing.assert_array_equal(one_channel[1:, 1:], pixels[1:, 1:, :1].repeat(3, axis=2))
