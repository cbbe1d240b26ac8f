"""Units and removal order: what is removed together, and in which order.

A *unit* is a pixel (all its channels), a ``patch x patch`` region or a CSV feature;
:func:`unit_map` says which unit each position belongs to. The perturbation curve removes
units by relevance, most relevant first (MoRF) or least relevant first (LeRF), a growing
share at each step. A new kind of unit (e.g. tokens of a text model) needs a branch in
:func:`unit_map`; everything downstream works on (N, U) unit scores and unit maps.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import InputError, UsageError


ORDERS = ("morf", "lerf")


def unit_map(shape: Sequence[int], patch: int = 1) -> tuple[torch.Tensor, int]:
    """Which unit each position of one input belongs to, and how many units there are.

    ``shape`` is one input's shape without the batch dimension: ``(C, H, W)`` images give an
    ``(H, W)`` map of patch indices (row-major over a grid of ``ceil(H/p) x ceil(W/p)``
    patches; edge patches may be smaller), ``(F,)`` features give ``arange(F)``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        if patch != 1:
            raise UsageError("--patch applies to images, not feature vectors")
        return torch.arange(shape[0]), shape[0]
    if len(shape) != 3:
        raise InputError(f"lrp evaluate takes images (C, H, W) or feature vectors (F,), got an input of shape {shape}")
    _, height, width = shape
    if patch > min(height, width):
        raise UsageError(f"--patch {patch} is larger than the {height}x{width} input")
    columns = -(-width // patch)
    rows = torch.arange(height) // patch
    cols = torch.arange(width) // patch
    return rows[:, None] * columns + cols[None, :], int(-(-height // patch) * columns)


def unit_relevance(relevance: torch.Tensor, units: torch.Tensor, count: int) -> torch.Tensor:
    """(N, ...) relevance -> (N, U): summed over channels and over each unit's positions."""
    relevance = relevance.detach().double()
    flat = relevance.sum(dim=1) if relevance.ndim == 4 else relevance  # images: over channels
    flat = flat.reshape(flat.shape[0], -1)
    index = units.reshape(1, -1).expand(flat.shape[0], -1).to(flat.device)
    return torch.zeros(flat.shape[0], count, dtype=flat.dtype, device=flat.device).scatter_add_(1, index, flat)


def tie_breaker(n: int, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, U): one random permutation of the units per input, used to break ties in :func:`perturbation_order`."""
    return torch.stack([torch.randperm(count, generator=generator) for _ in range(n)]) if n else torch.zeros(0, count, dtype=torch.long)


def perturbation_order(
    scores: torch.Tensor,
    order: str = "morf",
    generator: torch.Generator | None = None,
    *,
    shuffle: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, U) unit relevance -> (N, U) unit indices in removal order.

    MoRF: most relevant first; LeRF: least relevant first. Units of equal relevance (e.g. zero
    relevance on a blank border) are taken in the order of ``shuffle`` (a :func:`tie_breaker`
    permutation; drawn from ``generator`` when not given), so they are not removed top-left
    first. Without either, ties keep index order.
    """
    if order not in ORDERS:
        raise UsageError(f"unknown order '{order}' (known: {', '.join(ORDERS)})")
    n, count = scores.shape
    if shuffle is None:
        shuffle = tie_breaker(n, count, generator) if generator is not None else torch.arange(count).expand(n, count)
    shuffle = shuffle.to(scores.device)
    ranked = torch.argsort(scores.gather(1, shuffle), dim=1, descending=(order == "morf"), stable=True)
    return shuffle.gather(1, ranked)


def removal_counts(count: int, steps: int, max_fraction: float = 1.0) -> list[int]:
    """Units removed at steps k = 0..L: ``round(k / L * max_fraction * count)`` (halves round up)."""
    return [int(math.floor(k / steps * max_fraction * count + 0.5)) for k in range(steps + 1)]


def removal_mask(order: torch.Tensor, units: torch.Tensor, removed: int) -> torch.Tensor:
    """(N, U) removal order -> bool mask of removed positions, (N, H, W) or (N, F): the first ``removed`` units."""
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    position_rank = rank[:, units.reshape(-1).to(order.device)].reshape(order.shape[0], *units.shape)
    return position_rank < removed
