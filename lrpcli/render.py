"""Heatmaps: relevance -> colour image, overlays on the input, PNG files.

Colour maps come from matplotlib (``bwr``, ``seismic``, ``gray``, ...) plus zennit's
``coldnhot``, defined from its colour stops. Normalisation is symmetric by default:
zero relevance is the colour map's centre, so red/blue mean for/against.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from .registry import Registry

#: matplotlib's names, as users know them; plus zennit's coldnhot
COLORMAPS: Registry[Any] = Registry("colormap")
for _name in ("bwr", "seismic", "coolwarm", "gray", "hot", "viridis", "piyg", "rdbu_r"):
    COLORMAPS.register(_name, _name)
# zennit's 'coldnhot' ('0ff,00f,80:000,f00,ff0,fff'): cyan-blue-black below zero, black-red-yellow-white above
COLORMAPS.register(
    "coldnhot",
    [(0.0, "#00ffff"), (0.25, "#0000ff"), (0.5, "#000000"), (2 / 3, "#ff0000"), (5 / 6, "#ffff00"), (1.0, "#ffffff")],
)

MIN_SIDE = 128  # small inputs (8x8 digits) are enlarged so a heatmap can be seen


def colormap(name: str):
    """A matplotlib Colormap by (any spelling of) its registered name."""
    import matplotlib

    key = COLORMAPS.resolve(name)
    spec = COLORMAPS.get(key)
    if isinstance(spec, list):
        from matplotlib.colors import LinearSegmentedColormap

        return LinearSegmentedColormap.from_list(key, spec)
    return matplotlib.colormaps[{"piyg": "PiYG", "rdbu_r": "RdBu_r"}.get(spec, spec)]


def relevance_map(relevance: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) relevance -> (H, W): summed over channels."""
    relevance = np.asarray(relevance, dtype=np.float64)
    return relevance.sum(axis=0) if relevance.ndim == 3 else relevance


def normalise(heat: np.ndarray, symmetric: bool = True) -> np.ndarray:
    """To [0, 1]: symmetric puts 0 at 0.5 and the largest |relevance| at 0 or 1. NaN stays NaN (the colour
    map's "bad" colour) without spoiling the scale of the other pixels."""
    finite = heat[np.isfinite(heat)]
    if symmetric:
        scale = float(np.abs(finite).max()) if finite.size else 0.0
        return np.where(np.isnan(heat), np.nan, 0.5) if scale == 0 else 0.5 + 0.5 * heat / scale
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return np.where(np.isnan(heat), np.nan, 0.0) if high == low else (heat - low) / (high - low)


@functools.lru_cache(maxsize=None)
def _palette(name: str) -> np.ndarray:
    """The colour map's lookup table as uint8 RGB rows, plus one last row for NaN ("bad").

    Looking colours up in a cached table is what matplotlib does too, minus its per-call
    overhead (measured for a 3x32x32 relevance: 0.34 ms through the colour map, 0.12 ms with the table)."""
    cmap = colormap(name)
    rgba = np.concatenate([cmap(np.arange(cmap.N)), cmap(np.array([np.nan]))])
    return (rgba[:, :3] * 255).round().astype(np.uint8)


def colour_indices(unit: np.ndarray, entries: int) -> np.ndarray:
    """Values in [0, 1] -> rows of a colour table of ``entries`` colours, as matplotlib indexes its own
    (x * N, truncated; 1.0 and above the last colour, below 0 the first); NaN -> row ``entries`` (bad)."""
    scaled = unit * entries
    bad = np.isnan(scaled)
    indices = np.clip(np.nan_to_num(scaled, nan=0.0), 0, entries - 1).astype(np.intp)
    if bad.any():
        indices[bad] = entries
    return indices


