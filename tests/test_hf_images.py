"""Hugging Face image classifiers prepare images as their folder's image processor does (issue 26, item 1).

The oracle is the processor itself: `AutoImageProcessor.from_pretrained(folder)(images=...)["pixel_values"]` on
photo-like images of odd sizes (160x120, 97x203), against the tensor lrp feeds the model. The slow (Pillow)
processors run here; the fast (torchvision) ones need torchvision, which does not import beside the pinned torch:
their output was recorded with torchvision 0.28 and transformers 4.57 into tests/data/hf_fast_pixels.npz
(`python tests/test_hf_images.py --record` in a venv with torchvision rewrites it, and
`test_the_recording_is_what_the_fast_processors_give` checks it wherever torchvision imports). Then the
explanation through the CLI must equal `explain()` on the same model object with the processor's pixel values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from cli_support import lrp, refused  # noqa: E402

transformers = pytest.importorskip("transformers")

RECORDING = Path(__file__).parent / "data" / "hf_fast_pixels.npz"
LABELS = {0: "cat", 1: "dog", 2: "fox"}
#: (width, height, seed): landscape and portrait, odd sides, so crops have odd margins
PHOTOS = {"a.png": (160, 120, 1), "b.png": (97, 203, 2)}
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}

#: processor settings as model cards have them, at small sizes: (class, settings)
SLOW = {
    "convnext": ("ConvNextImageProcessor", {"size": {"shortest_edge": 32}, "crop_pct": 0.875, **IMAGENET}),  # ConvNeXt, ResNet
    "convnext-bicubic": ("ConvNextImageProcessor", {"size": {"shortest_edge": 29}, "crop_pct": 0.9, "resample": 3}),
    "convnext-384": ("ConvNextImageProcessor", {"size": {"shortest_edge": 384}, "resample": 3}),  # warped, no crop
    "deit": ("DeiTImageProcessor", {"size": {"height": 36, "width": 36}, "crop_size": {"height": 32, "width": 32}, **IMAGENET}),
    "beit": ("BeitImageProcessor", {"size": {"height": 37, "width": 41}, "crop_size": {"height": 31, "width": 30}}),
    "swin": ("ViTImageProcessor", {"size": {"height": 32, "width": 32}, "resample": 3, **IMAGENET}),
    "vit-unscaled": ("ViTImageProcessor", {"size": {"height": 24, "width": 20}, "do_rescale": False}),
    "bit": ("BitImageProcessor", {"size": {"shortest_edge": 40}, "crop_size": {"height": 33, "width": 35}}),
    "clip": ("CLIPImageProcessor", {"size": {"shortest_edge": 30}, "crop_size": {"height": 30, "width": 30}}),
    "mobilenet_v1": ("MobileNetV1ImageProcessor", {"size": {"shortest_edge": 37}, "crop_size": {"height": 32, "width": 32}}),
    "mobilenet_v2": ("MobileNetV2ImageProcessor", {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 31}}),
    "levit": ("LevitImageProcessor", {"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}}),
    "poolformer": ("PoolFormerImageProcessor", {"size": {"shortest_edge": 30}, "crop_size": {"height": 30, "width": 30}, "crop_pct": 0.9}),
    "efficientnet": ("EfficientNetImageProcessor", {"size": {"height": 40, "width": 40}, "crop_size": {"height": 33, "width": 33},
                                                    "do_center_crop": True, "rescale_factor": 1 / 127.5, "rescale_offset": True}),
    "efficientnet-top": ("EfficientNetImageProcessor", {"size": {"height": 41, "width": 39}}),  # nearest, include_top
}
#: the fast processors recorded (torch resizing: antialiased bilinear and bicubic, nearest-exact; the ConvNeXt
#: crop is torchvision's center_crop, whose offset rounds half to even: 97x203 gives a margin of 43)
FAST = {
    "convnext": SLOW["convnext"],
    "convnext-bicubic": SLOW["convnext-bicubic"],
    "deit": SLOW["deit"],
    "swin": SLOW["swin"],
    "mobilenet_v2": SLOW["mobilenet_v2"],
    "efficientnet-top": SLOW["efficientnet-top"],
}


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like image from integer arithmetic only (the same bytes on every machine): colour ramps, a few
    hard-edged discs and per-pixel noise, so that resampling filters and crop offsets all show."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    image = np.stack([np.abs((x * (3 + c + seed) + y * (5 - c) + 60 * c) % 510 - 255) for c in range(3)], axis=-1)
    for k in range(5):
        cx, cy, r = (37 * k * seed + 11) % width, (53 * k + 7 * seed) % height, 6 + (13 * k) % 25
        image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = [(71 * k + 40 * c * seed) % 256 for c in range(3)]
    noise = ((x * 73856093) ^ (y * 19349663) ^ (seed * 83492791)) % 41 - 20
    return Image.fromarray(np.clip(image + noise[:, :, None], 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name, (width, height, seed) in PHOTOS.items():
        photo(width, height, seed).save(folder / name)
    return folder


def processor_folder(folder: Path, config: dict, architecture: str = "ResNetForImageClassification") -> Path:
    """A folder with the processor's preprocessor_config.json and a config.json naming a classifier (enough
    for lrp to read it as a spec; no weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture], "id2label": {str(k): v for k, v in LABELS.items()}}), encoding="utf-8")
    return folder


