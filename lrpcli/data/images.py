"""Image inputs: finding them (files, folders, globs), decoding and preprocessing.

Preprocessing follows the usual torchvision recipe without needing torchvision:
convert the mode (RGB or grayscale), resize (to a fixed size, or the shorter side to a
length as ``Resize(N)`` does), centre-crop (offsets rounded as ``CenterCrop`` rounds them),
scale to [0, 1], normalise with mean/std. On the same PIL image this gives the tensors
torchvision's and timm's eval transforms give (tests/test_zoo_timm.py). Hugging Face folders
also ask for torch's antialiased resize of the uint8 tensor (``resize_with: torch``, what their
fast processors run through torchvision) and floor-rounded crop offsets (``crop_anchor: floor``);
tests/test_hf_images.py. Errors name the file and say what to do.
"""

from __future__ import annotations

import glob
import math
import os
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InputError, UsageError
from ..limits import check_pixels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
MODES = {"rgb": "RGB", "l": "L", "gray": "L", "grey": "L", "grayscale": "L"}
#: resampling filters by the names torchvision and timm give them (Pillow does the resampling in both)
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
#: the filters torch resizes with: what torchvision's tensor resize runs for the names above (Hugging Face's
#: fast image processors map Pillow's NEAREST to torch's nearest-exact)
TORCH_MODES = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}
#: who resizes: Pillow (torchvision's PIL path, timm, Hugging Face's slow processors) or torch on the uint8
#: tensor (torchvision's tensor path, which Hugging Face's fast processors take)
RESIZERS = ("pillow", "torch")
#: a centre crop's offset, half the margin: Python's ``round`` (torchvision's CenterCrop: halves to even) or
#: ``floor`` (Hugging Face's image processors)
CROP_ANCHORS = ("round", "floor")


@dataclass(frozen=True)
class ImageInput:
    path: Path  # where it is
    name: str  # its path relative to the inputs' common folder (summary.csv's "input")
    output_name: str = ""  # ``name`` without its suffix (kept where two inputs would collide): how outputs are named


def collect_images(inputs: Sequence[str | Path], exclude: Sequence[Path] = ()) -> list[ImageInput]:
    """Every image under ``inputs`` (files, folders searched recursively, or glob patterns), sorted, no duplicates.

    Folders searched skip the ``exclude`` folders in them: a run's own heatmaps, written inside an
    input folder, would otherwise be collected as inputs by every later run."""
    found: list[Path] = []
    skipped = [folder.resolve() for folder in exclude]
    for item in inputs:
        text = str(item)
        path = Path(text)
        try:
            path.is_dir()
        except OSError as exc:  # a name longer than the file system takes (ENAMETOOLONG), ...: pathlib raises
            shown = text if len(text) <= 120 else text[:120] + "..."
            raise InputError(f"input not found: {shown} ({exc.strerror})", hint="give image files, folders or glob patterns") from exc
        if path.is_dir():
            base = path.resolve()
            inner = [folder.relative_to(base).parts for folder in skipped if folder != base and folder.is_relative_to(base)]
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(p.relative_to(path).parts[: len(parts)] == parts for parts in inner)
            )
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                raise InputError(f"no files match '{text}'")
            found += matches
        else:
            raise InputError(f"input not found: {text}", hint="give image files, folders or glob patterns")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    paths = list(unique.values())
    if not paths:
        raise InputError("no images found in the given inputs", hint=f"image files end in {', '.join(IMAGE_SUFFIXES)}")
    root = _common_folder([p.resolve() for p in paths])
    names = [printable(p.resolve().relative_to(root).as_posix()) for p in paths]
    items = [ImageInput(path=p, name=name, output_name=out) for p, name, out in zip(paths, names, _output_names(names))]
    return sorted(items, key=lambda item: item.name)  # one order whatever the listing or argument order