def heatmap_indices(relevance: np.ndarray, cmap: str = "bwr", symmetric: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Relevance -> (colour table rows (H, W), the colour table): a paletted heatmap."""
    palette = _palette(COLORMAPS.resolve(cmap))
    return colour_indices(normalise(relevance_map(relevance), symmetric), len(palette) - 1), palette


def heatmap_rgb(relevance: np.ndarray, cmap: str = "bwr", symmetric: bool = True) -> np.ndarray:
    """Relevance -> uint8 RGB image (H, W, 3)."""
    indices, palette = heatmap_indices(relevance, cmap, symmetric)
    return palette[indices]


def overlay_rgb(relevance: np.ndarray, pixels: np.ndarray, cmap: str = "bwr", alpha: float = 0.7) -> np.ndarray:
    """The heatmap over a grey version of the input, opaque where |relevance| is large."""
    heat = relevance_map(relevance)
    colours = heatmap_rgb(heat, cmap).astype(np.float64)
    grey = pixels.astype(np.float64).mean(axis=2, keepdims=True).repeat(3, axis=2)
    scale = float(np.abs(heat).max()) or 1.0
    weight = (alpha * np.abs(heat) / scale)[..., None]
    return ((1 - weight) * grey + weight * colours).round().astype(np.uint8)


def enlarge(rgb: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor so the shorter side is at least ``min_side``."""
    factor = max(1, -(-min_side // max(1, min(rgb.shape[:2]))))
    return rgb if factor == 1 else rgb.repeat(factor, axis=0).repeat(factor, axis=1)


def png_bytes(image: np.ndarray, palette: np.ndarray | None = None, compress_level: int = 6) -> bytes:
    """PNG of an RGB (H, W, 3) image, or of colour table rows (H, W) with their ``palette``
    (at most 256 colours: a paletted PNG, a third of the bytes to compress, the same colours once opened).
    ``compress_level`` is zlib's (Pillow's default 6; 1 encodes ~2x faster, files a little larger)."""
    import io

    from PIL import Image

    if palette is None:
        picture = Image.fromarray(image)
    else:
        picture = Image.fromarray(image.astype(np.uint8)).convert("P")  # 2-D uint8: mode L
        picture.putpalette(palette.tobytes())
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


LEGEND_BAR = 10  # pixels: the colour bar under a heatmap with --legend, then a line of its scale


def legend_strip(width: int, cmap: str, scale: float) -> np.ndarray:
    """A white strip (rows, width, 3) with the colour bar from -scale to +scale and the three values under it:
    with it, heatmaps scaled to their own largest |R| can be read and compared."""
    from PIL import Image, ImageDraw, ImageFont

    palette = _palette(COLORMAPS.resolve(cmap))
    columns = colour_indices(np.linspace(0.0, 1.0, width), len(palette) - 1)
    font = ImageFont.load_default()
    text_height = 12
    strip = Image.new("RGB", (width, LEGEND_BAR + text_height + 4), "white")
    strip.paste(Image.fromarray(np.repeat(palette[columns][None], LEGEND_BAR, axis=0).astype(np.uint8)), (0, 2))
    draw = ImageDraw.Draw(strip)
    labels = (f"-{scale:.3g}", "0", f"+{scale:.3g}")
    for label, anchor_x in zip(labels, (0.0, 0.5, 1.0)):
        left, _, right, _ = draw.textbbox((0, 0), label, font=font)
        x = min(max(0, int(anchor_x * width - (right - left) * anchor_x)), max(0, width - (right - left)))
        draw.text((x, LEGEND_BAR + 3), label, fill="black", font=font)
    return np.asarray(strip)


def save_heatmap(
    path: Path, relevance: np.ndarray, pixels: np.ndarray | None = None, cmap: str = "bwr", overlay: bool = False, legend: bool = False
) -> None:
    """Write a heatmap (or an overlay on ``pixels``) as PNG, atomically; ``legend`` adds the colour bar and its scale."""
    from .outputs import write_atomic

    level = 1  # one of thousands of files: encoding speed matters more than the last few hundred bytes
    if legend:
        image = enlarge(overlay_rgb(relevance, pixels, cmap) if overlay and pixels is not None else heatmap_rgb(relevance, cmap))
        scale = float(np.abs(relevance_map(relevance)).max())
        image = np.concatenate([image, legend_strip(image.shape[1], cmap, scale)], axis=0)
        write_atomic(path, png_bytes(np.ascontiguousarray(image), compress_level=level))
        return
    if overlay and pixels is not None:
        data = png_bytes(enlarge(overlay_rgb(relevance, pixels, cmap)), compress_level=level)
    else:
        indices, palette = heatmap_indices(relevance, cmap)
        used = int(indices.max()) + 1
        if used <= 256:
            data = png_bytes(enlarge(indices), palette[:used], compress_level=level)
        else:
            data = png_bytes(enlarge(palette[indices]), compress_level=level)
    write_atomic(path, data)
