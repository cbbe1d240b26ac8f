"""Offline data for the sample models and the tests.

Two sources, both available without a download:

- ``make_shapes``: generated 32x32 colour images, one shape per image. The class
  evidence is known pixel by pixel (the shape's mask), so a heatmap can be judged
  against where the evidence really is.
- ``load_digits``: scikit-learn's bundled 8x8 handwritten digits (an MNIST-like set
  that ships with scikit-learn, so nothing is fetched at run time).

Library code: nothing here prints; numpy and Pillow only (scikit-learn is imported
by ``load_digits`` alone, when it is called).
"""

from __future__ import annotations

import numpy as np

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")

# Extent of the drawn shapes in pixels (inclusive) and noise levels. Background noise
# and a random background tint make the background carry no class evidence; the
# contrast floor keeps every shape visible.
_MIN_SIZE, _MAX_SIZE = 8, 14
_NOISE_STD = 12.0
_MIN_CONTRAST = 90.0


def _shape_mask(kind: str, size: int, top: int, left: int, image_size: int) -> np.ndarray:
    """Boolean mask of one filled shape inside the box (top, left, size, size)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = left, top, left + size - 1, top + size - 1
    if kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=255)
    elif kind == "cross":
        bar = max(2, round(size / 3))
        start = (size - bar) // 2
        draw.rectangle((x0, y0 + start, x1, y0 + start + bar - 1), fill=255)
        draw.rectangle((x0 + start, y0, x0 + start + bar - 1, y1), fill=255)
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown shape '{kind}'")
    return np.asarray(canvas) > 127


def make_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n`` images with one shape each, and where the shape is.

    Each image has a randomly tinted, noisy background and one filled shape of its
    class (``SHAPE_CLASSES``) at a random place, of a random size (8-14 px at 32x32,
    scaled with ``size``) and a random colour that differs clearly from the background.
    Only the shape carries class evidence, so its mask is the ground truth for
    "where should the relevance be".

    Returns ``images`` (uint8, (n, size, size, 3)), ``labels`` (int64, (n,), indices
    into ``SHAPE_CLASSES``) and ``masks`` (bool, (n, size, size), True on the shape).
    The same ``seed`` gives the same data.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng(seed)
    scale = size / 32
    low, high = max(4, round(_MIN_SIZE * scale)), max(5, round(_MAX_SIZE * scale))
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, len(SHAPE_CLASSES), size=n).astype(np.int64)
    masks = np.empty((n, size, size), dtype=bool)
    for i in range(n):
        extent = int(rng.integers(low, high + 1))
        top = int(rng.integers(0, size - extent + 1))
        left = int(rng.integers(0, size - extent + 1))
        mask = _shape_mask(SHAPE_CLASSES[labels[i]], extent, top, left, size)
        background = rng.uniform(30, 225, size=3)
        while True:
            colour = rng.uniform(0, 255, size=3)
            if np.linalg.norm(colour - background) >= _MIN_CONTRAST:
                break
        image = np.empty((size, size, 3), dtype=np.float64)
        image[...] = background
        image[mask] = colour
        image += rng.normal(0.0, _NOISE_STD, size=image.shape)
        images[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        masks[i] = mask
    return images, labels, masks


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as float32 images in [0, 1] and int64 labels.

    Pixel values 0..16 are divided by 16; ink is bright. Needs scikit-learn (bundled
    data, no download).
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn") from error
    data = _load()
    images = (data.images / 16.0).astype(np.float32)
    return images, data.target.astype(np.int64)


def digits_split(n: int, held_out: int = 360, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held_out) of the digits split the sample model was trained with.

    Shared by the training script and the tests, so that "held-out" means the same
    images in both.
    """
    if not 0 < held_out < n:
        raise ValueError(f"held_out must be between 1 and n - 1, got {held_out} of {n}")
    order = np.random.default_rng(seed).permutation(n)
    return order[held_out:], order[:held_out]
