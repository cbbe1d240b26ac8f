"""Heatmaps: relevance -> colour image, overlays on the input, PNG files.

Colour maps come from matplotlib (``bwr``, ``seismic``, ``gray``, ...) plus zennit's
``coldnhot``, defined from its colour stops. Normalisation is symmetric by default:
zero relevance is the colour map's centre, so red/blue mean for/against.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..registry import Registry

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


def _linear_weights(length: int, start: float, stop: float, cells: int) -> np.ndarray:
    """(length, cells): pixel i of an axis ``length`` long samples a map of ``cells`` cells that spans
    [start, stop) of that axis, linearly between cell centres (edge cells held); rows outside: zero."""
    centres = np.arange(length, dtype=np.float64) + 0.5
    inside = (centres >= start) & (centres < stop)
    u = np.clip((centres - start) / max(stop - start, 1e-12) * cells - 0.5, 0.0, cells - 1.0)
    low = np.floor(u).astype(np.intp)
    high = np.minimum(low + 1, cells - 1)
    frac = u - low
    weights = np.zeros((length, cells), dtype=np.float64)
    rows = np.arange(length)
    np.add.at(weights, (rows, low), 1.0 - frac)
    np.add.at(weights, (rows, high), frac)
    weights[~inside] = 0.0
    return weights


def at_input_size(heat: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """A model-sized (H, W) relevance map drawn at the input file's own ``size`` (height, width): resampled
    bilinearly into ``box`` (top, left, bottom, right: the part of the file the model saw, see
    ``Preprocessing.source_box``), 0 where the model saw nothing (outside a centre crop). Values stay
    relevance per model pixel, so the colour scale and a legend read as at the model's size."""
    heat = relevance_map(heat)
    top, left, bottom, right = box
    rows = _linear_weights(size[0], top, bottom, heat.shape[0])
    columns = _linear_weights(size[1], left, right, heat.shape[1])
    return rows @ heat @ columns.T


SCALE_MODES = ("per-image", "shared", "percentile")


@dataclass(frozen=True)
class Scale:
    """How a heatmap's colours are scaled: which |relevance| maps to the colour map's ends.

    ``per-image``: each heatmap's own largest |R| (the default). ``percentile``: each heatmap's
    ``percentile``-th percentile of |R| (99.5 by default), larger values clipped to the end colours, so
    that one hot pixel does not wash out the rest. ``shared``: one scale for a whole run, ``value``
    when given (``shared:0.8``), else the largest |R| over all of the run's inputs (found by the run
    after its last batch)."""

    mode: str = "per-image"
    percentile: float = 99.5
    value: float | None = None

    @classmethod
    def parse(cls, text: "str | Scale | None") -> "Scale":
        """``per-image``, ``shared``, ``shared:VALUE`` (VALUE > 0), ``percentile`` or ``percentile:P`` (0 < P <= 100)."""
        if isinstance(text, Scale):
            return text
        raw = str(text or "per-image").strip()
        mode, _, argument = raw.partition(":")
        mode = {"per_image": "per-image", "image": "per-image", "perimage": "per-image"}.get(mode.lower().replace(" ", ""), mode.lower())
        hint = "give per-image, shared, shared:VALUE (a |relevance| > 0), percentile or percentile:P (0 < P <= 100)"
        if mode not in SCALE_MODES:
            from ..registry import suggest

            raise UsageError(f"--scale '{raw}': unknown scale", hint=suggest(mode, list(SCALE_MODES)) or hint)
        if not argument:
            return cls(mode)
        try:
            number = float(argument)
        except ValueError:
            raise UsageError(f"--scale '{raw}': '{argument}' is not a number", hint=hint) from None
        if mode == "percentile" and math.isfinite(number) and 0 < number <= 100:
            return cls(mode, percentile=number)
        if mode == "shared" and math.isfinite(number) and number > 0:
            return cls(mode, value=number)
        raise UsageError(f"--scale '{raw}': " + ("per-image takes no value" if mode == "per-image" else "value out of range"), hint=hint)

    def __str__(self) -> str:
        if self.mode == "percentile":
            return f"percentile:{self.percentile:g}"
        if self.mode == "shared" and self.value is not None:
            return f"shared:{self.value:g}"
        return self.mode

    @property
    def found_by_run(self) -> bool:
        """A shared scale the run must find (the largest |R| over its inputs) before its heatmaps are final."""
        return self.mode == "shared" and self.value is None

    def of(self, heat: np.ndarray) -> float:
        """The |relevance| that maps to the colour map's ends for this (H, W) map."""
        if self.mode == "shared" and self.value is not None:
            return float(self.value)
        magnitude = np.abs(heat[np.isfinite(heat)])
        if not magnitude.size:
            return 0.0
        largest = float(magnitude.max())
        if self.mode == "percentile":
            value = float(np.percentile(magnitude, self.percentile))
            return value if value > 0 else largest  # mostly zeros: the percentile is 0, use the largest
        return largest

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "percentile": self.percentile if self.mode == "percentile" else None, "value": self.value}


