"""Replacement values: what removed units are filled with, and filling them in.

Kept apart from the ordering because the reference value is its own choice
(``--replace``): zero, a mean, a blurred image or noise. A new kind (e.g. a mask token for
text models) is an entry in :data:`REPLACEMENTS` and a branch in :func:`replacement`.
"""

from __future__ import annotations

import math

import torch

from ..errors import UsageError
from ..registry import suggest


REPLACEMENTS = ("zero", "mean", "blur", "uniform")
IMAGE_ONLY_REPLACEMENTS = ("blur",)


def resolve_replacement(name: str, tabular: bool = False) -> str:
    key = str(name).strip().lower()
    if key not in REPLACEMENTS:
        raise UsageError(f"unknown replacement '{name}' (known: {', '.join(REPLACEMENTS)})", hint=suggest(key, list(REPLACEMENTS)))
    if tabular and key in IMAGE_ONLY_REPLACEMENTS:
        raise UsageError(f"replacement '{key}' needs images; CSV rows have no neighbourhood", hint="use zero, mean or uniform for CSV input")
    return key


#: texts: a zero token embedding, or the pad or unknown token in the removed token's place
TOKEN_REPLACEMENTS = ("zero", "pad", "unk")


def resolve_token_replacement(name: str) -> str:
    key = str(name).strip().lower()
    if key not in TOKEN_REPLACEMENTS:
        raise UsageError(
            f"replacement '{name}' does not apply to texts (known: zero, a zero token embedding; pad or unk, that token)",
            hint=suggest(key, list(TOKEN_REPLACEMENTS)),
        )
    return key


def feature_stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-feature mean, minimum and maximum over the rows of an (N, F) table (the CSV reference)."""
    x = x.detach()
    return {"mean": x.mean(dim=0), "low": x.amin(dim=0), "high": x.amax(dim=0)}


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (N, C, H, W) images channel by channel with a Gaussian of ``sigma`` pixels (edges replicated)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x.dtype).to(x.device)
    channels = x.shape[1]
    out = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = torch.nn.functional.conv2d(out, kernel.reshape(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return torch.nn.functional.conv2d(out, kernel.reshape(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def replacement(
    x: torch.Tensor,
    kind: str,
    *,
    generator: torch.Generator | None = None,
    blur_sigma: float | None = None,
    reference: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The values removed units are replaced with, shaped like ``x``.

    - ``zero``: 0 in the model's input space (for standardised inputs: the normalisation's mean).
    - ``mean``: images: each image's per-channel mean; tables: the per-feature mean over the
      rows (``reference["mean"]``, else over this batch).
    - ``blur``: images only: the Gaussian-blurred image (``blur_sigma``, default max(1, min(H, W)/16)).
    - ``uniform``: uniform noise in the input's value range: images: each image's per-channel
      minimum..maximum; tables: each feature's minimum..maximum over the rows.
    """
    x = x.detach()
    image = x.ndim == 4
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        if image:
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
        mean = reference["mean"] if reference else x.mean(dim=0)
        return mean.to(x).expand_as(x).clone()
    if kind == "blur":
        if not image:
            raise UsageError("replacement 'blur' needs images")
        sigma = blur_sigma if blur_sigma is not None else max(1.0, min(x.shape[2], x.shape[3]) / 16)
        return gaussian_blur(x, float(sigma))
    if kind == "uniform":
        noise = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
        if image:
            low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
        else:
            stats = reference or feature_stats(x)
            low, high = stats["low"].to(x), stats["high"].to(x)
        return low + noise * (high - low)
    raise UsageError(f"unknown replacement '{kind}' (known: {', '.join(REPLACEMENTS)})", hint=suggest(kind, list(REPLACEMENTS)))


def perturb(x: torch.Tensor, fill: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with the masked positions (all channels of a masked pixel) taken from ``fill``."""
    if x.ndim == 4:
        mask = mask[:, None]
    return torch.where(mask.to(x.device), fill, x)
