"""Helpers for the CLI tests: tiny models in every saved form, images, and independent checks.

Nothing here uses lrpcli to compute expected values except :func:`reference_relevance`,
which runs the library's Python API on the original ``nn.Module`` (so a CLI result that
matches it went through loading, preprocessing and writing without losing anything).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from click.testing import CliRunner, Result
from PIL import Image
from torch import nn

CLASSES = ["cat", "dog", "bird", "fish"]
ARCH = "lrpcli.architectures:MiniVGG"
ARCH_KWARGS = "{num_classes: 4, width: 4}"


# --------------------------------------------------------------------------- models


def minivgg(seed: int = 0, width: int = 4, num_classes: int = 4, scale: float = 3.0) -> nn.Module:
    """MiniVGG with zero biases (so LRP conserves: relevance sum == logit) and logits of order 1."""
    from lrpcli.sources.architectures import MiniVGG

    torch.manual_seed(seed)
    model = MiniVGG(num_classes=num_classes, width=width).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.bias.zero_()
                module.weight.mul_(scale)
    return model


class TinyGray(nn.Module):
    """A one-channel 8x8 classifier (digits-like)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=3, padding=1)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.relu(self.conv(x))))


def tiny_gray(seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyGray().eval()
    with torch.no_grad():
        model.conv.bias.zero_()
        model.fc.bias.zero_()
        model.fc.weight.mul_(20.0)
    return model


class Gated(nn.Module):
    """Uses torch.exp, which no LRP rule covers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=3)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = torch.exp(h)  # (h * exp(h) would now be an activation of h alone: relevance passes through it)
        return self.fc(h.mean(dim=(2, 3)))


def save_torchscript(model: nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(model), str(path))
    return path


def save_exported(model: nn.Module, path: Path, example: torch.Tensor) -> Path:
    from torch.export import Dim

    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: Dim.AUTO}})
    torch.export.save(program, str(path))
    return path


def save_safetensors(model: nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def write_spec(path: Path, **entries: Any) -> Path:
    """A model spec YAML (JSON is valid YAML, so no quoting surprises)."""
    path.write_text("\n".join(f"{key}: {json.dumps(value)}" for key, value in entries.items()) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- images


def write_image(path: Path, seed: int, size: tuple[int, int] = (32, 32), mode: str = "RGB") -> Path:
    """A flat background with a coloured square and some noise (so predictions differ)."""
    rng = np.random.default_rng(seed)
    height, width = size
    channels = 3 if mode == "RGB" else 1
    image = np.zeros((height, width, channels), dtype=np.int64)
    image[:] = rng.integers(0, 256, channels)
    side = max(2, min(height, width) // 3)
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    image[top : top + side, left : left + side] = rng.integers(0, 256, channels)
    image = np.clip(image + rng.integers(-25, 26, image.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[:, :, 0] if channels == 1 else image, mode="L" if channels == 1 else "RGB").save(path)
    return path


def load_tensor(
    path: Path,
    mode: str = "RGB",
    size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """The model input for an image file, computed here with Pillow and numpy: (C, H, W) float32."""
    with Image.open(path) as image:
        image = image.convert(mode)
        if size is not None and (image.height, image.width) != tuple(size):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if mean is not None:
        array = array - np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    if std is not None:
        array = array / np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def logits_of(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x[None] if x.ndim == 3 else x).double().numpy()


def softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


def reference_relevance(model: nn.Module, x: torch.Tensor, target: int, composite: str = "epsilon_plus_flat", **params: Any) -> np.ndarray:
    """LRP through the library's Python API on the original module (no files, no CLI)."""
    from lrpcli import explain

    result = explain(model, x[None], composite, target=target, params=params or None)
    return result.relevance[0].detach().double().numpy()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- running and reading results


@dataclass
class Run:
    result: Result
    out: Path
    args: list[str] = field(default_factory=list)

    @property
    def code(self) -> int:
        return self.result.exit_code

    @property
    def stderr(self) -> str:
        return self.result.stderr

    @property
    def stdout(self) -> str:
        return self.result.stdout

    def describe(self) -> str:
        return f"lrp {' '.join(self.args)}\nexit {self.code}\nstderr:\n{self.stderr}\nexception: {self.result.exception!r}"

    def rows(self) -> list[dict[str, str]]:
        return read_csv(self.out / "summary.csv")

    def run_json(self) -> dict[str, Any]:
        return json.loads((self.out / "run.json").read_text(encoding="utf-8"))

    def array(self, relative: str) -> np.ndarray:
        return np.load(self.out / relative)

    def png(self, relative: str) -> np.ndarray:
        with Image.open(self.out / relative) as image:
            assert image.format == "PNG", f"{relative} is a {image.format}, not a PNG"
            return np.asarray(image.convert("RGB"))

    def files(self) -> set[str]:
        return {p.relative_to(self.out).as_posix() for p in self.out.rglob("*") if p.is_file()}


def lrp(*args: Any, out: Path | None = None) -> Run:
    """``lrp ARGS... [-o OUT]`` in-process; stdout must stay empty unless something prints results."""
    from lrpcli.cli import main

    argv = [str(a) for a in args]
    if out is not None:
        argv += ["-o", str(out)]
    result = CliRunner().invoke(main, argv, catch_exceptions=True)
    return Run(result=result, out=Path(out) if out is not None else Path("."), args=argv)


def read_csv(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def block(png: np.ndarray, relevance_shape: tuple[int, int], i: int, j: int) -> np.ndarray:
    """The PNG pixel standing for relevance pixel (i, j) (heatmaps are enlarged by an integer factor)."""
    factor = png.shape[0] // relevance_shape[0]
    assert png.shape[1] // relevance_shape[1] == factor
    return png[i * factor + factor // 2, j * factor + factor // 2]


def refused(run: Run, code: int, *fragments: str) -> None:
    """The run failed the way a user error should: exit ``code``, no traceback, and each fragment said on stderr."""
    assert run.code == code, run.describe()
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr, run.describe()
    for fragment in fragments:
        assert fragment in run.stderr, f"{fragment!r} not in:\n{run.describe()}"

