"""More ops transformers' families stopped at (issue 27 item 6), each on a tiny module against an independent check,
then the Hugging Face family end to end (the captured graph's logits equal the model's, finite relevance).

- ``upsample_bilinear2d`` (MobileViT's resize of its patch grid): each output a weighted average of its neighbours
  with constant weights, split proportionally as an average pool's; ``upsample_nearest2d`` copies: a route. Both:
  LRP-0 = gradient x input on a bias-free ReLU net.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrpcli import explain

D64 = torch.float64
EXACT = {"epsilon": 0.0, "stabilizer": 0.0}


def _close(ours: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9) -> None:
    assert ours.shape == expected.shape
    assert torch.isfinite(ours).all()
    scale = expected.abs().max()
    assert scale > 0
    assert (ours - expected).abs().max() <= rtol * scale, f"max diff {(ours - expected).abs().max():.3g} of {scale:.3g}"


def _gradient_times_input(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x)[:, target].sum(), x)
    return (x * grad).detach()


# --------------------------------------------------------------------------- interpolation


class Resized(nn.Module):
    """A bias-free ReLU net whose feature map is resized (MobileViT's F.interpolate of a grid smaller than a patch)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.conv, self.head = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.Linear(3 * 8 * 8, 4, bias=False)

    def forward(self, x):
        h = F.relu(self.conv(x))
        kwargs = {"align_corners": False} if self.mode == "bilinear" else {}
        return self.head(F.interpolate(h, size=(8, 8), mode=self.mode, **kwargs).flatten(1))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_interpolation_is_lrp0_equal_to_gradient_times_input(mode):
    """For a bias-free ReLU net LRP-0 equals gradient x input (Montavon et al. 2019, sec. 10.2.1) when every linear
    op of it splits relevance proportionally (z-rule) or routes copies: a route (the gradient) through a bilinear
    resize would not, it mixes neighbours of different size. Was "no LRP rule for 'upsample_bilinear2d'"."""
    torch.manual_seed(0)
    model = Resized(mode).double().eval()
    x = torch.randn(3, 2, 5, 5, dtype=D64)
    result = explain(model, x, "lrp_0", target=1)
    assert torch.equal(result.outputs, model(x))
    _close(result.relevance, _gradient_times_input(model, x, 1))
    assert torch.allclose(result.relevance.sum((1, 2, 3)), model(x)[:, 1].detach())  # conserved: no bias


# --------------------------------------------------------------------------- a convolution computed by FFT (Mega's EMA)


class FftConvolution(nn.Module):
    """Mega's damped EMA: each channel convolved with a kernel made from parameters, by FFT (zero-padded to 2L, so the
    circular convolution is the linear one), bias-free around it."""

    def __init__(self, channels: int = 3, length: int = 5, norm: str | None = None):
        super().__init__()
        self.norm = norm
        self.lin, self.head = nn.Linear(4, channels, bias=False), nn.Linear(channels * length, 2, bias=False)
        self.damping = nn.Parameter(torch.randn(channels, 1))
        self.scale = nn.Parameter(torch.randn(channels, 1))

    def forward(self, x):  # (batch, length, 4)
        h = F.relu(self.lin(x)).transpose(1, 2)  # (batch, channels, length)
        length = h.shape[-1]
        kernel = self.scale * torch.sigmoid(self.damping) ** torch.arange(length, dtype=h.dtype)  # from parameters only
        n = 2 * length
        ema = torch.fft.irfft(torch.fft.rfft(h, n=n, norm=self.norm) * torch.fft.rfft(kernel, n=n, norm=self.norm), n=n, norm=self.norm)
        return self.head(ema[..., :length].flatten(1))


@pytest.mark.parametrize("norm", [None, "ortho"])
def test_a_convolution_by_fft_with_a_constant_kernel_is_a_linear_map(norm):
    """irfft(rfft(x) * rfft(k)) with k from parameters is x convolved with k: a linear map of x. Written out as one,
    LRP-0 is gradient x input on this bias-free ReLU net (Montavon et al. 2019, sec. 10.2.1), and the captured
    logits are the model's. The hand formula for the EMA, y_t = sum_{s<=t} k_{t-s} x_s, checks the map itself.
    Was "no LRP rule for 'fft_rfft'"."""
    torch.manual_seed(1)
    model = FftConvolution(norm=norm).double().eval()
    x = torch.randn(3, 5, 4, dtype=D64)
    result = explain(model, x, "lrp_0", target=1)
    _close(result.outputs, model(x).detach(), rtol=1e-12)
    _close(result.relevance, _gradient_times_input(model, x, 1))
    h = F.relu(model.lin(x)).transpose(1, 2)
    kernel = model.scale * torch.sigmoid(model.damping) ** torch.arange(5, dtype=D64)
    by_hand = torch.stack([sum(kernel[:, t - s] * h[..., s] for s in range(t + 1)) for t in range(5)], -1)
    if norm == "ortho":  # rfft and irfft each divide by sqrt(n): the product once more than the unscaled pair
        by_hand = by_hand / (2 * 5) ** 0.5
    _close(model.head(by_hand.flatten(1)).detach(), model(x).detach(), rtol=1e-12)