def printable(name: str) -> str:
    """A file name as valid UTF-8 text: bytes that are not UTF-8 (``bad\\xff.png`` on Linux) written as ``\\xff``.

    Names go into summary.csv, the manifest and the output file names; a raw undecodable byte
    (Python's surrogate escape) cannot be encoded into any of them and stopped the whole run."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _output_names(names: list[str]) -> list[str]:
    """Names without their suffix, except where that would make two inputs share outputs."""
    chosen = [name.rsplit(".", 1)[0] if "." in Path(name).name else name for name in names]
    while True:
        seen: dict[str, list[int]] = {}
        for index, name in enumerate(chosen):
            seen.setdefault(name, []).append(index)
        clashes = [index for indices in seen.values() if len(indices) > 1 for index in indices]
        if not clashes:
            return chosen
        for index in clashes:
            chosen[index] = names[index]  # full names are unique: this ends


def _common_folder(paths: list[Path]) -> Path:
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return common


def _pair(value: Any, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(items) == 1:
        items = items * 2
    if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
        raise UsageError(f"{what} must be one or two positive integers (height, width), got {value!r}")
    check_pixels((int(items[0]), int(items[1])), f"--{what}", UsageError)
    return int(items[0]), int(items[1])


def _side(value: Any, what: str) -> int | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) != 1 or not isinstance(items[0], int) or isinstance(items[0], bool) or items[0] <= 0:
        raise UsageError(f"{what} must be one positive integer (the shorter side's length), got {value!r}")
    check_pixels((items[0], items[0]), f"--{what}", UsageError)
    return int(items[0])


def _interpolation(value: Any) -> str:
    name = str(value or "bilinear").lower()
    if name not in INTERPOLATIONS:
        raise UsageError(f"unknown interpolation '{value}'", hint=f"use one of {', '.join(INTERPOLATIONS)}")
    return name


def _choice(value: Any, choices: Sequence[str], what: str) -> str:
    name = str(value or choices[0]).lower()
    if name not in choices:
        raise UsageError(f"unknown {what} '{value}'", hint=f"use one of {', '.join(choices)}")
    return name


def torch_resize(pixels: np.ndarray, height: int, width: int, interpolation: str) -> np.ndarray:
    """(H, W, C) uint8 resized as torchvision's tensor resize resizes it on a CPU: ``interpolate`` with
    antialiasing on the uint8 tensor (bilinear in float, rounded back, where the CPU lacks AVX2)."""
    if pixels.shape[:2] == (height, width):
        return pixels
    mode = TORCH_MODES[interpolation]
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].contiguous()
    native = mode != "bilinear" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")
    smooth = mode != "nearest-exact"
    y = torch.nn.functional.interpolate(x if native else x.float(), size=(height, width), mode=mode, align_corners=False if smooth else None, antialias=smooth)
    return (y if native else y.round_().to(torch.uint8))[0].permute(1, 2, 0).numpy()


def _floats(value: Any, what: str) -> list[float] | None:
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} must be numbers, got {value!r}") from exc
    if not all(math.isfinite(v) for v in numbers):
        raise UsageError(f"{what} must be finite numbers, got {value!r}")
    return numbers


@dataclass
class Preprocessing:
    """How a file becomes the model's input tensor (C, H, W)."""

    mode: str = "RGB"  # "RGB" or "L"
    size: tuple[int, int] | None = None  # final (height, width); None: the image's own size
    resize: tuple[int, int] | None = None  # resize to this first (height, width)
    crop: tuple[int, int] | None = None  # then centre-crop to this
    mean: list[float] | None = None
    std: list[float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    short_side: int | None = None  # or resize first so that the shorter side is this long (aspect ratio kept)
    interpolation: str = "bilinear"  # the resampling filter of every resize (INTERPOLATIONS)
    resize_with: str = "pillow"  # who resizes (RESIZERS)
    crop_anchor: str = "round"  # how a centre crop's offset is rounded (CROP_ANCHORS)

    @classmethod
    def from_options(cls, **options: Any) -> "Preprocessing":
        mode = options.get("mode") or "RGB"
        key = str(mode).lower()
        if key not in MODES:
            raise UsageError(f"unknown image mode '{mode}' (use RGB or L for grayscale)")
        mean, std = _floats(options.get("mean"), "mean"), _floats(options.get("std"), "std")
        channels = 3 if MODES[key] == "RGB" else 1
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) not in (1, channels):
                raise UsageError(f"{name} has {len(values)} values for {channels}-channel ({MODES[key]}) images")
        if std is not None and any(s <= 0 for s in std):
            raise UsageError(f"std must be positive, got {std}")
        resize, short_side = _pair(options.get("resize"), "resize"), _side(options.get("short_side"), "short-side")
        if resize is not None and short_side is not None:
            raise UsageError("--resize and --short-side exclude each other", hint="--resize H,W resizes to a fixed size; --short-side N keeps the aspect ratio")
        preprocessing = cls(
            mode=MODES[key],
            size=_pair(options.get("size"), "size"),
            resize=resize,
            crop=_pair(options.get("crop"), "crop"),
            mean=mean,
            std=std,
            short_side=short_side,
            interpolation=_interpolation(options.get("interpolation")),
            resize_with=_choice(options.get("resize_with"), RESIZERS, "resize_with"),
            crop_anchor=_choice(options.get("crop_anchor"), CROP_ANCHORS, "crop_anchor"),
        )
        if preprocessing.resize_with == "torch" and preprocessing.interpolation not in TORCH_MODES:
            raise UsageError(f"torch resizes with {', '.join(TORCH_MODES)}, not {preprocessing.interpolation}", hint="resize with pillow for this filter")
        return preprocessing

    @property
    def channels(self) -> int:
        return 3 if self.mode == "RGB" else 1

    def bounds(self) -> tuple[list[float], list[float]]:
        """The lowest and highest input values after normalisation, per channel (the z^B box)."""
        mean = self.mean or [0.0]
        std = self.std or [1.0]
        n = max(len(mean), len(std))
        mean = mean * n if len(mean) == 1 else mean
        std = std * n if len(std) == 1 else std
        return [(0.0 - m) / s for m, s in zip(mean, std)], [(1.0 - m) / s for m, s in zip(mean, std)]

    def decode(self, path: Path) -> Image.Image:
        """Open and convert an image; InputError naming the file if it is unreadable.

        An image with more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS`` is refused before it is
        decoded (a 90 KB PNG can hold 20000x20000 pixels): Pillow's warning for it is made an error."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    image.load()
                    return _to_8bit(image, path).convert(self.mode)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(
                f"{path}: refused as a possible decompression bomb ({exc})",
                hint="shrink the image first, or raise PIL.Image.MAX_IMAGE_PIXELS from Python if it is genuine",
            ) from exc
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            reason = "not an image Pillow can read" if isinstance(exc, UnidentifiedImageError) else str(exc)
            raise InputError(f"{path}: cannot decode image ({reason})") from exc

    def steps(self, height: int, width: int, path: Path | str = "the image") -> list[tuple[str, tuple[int, int, int, int]]]:
        """What geometry does to a ``height`` x ``width`` image, in order: ("resize", (0, 0, h, w)) and
        ("crop", (top, left, h, w)). One plan for :meth:`geometry` and :meth:`source_box`."""
        steps: list[tuple[str, tuple[int, int, int, int]]] = []
        if self.resize is not None:
            height, width = self.resize
            steps.append(("resize", (0, 0, height, width)))
        elif self.short_side is not None:  # torchvision's Resize(N): the longer side truncated, as it does
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(self.short_side * long / short)
            height, width = (new_long, self.short_side) if width <= height else (self.short_side, new_long)
            steps.append(("resize", (0, 0, height, width)))
        if self.crop is not None:
            crop_h, crop_w = self.crop
            if height < crop_h or width < crop_w:
                raise InputError(f"{path}: image is {height}x{width}, smaller than the crop {crop_h}x{crop_w}")
            if self.crop_anchor == "floor":
                top, left = (height - crop_h) // 2, (width - crop_w) // 2
            else:
                top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))  # CenterCrop's offsets
            steps.append(("crop", (top, left, crop_h, crop_w)))
            height, width = crop_h, crop_w
        if self.size is not None and (height, width) != self.size:
            if steps:
                raise InputError(
                    f"{path}: after resize/crop the image is {height}x{width}, "
                    f"but the model takes {self.size[0]}x{self.size[1]}"
                )
            steps.append(("resize", (0, 0, *self.size)))
        return steps

    def geometry(self, image: Image.Image, path: Path) -> Image.Image:
        resample = INTERPOLATIONS[self.interpolation]
        for kind, (top, left, height, width) in self.steps(image.height, image.width, path):
            if kind == "resize" and self.resize_with == "torch":
                resized = torch_resize(_array(image), height, width, self.interpolation)
                image = Image.fromarray(resized[:, :, 0] if image.mode == "L" else resized)
            elif kind == "resize":
                image = image.resize((width, height), resample)
            else:
                image = image.crop((left, top, left + width, top + height))
        return image

    def source_box(self, height: int, width: int) -> tuple[float, float, float, float]:
        """The part of a ``height`` x ``width`` image that the model's input shows, in that image's pixels:
        (top, left, bottom, right). What a heatmap drawn at the input's own size maps the relevance into."""
        top, left, step_y, step_x = 0.0, 0.0, 1.0, 1.0  # input pixel edge (i, j) <-> image (top + i*step_y, left + j*step_x)
        current = (height, width)
        for kind, (dy, dx, h, w) in self.steps(height, width):
            if kind == "resize":
                step_y, step_x = step_y * current[0] / h, step_x * current[1] / w
            else:
                top, left = top + dy * step_y, left + dx * step_x
            current = (h, w)
        return top, left, top + current[0] * step_y, left + current[1] * step_x

    def pixels(self, path: Path) -> np.ndarray:
        """The image after mode conversion and geometry, uint8 (H, W, C): what heatmap overlays show."""
        return _array(self.geometry(self.decode(path), path))

    def tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """(H, W, C) uint8 -> (C, H, W) float32 in [0, 1], normalised by mean/std (in numpy: a few torch ops
        per image cost ~0.1 ms, as much as decoding a small PNG)."""
        x = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
        if self.mean is not None:
            x -= np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        if self.std is not None:
            x /= np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        return torch.from_numpy(x)

    def original(self, path: Path) -> np.ndarray:
        """The image in the model's colour mode at its own size, uint8 (H, W, C): what heatmaps drawn at the
        input's size (``--heatmap-size input``) show overlays on."""
        return _array(self.decode(path))

    def to_dict(self) -> dict[str, Any]:
        """The settings, as run.json and the manifest keep them (the newer ones only where they are not the
        default, so that a folder written before them resumes)."""
        data = {"mode": self.mode, "size": self.size, "resize": self.resize, "crop": self.crop, "mean": self.mean, "std": self.std}
        if self.short_side is not None:
            data["short_side"] = self.short_side
        if self.interpolation != "bilinear":
            data["interpolation"] = self.interpolation
        if self.resize_with != "pillow":
            data["resize_with"] = self.resize_with
        if self.crop_anchor != "round":
            data["crop_anchor"] = self.crop_anchor
        return data