def saved_config(cls: type, settings: dict, folder: Path) -> dict:
    cls(**settings).save_pretrained(folder)
    return json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))


def lrp_pixels(folder: Path, image: Path) -> torch.Tensor:
    """The tensor lrp explains for ``image``: the folder read as a spec, preprocessed as `lrp explain` does."""
    from lrpcli.cli.options import spec_preprocessing
    from lrpcli.sources.files import load_spec

    preprocessing = spec_preprocessing(load_spec(folder))
    return preprocessing.tensor(preprocessing.pixels(image))[None]


def processor_pixels(folder: Path, image: Path) -> torch.Tensor:
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    with Image.open(image) as opened:
        return processor(images=opened.convert("RGB"), return_tensors="pt")["pixel_values"].float()


# ------------------------------------------------------------------ preprocessing equals the processor's output


@pytest.mark.parametrize("case", sorted(SLOW))
def test_slow_processors_give_the_same_pixels(case, photos, tmp_path):
    name, settings = SLOW[case]
    folder = tmp_path / case
    processor_folder(folder, saved_config(getattr(transformers, name), settings, folder))
    for image in sorted(photos.iterdir()):
        expected = processor_pixels(folder, image)
        assert type(transformers.AutoImageProcessor.from_pretrained(folder)).__name__ == name
        torch.testing.assert_close(lrp_pixels(folder, image), expected, rtol=1e-6, atol=1e-5, msg=lambda m: f"{case} {image.name}: {m}")


def fast_normalise(pixels: np.ndarray, config: dict) -> torch.Tensor:
    """A fast processor's last step on its resized and cropped uint8 pixels (transformers 4.57,
    image_processing_utils_fast.py, rescale_and_normalize: mean and std fused with the rescale factor, then
    torchvision's normalize in float32; EfficientNet's include_top divides by std once more)."""
    x = torch.from_numpy(pixels).float()
    factor = config["rescale_factor"]
    mean = torch.tensor(config["image_mean"]) * (1.0 / factor)
    std = torch.tensor(config["image_std"]) * (1.0 / factor)
    x = (x - mean[:, None, None]) / std[:, None, None]
    if config.get("include_top"):
        x = x / torch.tensor(config["image_std"])[:, None, None]
    return x[None]


@pytest.mark.parametrize("case", sorted(FAST))
def test_fast_processors_give_the_same_pixels(case, photos, tmp_path):
    """The recorded fast processors' pixels (resized and cropped by torchvision, before rescale and normalise),
    normalised as the processor does, against lrp's tensor from the same preprocessor_config.json."""
    recording = np.load(RECORDING)
    config = json.loads(str(recording[f"config:{case}"]))
    assert config["image_processor_type"].endswith("Fast")
    folder = processor_folder(tmp_path / case, config)
    for image in sorted(photos.iterdir()):
        expected = fast_normalise(recording[f"pixels:{case}:{image.name}"], config)
        torch.testing.assert_close(lrp_pixels(folder, image), expected, rtol=1e-6, atol=1e-5, msg=lambda m: f"{case} {image.name}: {m}")


def test_fast_and_slow_differ_so_lrp_follows_the_class_the_folder_names(photos, tmp_path):
    """The fast processor is not the slow one with a new name (torch's bicubic is not Pillow's; torchvision
    rounds crop offsets): what the folder names is what lrp repeats."""
    recording = np.load(RECORDING)
    for case in ("convnext", "deit"):
        fast = processor_folder(tmp_path / f"{case}-fast", json.loads(str(recording[f"config:{case}"])))
        slow = processor_folder(tmp_path / f"{case}-slow", saved_config(getattr(transformers, SLOW[case][0]), SLOW[case][1], tmp_path / f"{case}-slow"))
        image = photos / "b.png"
        assert (lrp_pixels(fast, image) - lrp_pixels(slow, image)).abs().max() > 0.01  # a grey level, 1000x the tolerance


