"""timm models and torchvision weight enums (issue 26 item 2), marker ``zoo``: they need timm and a torchvision
built for the installed torch, so they run in the zoo venv::

    /work/main/.zoo-venv/bin/python -m pytest -m zoo -q tests/test_zoo_timm.py

What lrp derives from timm (``--arch timm:NAME``) and from a weight enum (``--weights ENUM``) is checked against the
libraries' own transforms on a real photograph (matplotlib's grace_hopper.jpg): the tensors must be the ones
``timm.data.create_transform(**resolve_data_config(...))`` and ``enum.transforms()`` make of the same PIL image.
Tiny models are explained through the CLI from their state dicts and compared with ``explain()`` on the same
module and timm's own preprocessing. Nothing is downloaded (``pretrained=False``; the enums' transforms and meta
are data in torchvision).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_support import lrp, refused

pytestmark = pytest.mark.zoo


def _need(name: str):
    try:
        module = __import__(name)
        if name == "torchvision":
            import torchvision.models  # noqa: F401 - the tests' shim has no weight enums
            if not hasattr(module.models, "get_weight"):
                raise ImportError("the tests' torchvision shim")
        else:
            import timm.data  # noqa: F401
    except Exception as exc:  # not installed, or built for another torch
        pytest.skip(f"{name} does not import here ({type(exc).__name__}): run in the zoo venv")
    return module


@pytest.fixture(scope="module")
def photo() -> Path:
    import matplotlib.cbook

    path = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    with Image.open(path) as image:
        assert image.size != image.size[::-1]  # not square: the shorter side and the crop matter
    return path


def _ours(model: str, options: dict, photo: Path) -> torch.Tensor:
    """The tensor lrp feeds the model: the spec model_spec derives, the preprocessing spec_preprocessing makes."""
    from lrpcli.cli.options import model_spec, spec_preprocessing

    options = {"arch": None, "arch_kwargs": None, "weights_enum": None, **options}
    prep = spec_preprocessing(model_spec(model, options), options)
    return prep.tensor(prep.pixels(photo))


def _rgb(photo: Path) -> Image.Image:
    with Image.open(photo) as image:
        return image.convert("RGB")


# --------------------------------------------------------------------------- timm


TIMM_CASES = {
    "resnet10t: centre crop 0.875, bicubic": ("resnet10t", {}, {}),
    "cspdarknet53: bilinear, crop 0.887 at 256": ("cspdarknet53", {}, {}),
    "dm_nfnet_f0: squash, crop 0.9": ("dm_nfnet_f0", {}, {}),
    "vit_tiny: mean/std 0.5, img_size from the arguments": ("vit_tiny_patch16_224", {"img_size": 96}, {}),
    "user's size, crop_pct, interpolation and mean win": ("resnet10t", {}, {"size": "160", "crop_pct": 1.0, "interpolation": "bilinear", "mean": "0.5,0.5,0.5"}),
}


@pytest.mark.parametrize("name, kwargs, given", list(TIMM_CASES.values()), ids=list(TIMM_CASES))
def test_timm_preprocessing_is_resolve_data_config_and_timms_own_transform(tmp_path, photo, name, kwargs, given):
    timm = _need("timm")
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(name, pretrained=False, **kwargs)
    args = {}
    if "img_size" in kwargs:
        args["input_size"] = (3, kwargs["img_size"], kwargs["img_size"])
    if "size" in given:
        args["input_size"] = (3, int(given["size"]), int(given["size"]))
    args.update({k: v for k, v in given.items() if k in ("crop_pct", "interpolation")})
    if "mean" in given:
        args["mean"] = tuple(float(v) for v in given["mean"].split(","))
    theirs = create_transform(**resolve_data_config(args, model=model))(_rgb(photo))
    import yaml

    options = {"arch": f"timm:{name}", "arch_kwargs": yaml.safe_dump(kwargs) if kwargs else None, **given}
    ours = _ours(str(tmp_path / "w.pth"), options, photo)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_the_pretrained_cfg_lrp_reads_without_building_is_the_models_own():
    timm = _need("timm")
    from lrpcli.sources.zoo import timm_config

    for name, kwargs in (("resnet10t", {}), ("resnet18.a1_in1k", {}), ("vit_tiny_patch16_224", {"pretrained_cfg_overlay": {"crop_pct": 1.0}})):
        assert timm_config(name, kwargs) == timm.create_model(name, pretrained=False, **kwargs).pretrained_cfg


def test_imagenet_class_names_from_timm_offline_and_none_for_other_class_counts():
    _need("timm")
    from timm.data import ImageNetInfo

    from lrpcli.sources.zoo import timm_classes

    names = timm_classes("resnet10t", {})
    info = ImageNetInfo("imagenet-1k")
    assert len(names) == 1000 and names[0] == "tench" and names[1] == info.index_to_description(1).split(",")[0]
    assert timm_classes("resnet10t", {"num_classes": 5}) is None


def _tiny_timm(tmp_path: Path, name: str, kwargs: dict) -> tuple[torch.nn.Module, Path]:
    timm = _need("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    return model, tmp_path / "w.pth"


def test_a_timm_model_explains_from_its_state_dict_through_the_cli(tmp_path, photo):
    _need("timm")
    from timm.data import create_transform, resolve_data_config

    from lrpcli import explain

    model, weights = _tiny_timm(tmp_path, "resnet10t", {"num_classes": 5})
    (tmp_path / "imgs").mkdir()
    _rgb(photo).resize((160, 120)).save(tmp_path / "imgs" / "hopper.png")
    out = tmp_path / "out"
    run = lrp("explain", weights, tmp_path / "imgs", "--arch", "timm:resnet10t", "--arch-kwargs", "{num_classes: 5}", "--size", "96", "-c", "epsilon_plus_flat", "-q", out=out)
    assert run.code == 0, run.describe()
    assert "no --mean/--std" not in run.stderr  # timm's mean and std were used
    x = create_transform(**resolve_data_config({"input_size": (3, 96, 96)}, model=model))(Image.open(tmp_path / "imgs" / "hopper.png").convert("RGB"))[None]
    expected = explain(model, x, composite="epsilon_plus_flat").relevance[0].numpy()
    np.testing.assert_allclose(np.load(out / "relevance" / "hopper.npy"), expected, rtol=1e-4, atol=1e-6)
    preprocessing = json.loads((out / "run.json").read_text())["preprocessing"]
    assert (preprocessing["short_side"], preprocessing["crop"], preprocessing["interpolation"]) == (109, [96, 96], "bicubic")  # floor(96 / 0.875)


def test_a_spec_naming_timm_runs_without_allow_code_and_names_the_imagenet_classes(tmp_path, photo):
    _need("timm")
    from timm.data import ImageNetInfo

    _tiny_timm(tmp_path, "resnet10t", {})
    (tmp_path / "imgs").mkdir()
    _rgb(photo).resize((96, 80)).save(tmp_path / "imgs" / "hopper.png")
    (tmp_path / "model.yaml").write_text("model: w.pth\narch: timm:resnet10t\ninput: {size: [64, 64]}\n")
    run = lrp("explain", tmp_path / "model.yaml", tmp_path / "imgs", "--heatmap-size", "input", "-q", out=tmp_path / "out")
    assert run.code == 0, run.describe()
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    names = ImageNetInfo("imagenet-1k")
    assert row["prediction_label"] == names.index_to_description(int(row["prediction"])).split(",")[0]
    with Image.open(tmp_path / "out" / "heatmaps" / "hopper.png") as heatmap:
        assert heatmap.size == (96, 80)
    # the spec's size went into timm's resolution: 64 / 0.875 -> 73, then the 64 crop
    assert json.loads((tmp_path / "out" / "run.json").read_text())["preprocessing"]["short_side"] == 73


def test_a_tiny_vit_explains_at_the_size_it_was_built_for(tmp_path, photo):
    _need("timm")
    from timm.data import create_transform, resolve_data_config

    from lrpcli import explain

    kwargs = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 24, "num_heads": 2, "num_classes": 3}
    model, weights = _tiny_timm(tmp_path, "vit_tiny_patch16_224", kwargs)
    (tmp_path / "imgs").mkdir()
    _rgb(photo).save(tmp_path / "imgs" / "hopper.png")
    import yaml

    run = lrp("explain", weights, tmp_path / "imgs", "--arch", "timm:vit_tiny_patch16_224", "--arch-kwargs", yaml.safe_dump(kwargs, default_flow_style=True),
              "-c", "attnlrp", "-q", out=tmp_path / "out")
    assert run.code == 0, run.describe()
    x = create_transform(**resolve_data_config({"input_size": (3, 32, 32)}, model=model))(_rgb(photo))[None]
    expected = explain(model, x, composite="attnlrp").relevance[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out" / "relevance" / "hopper.npy"), expected, rtol=1e-4, atol=1e-6)


def test_timm_arguments_that_load_weights_and_unknown_names_are_refused(tmp_path):
    _need("timm")
    _tiny_timm(tmp_path, "resnet10t", {"num_classes": 2})
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "imgs" / "a.png")
    refused(lrp("explain", tmp_path / "w.pth", tmp_path / "imgs", "--arch", "timm:resnet10t", "--arch-kwargs", "{num_classes: 2, pretrained: true}"), 4, "pretrained=False")
    refused(lrp("explain", tmp_path / "w.pth", tmp_path / "imgs", "--arch", "timm:resnet10x"), 4, "timm has no model 'resnet10x'", "did you mean")


# --------------------------------------------------------------------------- torchvision weight enums


ENUMS = ["ResNet18_Weights.IMAGENET1K_V1", "ResNet50_Weights.IMAGENET1K_V2", "EfficientNet_B0_Weights.IMAGENET1K_V1", "Inception_V3_Weights.DEFAULT", "ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1"]


@pytest.mark.parametrize("enum", ENUMS)
def test_weight_enum_preprocessing_is_the_enums_own_transforms(tmp_path, photo, enum):
    torchvision = _need("torchvision")
    weights = torchvision.models.get_weight(enum)
    theirs = weights.transforms()(_rgb(photo))
    ours = _ours(str(tmp_path / "w.pth"), {"weights_enum": enum}, photo)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_a_weight_enum_gives_the_categories_and_its_builder_for_a_state_dict(tmp_path, photo):
    torchvision = _need("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    torch.save(model.state_dict(), tmp_path / "resnet18.pth")
    (tmp_path / "imgs").mkdir()
    _rgb(photo).resize((72, 64)).save(tmp_path / "imgs" / "hopper.png")
    run = lrp("explain", tmp_path / "resnet18.pth", tmp_path / "imgs", "--weights", "ResNet18_Weights.IMAGENET1K_V1", "--size", "64", "-q", out=tmp_path / "out")
    assert run.code == 0, run.describe()  # no --arch: the enum's builder, torchvision.models:resnet18
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert row["prediction_label"] == categories[int(row["prediction"])]
    with torch.no_grad():
        from lrpcli.cli.options import spec_preprocessing

        prep = spec_preprocessing(None, {"size": "64", "mean": "0.485,0.456,0.406", "std": "0.229,0.224,0.225"})
        assert int(row["prediction"]) == int(model(prep.tensor(prep.pixels(tmp_path / "imgs" / "hopper.png"))[None]).argmax())


def test_lrp_init_keeps_the_enum_and_writes_a_spec_that_runs(tmp_path, photo):
    torchvision = _need("torchvision")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    (tmp_path / "imgs").mkdir()
    _rgb(photo).resize((72, 64)).save(tmp_path / "imgs" / "hopper.png")
    made = lrp("init", tmp_path / "resnet18.pth", tmp_path / "imgs", "--weights", "ResNet18_Weights.IMAGENET1K_V1", "--size", "64", "-o", tmp_path / "model.yaml")
    assert made.code == 0, made.describe()
    import yaml

    spec = yaml.safe_load((tmp_path / "model.yaml").read_text())
    assert spec["arch"] == "torchvision.models:resnet18" and spec["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    run = lrp("explain", tmp_path / "model.yaml", tmp_path / "imgs", "-q", out=tmp_path / "out")
    assert run.code == 0, run.describe()


def test_weights_without_a_weights_file_say_that_nothing_is_downloaded(tmp_path):
    _need("torchvision")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "imgs" / "a.png")
    run = lrp("explain", tmp_path / "imgs", "--weights", "ResNet18_Weights.IMAGENET1K_V1")  # the weights file forgotten
    refused(run, 4, "does not download", "resnet18-f37072fd.pth")
    refused(lrp("explain", tmp_path / "imgs", tmp_path / "imgs", "--weights", "ResNet18_Weights.IMAGENET1K_V9"), 4, "has no member 'IMAGENET1K_V9'")
    refused(lrp("explain", tmp_path / "imgs", tmp_path / "imgs", "--weights", "ResNet19_Weights.IMAGENET1K_V1"), 4, "did you mean")