def _array(image: Image.Image) -> np.ndarray:
    """A decoded image as uint8 (H, W, C), a channel axis for grayscale too."""
    array = np.array(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _to_8bit(image: Image.Image, path: Path) -> Image.Image:
    """16-bit grayscale scaled to 8 bits (Pillow's convert would clip it at 255)."""
    if image.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
        return image
    array = np.array(image)
    if image.mode == "F" or array.min() < 0 or array.max() > 65535:
        raise InputError(f"{path}: {image.mode} images with values outside 0..65535 are not supported", hint="save it as 8- or 16-bit")
    return Image.fromarray((array.astype(np.float64) / 257.0).round().astype(np.uint8), mode="L")


class ImageDataset(torch.utils.data.Dataset):
    """Decodes and preprocesses in DataLoader workers; a bad file yields its error, not an exception."""

    def __init__(self, items: list[ImageInput], preprocessing: Preprocessing, originals: bool = False):
        self.items = items
        self.preprocessing = preprocessing
        self.originals = originals  # hand back the image at its own size (for heatmaps drawn at that size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, np.ndarray | None, str | None]:
        item = self.items[index]
        try:
            image = self.preprocessing.decode(item.path)
            pixels = _array(self.preprocessing.geometry(image, item.path))
            return index, self.preprocessing.tensor(pixels), _array(image) if self.originals else pixels, None
        except InputError as exc:
            return index, None, None, exc.message


def collate(samples: list[tuple]) -> list[tuple]:
    """Keep samples as a list: the runner stacks the good ones and reports the bad ones."""
    return samples