def fast_outputs(case: str, folder: Path) -> tuple[dict, dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """The fast processor of ``case`` saved into ``folder``: its config, its uint8 pixels before rescale and
    normalise, and its pixel_values, per photo."""
    name, settings = FAST[case]
    config = saved_config(getattr(transformers, name + "Fast"), settings, folder)
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    assert type(processor).__name__ == name + "Fast"
    pixels, values = {}, {}
    for image_name, (width, height, seed) in PHOTOS.items():
        image = photo(width, height, seed)
        bare = {"do_rescale": False, "do_normalize": False, **({"include_top": False} if "include_top" in config else {})}
        raw = processor(images=image, **bare, return_tensors="pt")["pixel_values"][0]
        assert raw.dtype == torch.uint8
        pixels[image_name] = raw.numpy()
        values[image_name] = processor(images=image, return_tensors="pt")["pixel_values"]
    return config, pixels, values


def test_the_recording_is_what_the_fast_processors_give(photos, tmp_path):
    """Where torchvision imports: the fast processors now give the recorded pixels, and lrp's tensor equals
    their pixel_values themselves."""
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # not installed, or a build that does not load beside this torch
        pytest.skip(f"torchvision does not import here ({type(exc).__name__}); the recording stands in for it")
    recording = np.load(RECORDING)
    for case in FAST:
        config, pixels, values = fast_outputs(case, tmp_path / case)
        assert config == json.loads(str(recording[f"config:{case}"]))
        processor_folder(tmp_path / case, config)
        for image_name in PHOTOS:
            np.testing.assert_array_equal(pixels[image_name], recording[f"pixels:{case}:{image_name}"])
            torch.testing.assert_close(lrp_pixels(tmp_path / case, photos / image_name), values[image_name], rtol=1e-6, atol=1e-5)


def record(path: Path = RECORDING) -> None:
    """Write tests/data/hf_fast_pixels.npz (needs torchvision)."""
    import tempfile

    arrays = {}
    for case in FAST:
        config, pixels, _ = fast_outputs(case, Path(tempfile.mkdtemp()))
        arrays[f"config:{case}"] = np.array(json.dumps(config, sort_keys=True))
        arrays.update({f"pixels:{case}:{name}": value for name, value in pixels.items()})
    path.parent.mkdir(exist_ok=True)
    np.savez_compressed(path, **arrays)


# ------------------------------------------------------------------ the run explains what the processor prepares


def _models():
    common = {"num_labels": 3, "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    return {
        "convnext": lambda: transformers.ConvNextForImageClassification(transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], **common)),
        "resnet": lambda: transformers.ResNetForImageClassification(transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", **common)),
        "deit": lambda: transformers.DeiTForImageClassification(transformers.DeiTConfig(
            image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, **common)),
        "swin": lambda: transformers.SwinForImageClassification(transformers.SwinConfig(
            image_size=32, patch_size=4, embed_dim=8, depths=[1], num_heads=[2], window_size=4, **common)),
    }


#: model, processor case, composite the folder implies; "convnext-fast" is a ConvNeXt saved with the fast processor
RUNS = {"convnext": ("convnext", "convnext", "epsilon_plus_flat"), "resnet": ("resnet", "convnext-bicubic", "epsilon_plus_flat"),
        "deit": ("deit", "deit", "attnlrp"), "swin": ("swin", "swin", "attnlrp"), "convnext-fast": ("convnext", "convnext", "epsilon_plus_flat")}


