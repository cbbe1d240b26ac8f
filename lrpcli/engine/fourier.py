"""The real part of a discrete Fourier transform of real values, as the linear map it is (FNet's token mixing).

``fftn(x, dim=dims).real`` of a real ``x`` is a fixed linear map of ``x``: with the DFT matrix F = C - iS
(C[j, k] = cos(2 pi j k / n), S[j, k] = sin(2 pi j k / n), both symmetric), the real part over the last dim is
``x @ C``, and over the last two ``C_a x C_b - S_a x S_b``. Written out as products with those constant matrices
and one subtraction, each step gets the rules of a linear map whose weights are the matrices (for LRP-0 the whole is
gradient x input, as one linear layer's would be). Transforms over other dims, with a size ``s`` or a norm, and
complex results used otherwise stay as the unsupported op they are.

A convolution computed by FFT, ``irfft(rfft(x, n) * K, n)`` with ``K`` computed from constants only (Mega's damped
EMA: its kernel is made from parameters), is a fixed linear map of ``x`` too: each output is ``sum_s x_s M[s, :]``
with ``M[s, :] = irfft(rfft(e_s, n) * K, n)``, the op applied to the unit vectors. It is written out as ``x @ M``
(M computed at capture by the model's own ops on the unit vectors, so its n, norm and padding are the model's): the
epsilon rule of a linear map whose weights are M, for LRP-0 gradient x input.
"""

from __future__ import annotations

import contextlib
import math

import torch

from . import ops

_FFT = ("fft_fftn", "fft_fft", "fft_fft2")


