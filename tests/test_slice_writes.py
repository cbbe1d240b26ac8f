"""Writes into an activation (``h[:, 1:] = y``, ``h[:, 0] = y``, ``h[idx] = y``) and ``repeat_interleave`` are
routes: each output value is a copy of one input value, so relevance goes back with the values (the written
region's to the value written, the rest to the base; a repeated value's copies summed).

Independent checks: LRP-0 of a bias-free ReLU net equals gradient x input (Bach et al. 2015 / Ancona et al.
2018, "Towards better understanding of gradient-based attribution methods", Prop. 1: for piecewise-linear
networks without biases, epsilon-LRP with epsilon -> 0 equals gradient * input), whose gradient autograd
computes on the eager model here; and conservation: the input relevance sums to the target logit.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrpcli import explain
from lrpcli.errors import UnsupportedOpError


class _Writes(nn.Module):
    """Bias-free ReLU layers whose hidden activation gets a computed slice written into it."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.a = nn.Linear(4, 6, bias=False)
        self.c = nn.Linear(4, 6, bias=False)
        self.b = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.a(x))
        y = torch.relu(self.c(x))
        h = h.clone()
        if self.how == "slice":  # copy_ into a slice -> slice_scatter
            h[:, 1:, :3] = y[:, :-1, :3] * 0.5
        elif self.how == "select":  # one position -> select_scatter
            h[:, 0] = y[:, -1]
        elif self.how == "index":  # a tensor index -> index_put
            h[:, torch.tensor([0, 2])] = y[:, 1:3]
        elif self.how == "whole":  # the whole tensor overwritten -> copy
            h.copy_(y)
        return self.b(h).sum(1)


class _Repeat(nn.Module):
    """Grouped-query attention's key/value expansion, written with repeat_interleave, in a bias-free ReLU net."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6, bias=False)
        self.b = nn.Linear(12, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.a(x)).unflatten(-1, (2, 3))  # (batch, tokens, 2 heads, 3)
        h = torch.repeat_interleave(h, 2, dim=2)  # 4 heads: each kept head copied twice
        return self.b(h.flatten(-2)).sum(1)


def _gradient_times_input(model, x, target):
    x = x.clone().requires_grad_()
    model(x)[:, target].sum().backward()
    return (x.grad * x).detach()


@pytest.mark.parametrize("model", [_Writes("slice"), _Writes("select"), _Writes("index"), _Writes("whole"), _Repeat()],
                         ids=["slice", "select", "index", "whole", "repeat_interleave"])
def test_lrp0_equals_gradient_times_input_and_conserves(model):
    torch.manual_seed(0)
    for p in model.parameters():
        nn.init.normal_(p)
    model = model.double().eval()
    x = torch.randn(2, 5, 4, dtype=torch.double)
    result = explain(model, x, "lrp_0", target=1)
    expected = _gradient_times_input(model, x, 1)
    torch.testing.assert_close(result.relevance, expected, rtol=0, atol=1e-10)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(result.relevance.sum((1, 2)), logits[:, 1], rtol=0, atol=1e-10)
    assert expected.abs().max() > 0.1  # the check sees something


def test_an_accumulating_write_is_refused_by_name():
    class Accumulate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 6, bias=False)
            self.b = nn.Linear(6, 3, bias=False)

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = h.transpose(0, 1)  # (tokens, batch, 6): position 0 gets positions 1 and 2 added
            h = h.index_put((torch.tensor([0, 0]),), h[1:3], accumulate=True)
            return self.b(h).sum(0)

    with pytest.raises(UnsupportedOpError, match="index_put"):
        explain(Accumulate().double().eval(), torch.randn(2, 5, 4, dtype=torch.double), "lrp_0", target=1)


class _GroupedAttention(nn.Module):
    """One grouped-query attention block (2 key/value heads for 4 query heads) whose repeat_kv is written with
    repeat_interleave, as some models write it, then a linear head over the last token."""

    def __init__(self, dim: int = 8, heads: int = 4, kv_heads: int = 2):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(dim, 3, bias=False)

    def forward(self, x):
        batch, tokens, _ = x.shape
        q = self.q(x).view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(batch, tokens, 2 * self.kv_heads, self.head_dim).transpose(1, 2).chunk(2, dim=1)
        k = torch.repeat_interleave(k, self.heads // self.kv_heads, dim=1)
        v = torch.repeat_interleave(v, self.heads // self.kv_heads, dim=1)
        weights = torch.softmax(q @ k.transpose(-2, -1) / self.head_dim**0.5, dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(batch, tokens, -1)[:, -1])


def test_grouped_query_attention_with_repeat_interleave_equals_the_oracle():
    from gradient_oracle import modified_gradient_relevance  # AttnLRP as a modified gradient (tests/)

    torch.manual_seed(0)
    model = _GroupedAttention().double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.double)
    result = explain(model, x, "attnlrp", target=2, params={"epsilon": 0.0, "stabilizer": 0.0})  # the oracle: epsilon -> 0
    expected = modified_gradient_relevance(model, x, 2, "attnlrp")
    torch.testing.assert_close(result.relevance, expected, rtol=0, atol=1e-9 * float(expected.abs().max()))
    assert expected.abs().max() > 1e-3


class _ScatteredFeatures(nn.Module):
    """Gemma3's (ShieldGemma2's) image features written into the text embeddings at a held mask's places, in order:
    ``masked_scatter``. Two explained inputs: the text's and the image's."""

    def __init__(self):
        super().__init__()
        self.text, self.image, self.head = nn.Linear(3, 4, bias=False), nn.Linear(5, 4, bias=False), nn.Linear(4, 2, bias=False)

    def forward(self, x, y):
        base, features = self.text(x), self.image(y)
        mask = torch.zeros(base.shape[:2], dtype=torch.bool)
        mask[:, 1:3] = True
        return self.head(torch.relu(base.masked_scatter(mask.unsqueeze(-1).expand_as(base), features))).sum(1)


def test_masked_scatter_is_a_write_lrp0_equals_gradient_times_input():
    """LRP-0 on a bias-free ReLU net is gradient x input (Montavon et al. 2019, Sec. 10.2.1), for both inputs: the
    scattered places' relevance goes to the image features in order, the rest to the text."""
    torch.manual_seed(0)
    model = _ScatteredFeatures().double().eval()
    x, y = torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(2, 2, 5, dtype=torch.float64)
    composite = {"rules": [{"match": {"type": "linear"}, "rule": "z"}], "params": {"epsilon": 0.0, "stabilizer": 0.0}}
    got = explain(model, (x, y), composite, target=0).relevance
    leaves = x.clone().requires_grad_(), y.clone().requires_grad_()
    model(*leaves)[:, 0].sum().backward()
    for ours, leaf, value in zip(got, leaves, (x, y)):
        assert float(ours.abs().max()) > 0
        torch.testing.assert_close(ours, leaf.grad * value, rtol=0, atol=1e-12)