@pytest.mark.parametrize("run_name", sorted(RUNS))
def test_the_cli_explains_what_the_processor_prepares(run_name, photos, tmp_path):
    """`lrp explain DIR photos/`: labels from id2label, and each photo's relevance equal to explain() on the same
    model object with the processor's own pixel values (recorded ones for the fast processor)."""
    from lrpcli import explain
    from lrpcli.sources.files import load_spec

    model_name, case, composite = RUNS[run_name]
    torch.manual_seed(0)
    model = _models()[model_name]().eval()
    folder = tmp_path / run_name
    model.save_pretrained(folder)
    if run_name.endswith("-fast"):
        config = json.loads(str(np.load(RECORDING)[f"config:{case}"]))
        (folder / "preprocessor_config.json").write_text(json.dumps(config), encoding="utf-8")
    else:
        getattr(transformers, SLOW[case][0])(**SLOW[case][1]).save_pretrained(folder)
    assert load_spec(folder).composite == composite
    run = lrp("explain", folder, photos, "-q", out=tmp_path / "out")
    assert run.code == 0, run.describe()
    rows = run.rows()
    assert sorted(row["input"] for row in rows) == sorted(PHOTOS)

    class Wrapped(torch.nn.Module):  # the user's own: pixel values in, logits out
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    for row in rows:
        if run_name.endswith("-fast"):
            pixels = fast_normalise(np.load(RECORDING)[f"pixels:{case}:{row['input']}"], config)
        else:
            pixels = processor_pixels(folder, photos / row["input"])
        expected = explain(Wrapped().eval(), pixels, composite, target=int(row["target"]))
        assert row["prediction_label"] == LABELS[int(expected.outputs[0].argmax())]
        assert float(row["logit"]) == pytest.approx(float(expected.outputs[0, int(row["target"])]), rel=1e-4, abs=1e-7)
        relevance = expected.relevance[0].numpy()
        scale = float(np.abs(relevance).max())
        assert scale > 0
        np.testing.assert_allclose(run.array(row["relevance"]), relevance, rtol=1e-4, atol=1e-5 * scale)


def test_evaluation_masks_take_every_step_the_images_take(tmp_path):
    """`lrp evaluate --masks`: a mask goes through the images' whole geometry (shorter side, crop and its
    rounding, torch resizing), so a grey photo and its own mask stay aligned (the mask was cropped from the
    unresized file before)."""
    from lrpcli.cli.evaluate import _image_batch
    from lrpcli.data.images import ImageInput, Preprocessing

    grey = np.asarray(photo(97, 203, 2).convert("L"))
    Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2)).save(tmp_path / "photo.png")
    Image.fromarray(grey).save(tmp_path / "mask.png")
    preprocessing = Preprocessing.from_options(short_side=36, crop=[32, 32], crop_anchor="floor", resize_with="torch", interpolation="bicubic", mean=[0.5], std=[0.5])
    x, masks = _image_batch([ImageInput(tmp_path / "photo.png", "photo.png")], preprocessing, [tmp_path / "mask.png"])
    np.testing.assert_array_equal(masks[0].numpy(), preprocessing.pixels(tmp_path / "photo.png")[:, :, 0] > 127)
    assert masks[0].float().mean() not in (0.0, 1.0)


def test_resizing_options_are_checked_and_recorded():
    """resize_with and crop_anchor (what a folder's processor sets): bad values are UsageErrors; run.json and the
    manifest record them only where they are not the default (a folder written before them resumes)."""
    from lrpcli.data.images import Preprocessing
    from lrpcli.errors import UsageError

    with pytest.raises(UsageError, match="resize_with"):
        Preprocessing.from_options(resize_with="opencv")
    with pytest.raises(UsageError, match="crop_anchor"):
        Preprocessing.from_options(crop_anchor="ceil")
    with pytest.raises(UsageError, match="torch resizes with"):
        Preprocessing.from_options(resize_with="torch", interpolation="lanczos")
    assert "resize_with" not in Preprocessing.from_options().to_dict()
    recorded = Preprocessing.from_options(short_side=36, crop=[32, 32], resize_with="torch", crop_anchor="floor").to_dict()
    assert recorded["resize_with"] == "torch" and recorded["crop_anchor"] == "floor"


# ------------------------------------------------------------------ what lrp does not repeat is named


def test_a_processor_lrp_does_not_repeat_is_named_with_what_to_give_instead(photos, tmp_path):
    folder = processor_folder(tmp_path / "mobilevit", saved_config(transformers.MobileViTImageProcessor, {}, tmp_path / "mobilevit"))
    run = lrp("explain", folder, photos, "-q", out=tmp_path / "o1")
    refused(run, 4, "MobileViTImageProcessor", "ConvNext", f"model: {folder}", "input.resize")
    fast = dict(json.loads(str(np.load(RECORDING)["config:deit"])), resample=1)  # lanczos: torchvision's tensor resize has none
    folder = processor_folder(tmp_path / "lanczos", fast)
    refused(lrp("explain", folder, photos, "-q", out=tmp_path / "o2"), 4, "DeiTImageProcessorFast resamples with 1", "input.resize")
    folder = processor_folder(tmp_path / "longest", saved_config(transformers.BitImageProcessor, {"size": {"shortest_edge": 30, "longest_edge": 40}}, tmp_path / "longest"))
    refused(lrp("explain", folder, photos, "-q", out=tmp_path / "o3"), 4, "this one has size", "input.resize")


if __name__ == "__main__" and "--record" in sys.argv:
    record()
    print(f"wrote {RECORDING}")
