"""Ops transformers' families stopped at (issue 27 item 6): each on a tiny module against a hand-computed rule or
the modified-gradient oracle (tests/gradient_oracle.py), then the Hugging Face family end to end where it builds
(finite relevance, the captured graph's logits equal to the model's).

- ``square`` (ReLU², Primer: Persimmon, Arcee, BitNet, Nemotron's MLP): an element-wise activation. AttnLRP's
  product rule on ``x * x`` gives each of the two equal factors half, both halves return to x: the identity.
- ``gather`` with constant indices (DeBERTa's relative attention): a route; relevance goes back where each value
  came from (summed where an index repeats), as the gradient routes it.
- a float32 part of a float64 model (CodeGen's attention scores), constants a model keeps in float32 on purpose
  (ModernBERT's rotary frequencies), a Parameter registered as a buffer (FalconMamba): no raw torch errors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradient_oracle import embedding_relevance, modified_gradient_relevance
from lrpcli import capture, explain

D64 = torch.float64
EXACT = {"epsilon": 0.0, "stabilizer": 0.0}


def _close(ours: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9) -> None:
    assert ours.shape == expected.shape
    assert torch.isfinite(ours).all()
    scale = expected.abs().max()
    assert scale > 0
    assert (ours - expected).abs().max() <= rtol * scale, f"max diff {(ours - expected).abs().max():.3g} of {scale:.3g}"


# --------------------------------------------------------------------------- square (ReLU²)


class ReluSquared(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(5, 7), nn.Linear(7, 3)

    def forward(self, x):
        return self.head(torch.square(F.relu(self.lin(x))))


def test_relu_squared_passes_relevance_unchanged_lrp0_by_hand():
    """LRP-0 (Bach et al. 2015, R_j = sum_k a_j w_jk R_k / z_k) on head(square(relu(W x + b))), with R at the
    output the target logit: R_h = h * v_t (the head's bias keeps its share), square and relu pass R_h on, and
    R_x = x * W^T (R_h / z). Written out here, independently of the engine."""
    torch.manual_seed(0)
    model = ReluSquared().double().eval()
    x = torch.randn(4, 5, dtype=D64)
    target = 2
    z = model.lin(x)
    h = F.relu(z).square()
    r_h = h * model.head.weight[target]
    expected = x * ((r_h / z) @ model.lin.weight)  # r_h is 0 where relu cut z off
    ours = explain(model, x, "lrp_0", target=target).relevance
    _close(ours, expected.detach())


def test_hugging_face_relu_squared_equals_the_oracle():
    """transformers' ReLUSquaredActivation (relu then torch.square) under AttnLRP: the oracle's identity rule for
    an activation module, to 1e-9 in float64."""
    transformers = pytest.importorskip("transformers")
    from transformers.activations import ReLUSquaredActivation

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), ReLUSquaredActivation(), nn.Linear(7, 3)).double().eval()
    x = torch.randn(4, 5, dtype=D64)
    ours = explain(model, x, "attnlrp", target=1, params=EXACT).relevance
    _close(ours, modified_gradient_relevance(model, x, 1, "attnlrp"))


# --------------------------------------------------------------------------- gather


class Gathered(nn.Module):
    """Values picked from an activation by constant indices (one repeated, one never picked), bias-free ReLU net."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(5, 6, bias=False), nn.Linear(4, 3, bias=False)
        self.register_buffer("index", torch.tensor([[0, 2, 2, 5]]))

    def forward(self, x):
        h = F.relu(self.lin(x))
        return self.head(torch.gather(h, 1, self.index.expand(x.shape[0], -1)))


def test_gather_routes_relevance_back_as_lrp0_equals_gradient_times_input():
    """For a bias-free ReLU net LRP-0 equals gradient x input (Montavon et al. 2019, sec. 10.2.1); gather is then
    only right if it routes relevance as its gradient does (scatter-add: the repeated index gets both shares)."""
    torch.manual_seed(2)
    model = Gathered().double().eval()
    x = torch.randn(3, 5, dtype=D64, requires_grad=True)
    out = model(x)
    (grad,) = torch.autograd.grad(out[:, 1].sum(), x)
    ours = explain(model, x.detach(), "lrp_0", target=1).relevance
    _close(ours, (x * grad).detach())
    assert torch.allclose(ours.sum(1), out[:, 1].detach())  # conserved: no bias, no stabiliser


# --------------------------------------------------------------------------- dtypes and buffers


class Float32Scores(nn.Module):
    """CodeGen's attention: q and k cast to float32 for the scores, a float64 mask added, the weights cast back."""

    def __init__(self, d: int = 6):
        super().__init__()
        self.qkv, self.head = nn.Linear(d, 3 * d), nn.Linear(d, 3)
        self.register_buffer("mask", torch.zeros(5, 5))

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q.to(torch.float32) @ k.to(torch.float32).transpose(-1, -2)
        weights = torch.softmax(scores + self.mask, dim=-1).to(v.dtype)
        return self.head((weights @ v).mean(1))


def test_a_float32_part_of_a_float64_model_gets_relevance_in_its_own_dtype():
    """Was a raw 'expected scalar type Double but found Float' in the scores' transpose. The reference: the same
    weights with the casts taken out (all float64); they differ by float32's rounding of the scores only."""
    torch.manual_seed(3)
    model = Float32Scores().double().eval()
    x = torch.randn(2, 5, 6, dtype=D64)
    ours = explain(model, x, "attnlrp", target=0, params=EXACT).relevance
    plain = Float32Scores().double().eval()
    plain.load_state_dict(model.state_dict())
    plain.forward = lambda x: plain.head((torch.softmax(plain.qkv(x).chunk(3, -1)[0] @ plain.qkv(x).chunk(3, -1)[1].transpose(-1, -2) + plain.mask, -1) @ plain.qkv(x).chunk(3, -1)[2]).mean(1))
    reference = explain(plain, x, "attnlrp", target=0, params=EXACT).relevance
    assert ours.dtype == D64
    _close(ours, reference, rtol=1e-5)


class Float32Rotary(nn.Module):
    """ModernBERT's rotary angles: a float32 buffer times positions cast with .float(), both following the batch,
    in a float64 model."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(20, 8), nn.Linear(8, 3)
        self.register_buffer("inv_freq", 1.0 / 10.0 ** torch.arange(0, 1, 0.125))

    def forward(self, ids):
        batch, length = ids.shape
        inv = self.inv_freq[None, :, None].float().expand(batch, -1, 1)
        positions = torch.arange(length, device=ids.device)[None, None, :].expand(batch, 1, -1).float()
        angles = (inv @ positions).transpose(1, 2)
        return self.head((self.emb(ids) * angles.cos().to(self.emb.weight.dtype)).mean(1))


def test_constants_a_model_keeps_in_float32_stay_float32_in_a_float64_graph():
    """Was 'the model failed on an input shaped (2, 6): expected scalar type Double but found Float': moving the
    graph to the model's float64 converted the float32 frequencies but not the positions' .float()."""
    torch.manual_seed(4)
    model = Float32Rotary().double().eval()
    model.inv_freq = model.inv_freq.float()
    ids = torch.randint(0, 20, (2, 6))
    result = explain(model, ids, "attnlrp", target=0, params=EXACT)
    assert torch.equal(result.outputs, model(ids))
    _close(result.relevance, embedding_relevance(model, ids, 0, "attnlrp"))


def test_moving_a_graph_to_a_dtype_moves_the_models_dtype_and_its_casts():
    torch.manual_seed(5)
    model = Float32Rotary().eval()  # a float32 model explained in float64: its casts to float32 go to float64 too
    ids = torch.randint(0, 20, (2, 6))
    graph = capture(model, ids)
    moved = graph.to("cpu", D64)
    assert moved(ids).dtype == D64
    assert torch.allclose(moved(ids), model(ids).double(), atol=1e-6)


class ParameterBuffer(nn.Module):
    """FalconMamba registers its RMS weights as buffers holding nn.Parameters."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(4, 4), nn.Linear(4, 3)
        self.register_buffer("scale", nn.Parameter(torch.linspace(0.5, 2.0, 4), requires_grad=False), persistent=False)

    def forward(self, x):
        return self.head(self.lin(x) * self.scale)


def test_a_parameter_registered_as_a_buffer_is_captured():
    """Was a raw KeyError "attribute 'scale' already exists" from torch.export's program.module(). The relevance
    equals the same module with a plain tensor buffer, and the model keeps its own Parameter."""
    torch.manual_seed(6)
    model = ParameterBuffer().double().eval()
    model._buffers["scale"] = nn.Parameter(model.scale.detach(), requires_grad=False)
    own = model._buffers["scale"]
    x = torch.randn(3, 4, dtype=D64)
    ours = explain(model, x, "epsilon", target=0).relevance
    assert model._buffers["scale"] is own
    plain = ParameterBuffer().double().eval()
    plain.load_state_dict(model.state_dict())
    plain._buffers["scale"] = own.detach().clone()
    _close(ours, explain(plain, x, "epsilon", target=0).relevance, rtol=0)
