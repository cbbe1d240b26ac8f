"""Scores computed from perturbation curves and heatmaps: AOPC, confidence, rank correlation, localisation.

Pure functions on tensors, no model involved; the driver feeds them what it measured.
"""

from __future__ import annotations

import torch

from ..errors import UsageError


def confidence(probabilities: torch.Tensor) -> torch.Tensor:
    """Seed 003's confidence per row: (max - second max) / max of the class probabilities."""
    if probabilities.shape[-1] < 2:
        raise UsageError("confidence needs at least two classes")
    top = probabilities.topk(2, dim=-1).values
    return (top[..., 0] - top[..., 1]) / top[..., 0]


def aopc(curve: torch.Tensor) -> torch.Tensor:
    """(N, L+1) target scores along a perturbation curve -> (N,) ``1/(L+1) sum_k (f(x^0) - f(x^k))``."""
    curve = torch.as_tensor(curve, dtype=torch.float64)
    return (curve[:, :1] - curve).mean(dim=1)


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based; ties share the mean of their positions) along the last dimension of (N, D)."""
    values = values.detach().double()
    n, d = values.shape
    order = values.argsort(dim=1, stable=True)
    ordered = values.gather(1, order)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.long().cumsum(dim=1) - 1
    position = torch.arange(1, d + 1, dtype=torch.float64, device=values.device).expand(n, d)
    totals = torch.zeros(n, d, dtype=torch.float64, device=values.device).scatter_add_(1, group, position)
    sizes = torch.zeros(n, d, dtype=torch.float64, device=values.device).scatter_add_(1, group, torch.ones_like(position))
    average = totals.gather(1, group) / sizes.gather(1, group)
    return torch.empty_like(average).scatter_(1, order, average)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row of two (N, ...) tensors (flattened); NaN where one row is constant."""
    a = a.detach().reshape(a.shape[0], -1)
    b = b.detach().reshape(b.shape[0], -1).to(a.device)
    ra, rb = ranks(a), ranks(b)
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denominator = (ra.square().sum(dim=1) * rb.square().sum(dim=1)).sqrt()
    result = (ra * rb).sum(dim=1) / denominator
    return torch.where(denominator > 0, result, torch.full_like(result, float("nan")))


def heatmap(relevance: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) summed over channels; (N, F) unchanged: what a heatmap shows."""
    relevance = relevance.detach().double()
    return relevance.sum(dim=1) if relevance.ndim == 4 else relevance


def relevance_mass_accuracy(relevance: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) share of positive relevance inside the mask (channels summed first, then clamped at 0).

    0 where an input has no positive relevance at all. A random attribution scores about the
    mask's area fraction.
    """
    positive = heatmap(relevance).clamp(min=0)
    masks = masks.to(positive.device).reshape(positive.shape).to(positive.dtype)
    total = positive.reshape(positive.shape[0], -1).sum(dim=1)
    inside = (positive * masks).reshape(positive.shape[0], -1).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=1e-300), torch.zeros_like(total))
