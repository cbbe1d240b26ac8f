"""``lrp compare``: figures of one input under several composites, and sheets of many inputs.

The PNGs are read back with Pillow and taken apart: panels are found by their light-grey
frames, the input panel is checked against the image file, heatmap panels against the
relevance the library computes, and against each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_support import load_tensor, lrp, reference_relevance

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "sample_models" / "shapes_minivgg"
DIGITS = ROOT / "sample_models" / "digits_cnn"
FRAME = (200, 200, 200)  # the outline drawn around every panel

pytestmark = pytest.mark.skipif(not SHAPES.is_dir() or not DIGITS.is_dir(), reason="sample_models/ is not built")


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def panels(png: np.ndarray, side: int) -> list[list[np.ndarray]]:
    """The side x side panels (inside their frames), grouped in rows top to bottom, left to right."""
    frame = np.all(png == FRAME, axis=2)
    height, width = frame.shape
    found = []
    for y, x in zip(*np.nonzero(frame)):
        if y + side + 2 > height or x + side + 2 > width or (x and frame[y, x - 1]) or (y and frame[y - 1, x]):
            continue
        if frame[y, x : x + side + 2].all() and frame[y : y + side + 2, x].all() and frame[y + side + 1, x : x + side + 2].all():
            found.append((int(y) + 1, int(x) + 1))
    rows: dict[int, list[np.ndarray]] = {}
    for y, x in sorted(found):
        rows.setdefault(y, []).append(png[y : y + side, x : x + side])
    return [rows[y] for y in sorted(rows)]


def colours(png: np.ndarray) -> int:
    return len(np.unique(png.reshape(-1, 3), axis=0))


def shrink(panel: np.ndarray, size: int) -> np.ndarray:
    """An enlarged panel back at its pixel size (the centre of each block)."""
    factor = panel.shape[0] // size
    return panel[factor // 2 :: factor, factor // 2 :: factor][:size, :size]


def assert_ok(run) -> None:
    assert run.code == 0, run.describe()
    assert run.stdout == "", "lrp compare prints nothing to stdout"


# --------------------------------------------------------------------------- one figure per input


def test_grid_per_input_shows_the_image_and_one_heatmap_per_composite(tmp_path):
    images = [SHAPES / "images" / "circle_02.png", SHAPES / "images" / "cross_00.png"]
    run = lrp("compare", SHAPES / "model.yaml", *images, "-c", "lrp_0", "-c", "epsilon_plus_flat", out=tmp_path / "cmp")
    assert_ok(run)
    assert run.files() == {"circle_02.png", "cross_00.png"}, "one figure per input, no temporary files left"
    for image in images:
        png = read_png(tmp_path / "cmp" / image.name)
        found = panels(png, 128)  # 32x32 inputs are enlarged 4x (nearest neighbour)
        assert len(found) == 1 and len(found[0]) == 3, "a grid is one row: the input and 2 heatmaps"
        shown, zero, flat = found[0]
        expected = np.asarray(Image.open(image).convert("RGB")).repeat(4, axis=0).repeat(4, axis=1)
        np.testing.assert_array_equal(shown, expected)
        assert colours(png) > 200, "the figure is not blank"
        for heat in (zero, flat):
            assert colours(heat) > 20, "a heatmap panel has many shades"
        difference = np.abs(zero.astype(int) - flat.astype(int)).mean()
        assert difference > 5, f"LRP-0 and epsilon_plus_flat panels look the same (mean |diff| {difference:.1f})"
        assert png.shape[0] > 128 + 3 * 13, "room for the header and the captions"


def test_width_grows_with_the_number_of_composites(tmp_path):
    image = DIGITS / "images" / "digit_0_idx1258.png"
    one = lrp("compare", DIGITS / "model.yaml", image, "-c", "lrp_0", "-q", out=tmp_path / "one")
    three = lrp("compare", DIGITS / "model.yaml", image, "-q", out=tmp_path / "three")  # the default trio
    assert_ok(one)
    assert_ok(three)
    assert one.stderr == "" and three.stderr == "", "-q: no progress, no summary"
    small, large = read_png(tmp_path / "one" / image.name), read_png(tmp_path / "three" / image.name)
    assert small.shape[0] == large.shape[0]
    assert large.shape[1] > small.shape[1] + 2 * 128
    assert [len(r) for r in panels(small, 128)] == [2]  # 8x8 digits are enlarged 16x
    trio = panels(large, 128)[0]
    assert [len(r) for r in panels(large, 128)] == [4]
    for a in range(1, 4):
        for b in range(a + 1, 4):
            assert np.abs(trio[a].astype(int) - trio[b].astype(int)).mean() > 5, f"default composites {a} and {b} look alike"


def test_heatmap_colours_follow_the_sign_of_the_relevance(tmp_path):
    image = SHAPES / "images" / "cross_05.png"
    run = lrp("compare", SHAPES / "model.yaml", image, "-c", "lrp_0", out=tmp_path / "cmp")
    assert_ok(run)
    heat = shrink(panels(read_png(tmp_path / "cmp" / "cross_05.png"), 128)[0][1], 32).astype(int)

    x = load_tensor(image, size=(32, 32), mean=[0.5] * 3, std=[0.25] * 3)
    relevance = reference_relevance(SHAPES / "model.ts", x, target=None, composite="lrp_0").sum(axis=0)
    strong = np.abs(relevance) > 0.2 * np.abs(relevance).max()
    assert (relevance[strong] > 0).any() and (relevance[strong] < 0).any(), "LRP-0 gives both signs here"
    red, blue = heat[..., 0] - heat[..., 2], heat[..., 2] - heat[..., 0]
    agree = np.where(relevance > 0, red > 20, blue > 20)[strong]
    assert agree.mean() > 0.95, f"only {agree.mean():.0%} of strong pixels have the colour of their sign"
    weak = np.abs(relevance) < 0.02 * np.abs(relevance).max()
    assert heat[weak].min() > 220, "near-zero relevance is near white with bwr"
    peak = np.unravel_index(np.abs(relevance).argmax(), relevance.shape)
    assert tuple(heat[peak]) in ((255, 0, 0), (0, 0, 255)), "each panel is scaled by its own largest |relevance|"


def test_shared_scale_keeps_magnitudes_comparable(tmp_path):
    image = SHAPES / "images" / "circle_02.png"
    args = ("compare", SHAPES / "model.yaml", image, "-c", "lrp_0", "-c", "epsilon_plus_flat", "-q")
    own = lrp(*args, out=tmp_path / "own")
    shared = lrp(*args, "--shared-scale", out=tmp_path / "shared")
    assert_ok(own)
    assert_ok(shared)
    (_, zero_own, flat_own), = panels(read_png(tmp_path / "own" / image.name), 128)
    (_, zero_shared, flat_shared), = panels(read_png(tmp_path / "shared" / image.name), 128)
    np.testing.assert_array_equal(zero_own, zero_shared)  # LRP-0 has the row's largest |R| here
    saturation = lambda panel: int((panel.max(axis=2).astype(int) - panel.min(axis=2)).max())  # noqa: E731
    assert saturation(flat_own) == 255, "per panel: the largest |R| gets the full colour"
    assert saturation(flat_shared) < 128, "shared: a composite with 5x smaller relevance stays pale"


def test_target_option_changes_the_heatmaps_not_the_input(tmp_path):
    image = SHAPES / "images" / "cross_00.png"
    pred = lrp("compare", SHAPES / "model.yaml", image, "-c", "epsilon_plus_flat", "-q", out=tmp_path / "pred")
    other = lrp("compare", SHAPES / "model.yaml", image, "-c", "epsilon_plus_flat", "-t", "square", "-q", out=tmp_path / "square")
    assert_ok(pred)
    assert_ok(other)
    (shown_a, heat_a), = panels(read_png(tmp_path / "pred" / image.name), 128)
    (shown_b, heat_b), = panels(read_png(tmp_path / "square" / image.name), 128)
    np.testing.assert_array_equal(shown_a, shown_b)
    assert np.abs(heat_a.astype(int) - heat_b.astype(int)).mean() > 5


def test_per_column_parameters(tmp_path):
    image = DIGITS / "images" / "digit_2_idx600.png"
    run = lrp("compare", DIGITS / "model.yaml", image, "-c", "epsilon", "-c", "epsilon:epsilon=1.0", "-q", out=tmp_path / "cmp")
    assert_ok(run)
    (_, small, large), = panels(read_png(tmp_path / "cmp" / image.name), 128)
    assert np.abs(small.astype(int) - large.astype(int)).mean() > 2, "epsilon=1 must change the heatmap"


# --------------------------------------------------------------------------- sheets


def test_sheet_has_a_row_per_input(tmp_path):
    all_digits = lrp("compare", DIGITS / "model.yaml", DIGITS / "images", out=tmp_path / "all.png")
    assert_ok(all_digits)
    assert "compared 6 of 6" in all_digits.stderr
    two = lrp("compare", DIGITS / "model.yaml", *sorted((DIGITS / "images").glob("*.png"))[:2], "--sheet", "-q", out=tmp_path / "two")
    assert_ok(two)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.png", "two"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["sheet.png"], "--sheet: one sheet, no per-input figures"

    big, small = read_png(tmp_path / "all.png"), read_png(tmp_path / "two" / "sheet.png")
    assert big.shape[1] == small.shape[1]
    assert big.shape[0] > small.shape[0] + 4 * 128
    rows = panels(big, 128)
    assert [len(r) for r in rows] == [4] * 6, "6 inputs x (input + 3 default composites)"
    inputs = [row[0] for row in rows]
    assert len({panel.tobytes() for panel in inputs}) == 6, "each row shows its own input"
    for row in rows:
        assert np.abs(row[1].astype(int) - row[3].astype(int)).mean() > 5


# --------------------------------------------------------------------------- errors


def test_unknown_composite_suggests_the_name(tmp_path):
    run = lrp("compare", SHAPES / "model.yaml", SHAPES / "images", "-c", "lrp_0", "-c", "epsilon_gama_box", out=tmp_path / "cmp")
    assert run.code == 3, run.describe()  # design.md: an unknown composite is a configuration error
    assert "epsilon_gama_box" in run.stderr and "did you mean 'epsilon_gamma_box'" in run.stderr
    assert not (tmp_path / "cmp").exists(), "nothing is written when a composite is wrong"


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["-c", "epsilon:=3"], 2, "expected NAME:KEY=VALUE"),
        (["-c", "lrp_0", "-c", "lrp-0"], 2, "given twice"),
        (["-t", "all"], 2, "one target per input"),
        (["-t", "9"], 2, "out of range"),
        (["-t", "hexagon"], 2, "not a class name"),
        (["--cmap", "rainbowz"], 2, "unknown colormap"),
    ],
)
def test_bad_options(tmp_path, args, code, message):
    run = lrp("compare", SHAPES / "model.yaml", SHAPES / "images" / "circle_02.png", *args, out=tmp_path / "cmp")
    assert run.code == code, run.describe()
    assert message in run.stderr


def test_missing_inputs(tmp_path):
    run = lrp("compare", DIGITS / "model.yaml", tmp_path / "nope.png", out=tmp_path / "cmp")
    assert run.code == 5 and "input not found" in run.stderr and "nope.png" in run.stderr, run.describe()
    (tmp_path / "empty").mkdir()
    run = lrp("compare", DIGITS / "model.yaml", tmp_path / "empty", out=tmp_path / "cmp")
    assert run.code == 5 and "no images found" in run.stderr, run.describe()
    run = lrp("compare", DIGITS / "model.yaml", out=tmp_path / "cmp")
    assert run.code == 2 and "no INPUTS" in run.stderr, run.describe()


def test_unreadable_image_is_named_and_the_others_are_written(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png at all")
    good = DIGITS / "images" / "digit_5_idx850.png"
    (folder / good.name).write_bytes(good.read_bytes())
    run = lrp("compare", DIGITS / "model.yaml", folder, "-c", "lrp_0", out=tmp_path / "cmp")
    assert run.code == 5, run.describe()
    assert "broken.png" in run.stderr and "1 of 2 input(s) failed" in run.stderr
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {good.name}
    stopped = lrp("compare", DIGITS / "model.yaml", folder, "-c", "lrp_0", "--on-error", "fail", "--sheet", out=tmp_path / "stop")
    assert stopped.code == 5 and "broken.png" in stopped.stderr, stopped.describe()
    assert not (tmp_path / "stop" / "sheet.png").exists()


# --------------------------------------------------------------------------- the library, without the CLI


def test_compose_draws_known_relevance():
    from lrpcli.runs.compare import Row, compose

    heat = np.zeros((8, 8), dtype=np.float32)
    heat[:4] = 1.0  # top half: positive
    heat[4:] = -0.5  # bottom half: negative, half as strong
    row = Row("x.png", np.zeros((8, 8, 3), np.uint8), 1, "one", 0.9, 1, "one", 2.0, [heat, -heat], [16.0, -16.0])
    png = compose([row], ["a", "b"])
    (_, a, b), = panels(png, 128)
    assert tuple(a[10, 10]) == (255, 0, 0) and tuple(b[10, 10]) == (0, 0, 255)
    assert a[100, 10, 2] == 255 and a[100, 10, 0] < 200, "-0.5 is a lighter blue"
    row.heats, row.sums = [heat, -heat, heat], [16.0, -16.0, 16.0]
    narrow, wide = compose([row], ["a", "b", "c"]), compose([row], ["a", "b", "a much longer composite label"])
    assert narrow.shape[1] > png.shape[1] + 128, "a column per composite"
    assert wide.shape[1] > narrow.shape[1] + 60, "columns widen to fit their labels"


def test_compare_overlays_draw_as_lrp_explain_draws_them():
    """lrp compare --overlay keeps the input's colours where R is 0 and shows the colour map's end where
    |R| reaches the scale, as lrp explain --overlay does; --overlay-style grey greys the input."""
    import numpy as np

    from lrpcli.runs.compare import heat_colours
    from lrpcli.render.heatmaps import colormap, overlay_rgb

    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    pixels[...] = (200, 40, 10)
    heat = np.array([[0.0, 2.0], [-2.0, 0.0]])
    drawn = heat_colours(heat, 2.0, "bwr", pixels)
    assert (drawn[0, 0] == (200, 40, 10)).all() and (drawn[1, 1] == (200, 40, 10)).all()
    red = (np.array(colormap("bwr")(1.0)[:3]) * 255).round()
    assert np.abs(drawn[0, 1].astype(float) - red).max() <= 1
    assert (drawn == overlay_rgb(heat, pixels, "bwr", scale=2.0)).all()
    grey = heat_colours(heat, 2.0, "bwr", pixels, "grey")
    assert len(set(grey[0, 0].tolist())) == 1  # a grey: r = g = b
