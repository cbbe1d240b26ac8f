"""Layer, group and RMS normalisation in one form, and their transpose with 1/sigma held constant.

Every normalisation op the graph can hold (``layer_norm``, ``native_layer_norm``,
``group_norm``, ``native_group_norm``, ``rms_norm``, ``_fused_rms_norm``) becomes one
:func:`normalize` node with args ``(x, weight, bias)`` and keyword ``variant`` ("layer",
"group" or "rms"), ``size`` (the normalised shape, or the number of groups) and ``eps``.

AttnLRP (Achtibat et al. 2024, Prop. 3.4) and CP-LRP (Ali et al. 2022) both hold the
normaliser ``1/sigma`` constant, which makes the op linear in ``x``:
``y = centre(x) * weight / sigma + bias``. :func:`transpose` is that linear map's
transpose, so the epsilon rule is ``R_in = x * transpose(R / stabilise(y))``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

VARIANTS = ("layer", "group", "rms")


def normalize(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    variant: str,
    size: Sequence[int] | int,
    eps: float | None,
) -> torch.Tensor:
    """The op itself (the model's forward pass)."""
    if variant == "layer":
        return F.layer_norm(x, list(size), weight, bias, eps)
    if variant == "group":
        return F.group_norm(x, int(size), weight, bias, eps)
    out = F.rms_norm(x, list(size), weight, eps)
    return out if bias is None else out + bias


def _dims(x: torch.Tensor, size: Sequence[int]) -> tuple[int, ...]:
    return tuple(range(x.ndim - len(size), x.ndim))


def _eps(x: torch.Tensor, eps: float | None) -> float:
    return torch.finfo(x.dtype).eps if eps is None else float(eps)


def transpose(
    x: torch.Tensor,
    s: torch.Tensor,
    weight: torch.Tensor | None,
    *,
    variant: str,
    size: Sequence[int] | int,
    eps: float | None,
) -> torch.Tensor:
    """``J^T s`` for the op's Jacobian ``J`` with sigma held constant (centring kept)."""
    if variant == "group":
        groups = int(size)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        g = s if weight is None else s * weight.reshape(shape)
        grouped = x.reshape(x.shape[0], groups, -1)
        sigma = torch.sqrt(grouped.var(dim=-1, unbiased=False, keepdim=True) + _eps(x, eps))
        g = g.reshape(x.shape[0], groups, -1) / sigma
        return (g - g.mean(dim=-1, keepdim=True)).reshape(x.shape)
    dims = _dims(x, size)
    g = s if weight is None else s * weight
    if variant == "layer":
        sigma = torch.sqrt(x.var(dim=dims, unbiased=False, keepdim=True) + _eps(x, eps))
        g = g / sigma
        return g - g.mean(dim=dims, keepdim=True)
    rms = torch.sqrt(x.pow(2).mean(dim=dims, keepdim=True) + _eps(x, eps))
    return g / rms


def from_op(op: str, args: Sequence, kwargs: dict) -> tuple[tuple, dict] | None:
    """``(x, weight, bias), {variant, size, eps}`` for one of the ATen spellings; None if unknown."""
    args = list(args) + [None] * 8
    if op == "layer_norm":
        x, size, weight, bias, eps = args[:5]
        return (x, weight, bias), {"variant": "layer", "size": list(size), "eps": 1e-5 if eps is None else eps}
    if op == "native_layer_norm":
        x, size, weight, bias, eps = args[:5]
        return (x, weight, bias), {"variant": "layer", "size": list(size), "eps": eps}
    if op == "group_norm":
        x, groups, weight, bias, eps = args[:5]
        return (x, weight, bias), {"variant": "group", "size": int(groups), "eps": 1e-5 if eps is None else eps}
    if op == "native_group_norm":
        x, weight, bias, _n, _c, _hw, groups, eps = args[:8]
        return (x, weight, bias), {"variant": "group", "size": int(groups), "eps": eps}
    if op in ("rms_norm", "_fused_rms_norm"):
        x, size, weight, eps = args[:4]
        eps = kwargs.get("eps", eps)
        return (x, weight, None), {"variant": "rms", "size": list(size), "eps": eps}
    return None