def largest_magnitude(heat: np.ndarray) -> float:
    """The largest finite |relevance| of a map (0 when there is none): the per-image scale."""
    finite = np.abs(heat[np.isfinite(heat)])
    return float(finite.max()) if finite.size else 0.0


def normalise(heat: np.ndarray, symmetric: bool = True, scale: float | None = None) -> np.ndarray:
    """To [0, 1]: symmetric puts 0 at 0.5 and ``scale`` (default: the largest |relevance|) at 0 or 1;
    values beyond ``scale`` fall outside [0, 1] (the colour table clips them to its ends). NaN stays NaN
    (the colour map's "bad" colour) without spoiling the scale of the other pixels."""
    finite = heat[np.isfinite(heat)]
    if symmetric:
        scale = largest_magnitude(heat) if scale is None else float(scale)
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


def heatmap_indices(
    relevance: np.ndarray, cmap: str = "bwr", symmetric: bool = True, scale: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Relevance -> (colour table rows (H, W), the colour table): a paletted heatmap (``scale``: see normalise)."""
    palette = _palette(COLORMAPS.resolve(cmap))
    return colour_indices(normalise(relevance_map(relevance), symmetric, scale), len(palette) - 1), palette


def heatmap_rgb(relevance: np.ndarray, cmap: str = "bwr", symmetric: bool = True, scale: float | None = None) -> np.ndarray:
    """Relevance -> uint8 RGB image (H, W, 3)."""
    indices, palette = heatmap_indices(relevance, cmap, symmetric, scale)
    return palette[indices]


OVERLAY_STYLES = ("colour", "grey")


def overlay_rgb(
    relevance: np.ndarray, pixels: np.ndarray, cmap: str = "bwr", alpha: float | None = None, scale: float | None = None, style: str = "colour"
) -> np.ndarray:
    """The heatmap's colours over the input, with an opacity that grows with |relevance|.

    ``colour`` (the default): over the input as it is, opacity |R| / scale (up to ``alpha``, default 1):
    where R is 0 the input's own colours show, where |R| reaches the scale the colour map's colour.
    ``grey``: over a grey copy of the input, opacity up to ``alpha`` (default 0.7)."""
    if style not in OVERLAY_STYLES:
        raise UsageError(f"unknown overlay style '{style}'", hint=f"use one of {', '.join(OVERLAY_STYLES)}")
    heat = relevance_map(relevance)
    scale = largest_magnitude(heat) if scale is None else float(scale)
    colours = heatmap_rgb(heat, cmap, scale=scale).astype(np.float64)
    image = pixels.astype(np.float64)
    image = image[..., None] if image.ndim == 2 else image
    if style == "grey" or image.shape[2] < 3:
        base = image[..., :3].mean(axis=2, keepdims=True).repeat(3, axis=2) if style == "grey" else image[..., :1].repeat(3, axis=2)
    else:
        base = image[..., :3]
    alpha = (0.7 if style == "grey" else 1.0) if alpha is None else float(alpha)
    strength = np.clip(np.nan_to_num(np.abs(heat) / scale, nan=0.0), 0.0, 1.0) if scale > 0 else np.zeros_like(heat)
    weight = (alpha * strength)[..., None]
    return ((1 - weight) * base + weight * colours).round().astype(np.uint8)


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
    path: Path,
    relevance: np.ndarray,
    pixels: np.ndarray | None = None,
    cmap: str = "bwr",
    overlay: bool = False,
    legend: bool = False,
    scale: "float | Scale | None" = None,
    overlay_style: str = "colour",
    min_side: int = MIN_SIDE,
) -> float:
    """Write a heatmap (or an overlay on ``pixels``) as PNG, atomically; ``legend`` adds the colour bar and its scale.

    ``scale``: the |relevance| at the colour map's ends, a number or a :class:`Scale` (default: the map's
    own largest |R|); ``min_side``: enlarged to at least this many pixels a side. Returns the scale used."""
    from ..outputs import write_atomic

    heat = relevance_map(relevance)
    scale = (scale if isinstance(scale, Scale) else Scale()).of(heat) if scale is None or isinstance(scale, Scale) else float(scale)
    level = 1  # one of thousands of files: encoding speed matters more than the last few hundred bytes
    if legend:
        image = enlarge(
            overlay_rgb(heat, pixels, cmap, scale=scale, style=overlay_style) if overlay and pixels is not None else heatmap_rgb(heat, cmap, scale=scale),
            min_side,
        )
        image = np.concatenate([image, legend_strip(image.shape[1], cmap, scale)], axis=0)
        write_atomic(path, png_bytes(np.ascontiguousarray(image), compress_level=level))
        return scale
    if overlay and pixels is not None:
        data = png_bytes(enlarge(overlay_rgb(heat, pixels, cmap, scale=scale, style=overlay_style), min_side), compress_level=level)
    else:
        indices, palette = heatmap_indices(heat, cmap, scale=scale)
        used = int(indices.max()) + 1
        if used <= 256:
            data = png_bytes(enlarge(indices, min_side), palette[:used], compress_level=level)
        else:
            data = png_bytes(enlarge(palette[indices], min_side), compress_level=level)
    write_atomic(path, data)
    return scale
