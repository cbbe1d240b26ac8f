"""Heatmaps at the input file's own size (``--heatmap-size input``), the geometry behind them (``--short-side``,
``--crop-pct``, ``--interpolation``, CenterCrop's rounding), and the messages for a missing timm/torchvision
(issue 26 item 2). The real timm and torchvision checks are tests/test_zoo_timm.py (zoo venv)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cli_support import lrp, minivgg, refused, save_torchscript, write_image
from lrpcli.data.images import Preprocessing
from lrpcli.render.heatmaps import at_input_size, heatmap_rgb, relevance_map


# --------------------------------------------------------------------------- the geometry


def test_short_side_keeps_the_aspect_ratio_and_truncates_the_longer_side_as_torchvision_resize_does():
    # torchvision.transforms.functional._compute_resized_output_size: new_long = int(size * long / short)
    steps = Preprocessing.from_options(short_side=40).steps(120, 161)
    assert steps == [("resize", (0, 0, 40, int(40 * 161 / 120)))]  # 53.66 -> 53
    assert Preprocessing.from_options(short_side=40).steps(161, 120) == [("resize", (0, 0, 53, 40))]


def test_centre_crop_offsets_are_rounded_as_torchvision_centercrop_rounds_them():
    # CenterCrop: top = int(round((h - crop_h) / 2.0)); Python rounds half to even (round(3.5) = 4, round(2.5) = 2)
    steps = Preprocessing.from_options(crop=[32, 32]).steps(39, 37)
    assert steps == [("crop", (4, 2, 32, 32))]  # (39-32)/2 = 3.5 -> 4 (floor division gave 3); (37-32)/2 = 2.5 -> 2


def test_crop_pct_with_a_size_is_timms_resize_then_crop():
    from lrpcli.cli.options import spec_preprocessing

    prep = spec_preprocessing(None, {"size": "32", "crop_pct": 0.8})
    assert (prep.short_side, prep.crop, prep.size) == (40, (32, 32), (32, 32))  # floor(32 / 0.8) = 40


def test_interpolation_is_the_resampling_filter_of_every_resize(tmp_path):
    write_image(tmp_path / "a.png", 7, size=(40, 30))
    bicubic = Preprocessing.from_options(size=[16, 16], interpolation="bicubic").pixels(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as image:
        expected = np.asarray(image.convert("RGB").resize((16, 16), Image.Resampling.BICUBIC))
    assert np.array_equal(bicubic, expected)
    with pytest.raises(Exception, match="unknown interpolation"):
        Preprocessing.from_options(interpolation="cubic-ish")


def test_the_source_box_is_the_part_of_the_file_the_model_saw():
    # 120x160 -> shorter side 40 (scale 3; width 53, so 160/53 per pixel) -> centre crop 32: rows 4..36, columns 10..42
    top, left, bottom, right = Preprocessing.from_options(short_side=40, crop=[32, 32]).source_box(120, 160)
    assert (top, bottom) == pytest.approx((4 * 3, 36 * 3))
    assert (left, right) == pytest.approx((10 * 160 / 53, 42 * 160 / 53))
    assert Preprocessing.from_options(size=[32, 32]).source_box(120, 160) == (0.0, 0.0, 120.0, 160.0)


def test_a_relevance_map_at_the_input_size_is_torchs_bilinear_resampling():
    # torch.nn.functional.interpolate(mode="bilinear", align_corners=False): the same half-pixel sampling
    heat = np.random.default_rng(0).normal(size=(8, 8))
    ours = at_input_size(heat, (0.0, 0.0, 30.0, 40.0), (30, 40))
    torchs = torch.nn.functional.interpolate(torch.from_numpy(heat)[None, None], size=(30, 40), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(ours, torchs.numpy(), atol=1e-12)
    # a crop: the box holds the map resampled to the box's size, and outside it there is nothing (0)
    boxed = at_input_size(heat, (8.0, 4.0, 24.0, 20.0), (32, 24))
    inner = torch.nn.functional.interpolate(torch.from_numpy(heat)[None, None], size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(boxed[8:24, 4:20], inner.numpy(), atol=1e-12)
    assert not boxed[:8].any() and not boxed[24:].any() and not boxed[:, :4].any() and not boxed[:, 20:].any()


# --------------------------------------------------------------------------- lrp explain --heatmap-size input


@pytest.fixture
def photos(tmp_path):
    save_torchscript(minivgg(), tmp_path / "m.ts")
    for i, size in enumerate([(160, 120), (120, 160), (161, 99)]):  # (width, height), as photos come
        write_image(tmp_path / "photos" / f"p{i}.png", 40 + i, size=(size[1], size[0]))
    return tmp_path


def _png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_heatmaps_at_the_input_size_have_each_files_size_and_its_resampled_relevance(photos):
    out = photos / "out"
    run = lrp("explain", photos / "m.ts", photos / "photos", "--size", "32", "--mean", "0.5", "--std", "0.25", "--heatmap-size", "input", "-q", out=out)
    assert run.code == 0, run.describe()
    for i, (width, height) in enumerate([(160, 120), (120, 160), (161, 99)]):
        png = _png(out / "heatmaps" / f"p{i}.png")
        assert png.shape == (height, width, 3)
        heat = relevance_map(np.load(out / "relevance" / f"p{i}.npy"))
        assert heat.shape == (32, 32)  # the arrays stay at the model's size
        resampled = torch.nn.functional.interpolate(torch.from_numpy(heat)[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
        expected = heatmap_rgb(resampled, "bwr", scale=float(np.abs(heat).max()))
        assert np.abs(png.astype(int) - expected.astype(int)).max() <= 1  # (a colour-table row off where a value sits on a boundary)
    assert json.loads((out / "run.json").read_text())["heatmaps"]["size"] == "input"
    model_sized = lrp("explain", photos / "m.ts", photos / "photos", "--size", "32", "--mean", "0.5", "--std", "0.25", "-q", out=photos / "model")
    assert model_sized.code == 0 and _png(photos / "model" / "heatmaps" / "p0.png").shape == (128, 128, 3)  # 32 enlarged 4x, as before


def test_at_the_input_size_a_crop_leaves_the_rest_of_the_file_blank_and_overlays_show_the_file(photos):
    out = photos / "out"
    run = lrp("explain", photos / "m.ts", photos / "photos" / "p0.png", "--short-side", "40", "--crop", "32", "--mean", "0.5", "--std", "0.25",
              "--heatmap-size", "input", "-q", out=out)
    assert run.code == 0, run.describe()
    png = _png(out / "heatmaps" / "p0.png")
    white = heatmap_rgb(np.zeros((1, 1)), "bwr")[0, 0]  # bwr's centre: relevance 0
    # 120x160 -> 40x53, crop rows 4..36 and columns 10..42: in the file rows 12..108 and columns 30.2..126.8
    assert (png[:10] == white).all() and (png[110:] == white).all() and (png[:, :29] == white).all() and (png[:, 128:] == white).all()
    assert not (png[20:100, 40:120] == white).all()
    overlay = lrp("explain", photos / "m.ts", photos / "photos" / "p0.png", "--size", "32", "--mean", "0.5", "--std", "0.25",
                  "--heatmap-size", "input", "--overlay", "-q", out=photos / "overlay")
    assert overlay.code == 0, overlay.describe()
    assert _png(photos / "overlay" / "heatmaps" / "p0.png").shape == (120, 160, 3)


def test_a_shared_scale_redraws_the_heatmaps_at_the_input_size(photos):
    out = photos / "out"
    run = lrp("explain", photos / "m.ts", photos / "photos", "--size", "32", "--mean", "0.5", "--std", "0.25", "--heatmap-size", "input", "--scale", "shared", "-q", out=out)
    assert run.code == 0, run.describe()
    assert _png(out / "heatmaps" / "p2.png").shape == (99, 161, 3)


def test_heatmap_size_is_refused_for_rows(tmp_path):
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    save_torchscript(minivgg(), tmp_path / "m.ts")
    refused(lrp("explain", tmp_path / "m.ts", tmp_path / "rows.csv", "--heatmap-size", "input"), 2, "--heatmap-size applies to images")


# --------------------------------------------------------------------------- without timm / torchvision


@pytest.fixture
def without(monkeypatch):
    """Make ``import NAME`` fail as it does where the package is not installed (or is the tests' torchvision shim)."""

    def hide(*names: str) -> None:
        for name in names:
            for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                monkeypatch.delitem(sys.modules, module)
            monkeypatch.setitem(sys.modules, name, None)

    return hide


@pytest.fixture
def state_dict(tmp_path):
    torch.save(minivgg().state_dict(), tmp_path / "w.pth")
    write_image(tmp_path / "imgs" / "a.png", 3)
    return tmp_path


def test_arch_timm_without_timm_names_the_extra(state_dict, without):
    without("timm")
    run = lrp("explain", state_dict / "w.pth", state_dict / "imgs", "--arch", "timm:resnet10t", out=state_dict / "out")
    refused(run, 4, "timm", "pip install 'lrpcli[timm]'")


def test_a_spec_naming_timm_is_not_refused_as_untrusted_but_names_the_extra(state_dict, without):
    without("timm")
    (state_dict / "model.yaml").write_text("model: w.pth\narch: timm:resnet10t\n")
    run = lrp("explain", state_dict / "model.yaml", state_dict / "imgs", out=state_dict / "out")
    refused(run, 4, "pip install 'lrpcli[timm]'")
    assert "outside the model libraries" not in run.stderr and "--allow-code" not in run.stderr


def test_weights_enum_without_torchvision_names_the_extra(state_dict, without):
    without("torchvision")
    run = lrp("explain", state_dict / "w.pth", state_dict / "imgs", "--weights", "ResNet18_Weights.IMAGENET1K_V1", out=state_dict / "out")
    refused(run, 4, "torchvision", "pip install 'lrpcli[torchvision]'")


def test_a_timm_spec_with_a_checkpoint_path_or_pretrained_is_refused():
    from lrpcli.errors import ModelError
    from lrpcli.sources.zoo import TimmBuilder

    builder = TimmBuilder.__new__(TimmBuilder)  # (no timm here: the check comes before timm is used)
    builder.name = "resnet10t"
    for kwargs in ({"pretrained": True}, {"checkpoint_path": "/etc/passwd"}):
        with pytest.raises(ModelError, match="never loads or downloads"):
            builder(**kwargs)