def _dft(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of 2 pi j k / n: the real and minus the imaginary part of the DFT matrix (j k taken mod n)."""
    index = torch.arange(n, dtype=torch.int64)
    angle = (index[:, None] * index[None, :] % n).to(torch.float64) * (2 * math.pi / n)
    return torch.cos(angle).to(dtype), torch.sin(angle).to(dtype)


def _fft_of_real_part(node: torch.fx.Node) -> list[torch.fx.Node] | None:
    """[the fft, the nodes between it and ``node``] where ``node`` takes its real part: ``real(fft)`` or
    ``view_as_real(fft)[..., 0]`` (as decompositions write it); else None."""
    aten = torch.ops.aten
    if node.op != "call_function":
        return None
    if node.target is aten.real.default and isinstance(node.args[0], torch.fx.Node):
        return [node.args[0]]
    if node.target is not aten.select.int or node.args[2:] != (0,) or not isinstance(node.args[0], torch.fx.Node):
        return None
    pairs = node.args[0]
    if pairs.target is not aten.view_as_real.default or len(pairs.users) != 1 or node.args[1] not in (-1, pairs.meta["val"].ndim - 1):
        return None
    return [pairs.args[0], pairs]


def _real_part_of_fft(select: torch.fx.Node) -> tuple[torch.fx.Node, list[int]] | None:
    """``(x, dims)`` where ``select`` is the real part of ``fft(x, dims)`` of a real x over its last one or two
    dims, unscaled and unpadded; else None."""
    found = _fft_of_real_part(select)
    if found is None:
        return None
    fft = found[0]
    if not isinstance(fft, torch.fx.Node) or fft.op != "call_function" or ops.op_name(fft.target) not in _FFT:
        return None
    if len(fft.users) != 1 or fft.kwargs.get("norm") not in (None, "backward"):
        return None
    x = fft.args[0]
    value = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        return None
    size, dims = (list(fft.args[1:3]) + [None, None])[:2]
    if ops.op_name(fft.target) == "fft_fft":  # fft(x, n, dim, norm)
        dims = [fft.args[2] if len(fft.args) > 2 else fft.kwargs.get("dim", -1)]
    elif dims is None:
        dims = fft.kwargs.get("dim", [-2, -1] if ops.op_name(fft.target) == "fft_fft2" else list(range(value.ndim)))
    if size is not None or (len(fft.args) > 3 and fft.args[3] not in (None, "backward")):
        return None
    dims = sorted(d % value.ndim for d in dims)
    if not dims or len(dims) > 2 or dims[-1] != value.ndim - 1 or (len(dims) == 2 and dims[0] != value.ndim - 2):
        return None
    return x, dims


def write_out_real_dfts(gm: torch.fx.GraphModule) -> None:
    """Each ``fft(x).real`` over x's last one or two dims (FNet) as matmuls by the constant cos/sin matrices."""
    aten = torch.ops.aten
    for select in list(gm.graph.nodes):
        found = _real_part_of_fft(select)
        if found is None:
            continue
        x, dims = found
        value = x.meta["val"]
        sizes = [value.shape[d] for d in dims]
        if not all(isinstance(n, int) for n in sizes):
            continue
        between = _fft_of_real_part(select)

        def constant(kind: str, n: int) -> torch.fx.Node:
            name = f"_lrp_dft_{kind}_{n}_{str(value.dtype).split('.')[-1]}"
            if not hasattr(gm, name):
                gm.register_buffer(name, _dft(n, value.dtype)[kind == "sin"])
            node = gm.graph.get_attr(name)
            node.meta["val"] = getattr(gm, name)
            return node

        def like_x(node: torch.fx.Node) -> torch.fx.Node:
            node.meta.update(select.meta)  # the module, and the real value's shape and dtype (the same as x's)
            return node

        with gm.graph.inserting_before(select):
            last = sizes[-1]
            cos_last = like_x(gm.graph.call_function(aten.matmul.default, (x, constant("cos", last))))
            if len(dims) == 1:
                result = cos_last
            else:
                first = sizes[0]
                cos_both = like_x(gm.graph.call_function(aten.matmul.default, (constant("cos", first), cos_last)))
                sin_last = like_x(gm.graph.call_function(aten.matmul.default, (x, constant("sin", last))))
                sin_both = like_x(gm.graph.call_function(aten.matmul.default, (constant("sin", first), sin_last)))
                result = like_x(gm.graph.call_function(aten.sub.Tensor, (cos_both, sin_both)))
        select.replace_all_uses_with(result)
        for node in [select] + between[:0:-1] + between[:1]:  # users first
            gm.graph.erase_node(node)


def _constant(node: torch.fx.Node, known: dict[torch.fx.Node, bool]) -> bool:
    """Is the node's value computed from parameters, buffers and literals only?"""
    if node not in known:
        known[node] = node.op == "get_attr" or (node.op == "call_function" and all(_constant(a, known) for a in node.all_input_nodes))
    return known[node]


def _last_dim(node: torch.fx.Node, position: int) -> bool:
    """Does this rfft/irfft act on the last dim (its ``dim`` argument at ``position``, default -1)?"""
    dim = node.args[position] if len(node.args) > position else node.kwargs.get("dim", -1)
    ndim = node.meta["val"].ndim if isinstance(node.meta.get("val"), torch.Tensor) else None
    return dim == -1 or (ndim is not None and dim == ndim - 1)


def _fft_convolution(irfft: torch.fx.Node, known: dict) -> tuple[torch.fx.Node, torch.fx.Node, torch.fx.Node, torch.fx.Node] | None:
    """``(rfft, x, kernel, product)`` where ``irfft`` is ``irfft(rfft(x) * kernel)`` over the last dim with a constant
    ``kernel`` and a live real ``x`` of static length; else None."""
    if irfft.op != "call_function" or ops.op_name(irfft.target) != "fft_irfft" or not _last_dim(irfft, 2):
        return None
    product = irfft.args[0]
    if not isinstance(product, torch.fx.Node) or product.target is not torch.ops.aten.mul.Tensor or len(product.users) != 1:
        return None
    for position in (0, 1):
        rfft, kernel = product.args[position], product.args[1 - position]
        if not (isinstance(rfft, torch.fx.Node) and isinstance(kernel, torch.fx.Node)) or len(rfft.users) != 1:
            continue
        if rfft.op != "call_function" or ops.op_name(rfft.target) != "fft_rfft" or not _last_dim(rfft, 2) or _constant(rfft, known):
            continue
        x = rfft.args[0]
        value = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if _constant(kernel, known) and isinstance(value, torch.Tensor) and value.is_floating_point() and isinstance(value.shape[-1], int):
            return rfft, x, kernel, product
    return None


def write_out_fft_convolutions(gm: torch.fx.GraphModule) -> None:
    """Each ``irfft(rfft(x) * K)`` with a constant K (Mega's EMA) as ``x @ M``, M = the op on the unit vectors."""
    aten = torch.ops.aten
    known: dict[torch.fx.Node, bool] = {}
    for irfft in list(gm.graph.nodes):
        found = _fft_convolution(irfft, known)
        if found is None:
            continue
        rfft, x, kernel, product = found
        value = x.meta["val"]
        length = value.shape[-1]
        name = f"_lrp_eye_{length}_{str(value.dtype).split('.')[-1]}"
        if not hasattr(gm, name):
            gm.register_buffer(name, torch.eye(length, dtype=value.dtype))
        with gm.graph.inserting_before(irfft):
            eye = gm.graph.get_attr(name)
            basis = gm.graph.call_function(rfft.target, (eye, *rfft.args[1:]), dict(rfft.kwargs))  # (length, F)
            spread = gm.graph.call_function(aten.unsqueeze.default, (kernel, -2))  # (..., 1, F)
            kernels = gm.graph.call_function(aten.mul.Tensor, (spread, basis))  # (..., length, F)
            matrix = gm.graph.call_function(irfft.target, (kernels, *irfft.args[1:]), dict(irfft.kwargs))  # (..., length, n)
            rows = gm.graph.call_function(aten.unsqueeze.default, (x, -2))  # (..., 1, length)
            mapped = gm.graph.call_function(aten.matmul.default, (rows, matrix))  # (..., 1, n)
            result = gm.graph.call_function(aten.squeeze.dim, (mapped, -2))
        out = irfft.meta.get("val")
        for node, val in ((rows, value), (mapped, out), (result, out)):
            node.meta.update(irfft.meta)  # the module
            if isinstance(val, torch.Tensor):
                with getattr(val, "fake_mode", None) or contextlib.nullcontext():
                    node.meta["val"] = val.unsqueeze(-2) if node is not result else val
        irfft.replace_all_uses_with(result)
        for node in (irfft, product, rfft):  # users first
            gm.graph.erase_node(node)
