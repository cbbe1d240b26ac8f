"""Shortcuts of the backward walk (issue 28: a generated token's walk at 1.5x the gradient's time) give the numbers
the plain walk gives.

- Live rows (propagate.LiveRows): a linear layer whose relevance sits in a few rows (tokens) runs its rule on those
  rows alone. Reference: the same walk with the shortcut off, and LRP-0 = gradient x input on a bias-free ReLU net.
- Element-wise scale (epsilon.py's ``_elementwise_scale``): ``c * x`` hands on ``z * R / stabilise(z)`` without the
  transpose. Reference: the general proportional path (transpose, then times x), in every stabiliser mode.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrpcli import explain
from lrpcli.engine import propagate
from lrpcli.engine.rules import epsilon as epsilon_rules


class _TokenWise(nn.Module):
    """Layers that act on each token (row) alone, as a transformer's last MLP and LM head do."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 12, bias=bias), nn.ReLU(), nn.Linear(12, 9, bias=bias), nn.ReLU(), nn.Linear(9, 5, bias=bias))

    def forward(self, x):
        return self.net(x)


def _one_row_seed(rows: list[int], target: int = 2):
    """A start in one row (token) per sample: what a generated token's walk starts from."""

    def start(outputs, targets=None):
        initial = torch.zeros_like(outputs)
        for sample, row in enumerate(rows):
            initial[sample, row, target] = outputs[sample, row, target]
        return initial

    return start


@pytest.fixture
def token_wise():
    torch.manual_seed(0)
    return _TokenWise().double().eval(), torch.randn(2, 10, 6, dtype=torch.float64)


def _without_live_rows(monkeypatch):
    monkeypatch.setattr(propagate, "LIVE_ROWS_SHARE", -1.0)


def _count_sliced(monkeypatch) -> list[int]:
    taken: list[int] = []
    original = propagate.LiveRows.of

    def spy(self, *args):
        rows = original(self, *args)
        if rows is not None:
            taken.append(len(rows))
        return rows

    monkeypatch.setattr(propagate.LiveRows, "of", spy)
    return taken


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_alpha2_beta1", "epsilon_gamma_box", "epsilon_plus_flat"])
def test_live_rows_give_the_dense_walk_s_relevance_and_ledger(token_wise, composite, monkeypatch):
    model, x = token_wise
    seed = _one_row_seed([3, 7])
    with monkeypatch.context() as patch:
        taken = _count_sliced(patch)
        fast = explain(model, x, composite, init=seed, layer_relevance=True)
    assert taken == [2, 2, 2]  # rows 3 and 7 (one per sample) at each of the three linear layers
    with monkeypatch.context() as patch:
        _without_live_rows(patch)
        dense = explain(model, x, composite, init=seed, layer_relevance=True)
    scale = float(dense.relevance.abs().max())
    assert scale > 0
    torch.testing.assert_close(fast.relevance, dense.relevance, rtol=0, atol=1e-12 * scale)
    assert bool((fast.relevance[0, [r for r in range(10) if r not in (3, 7)]] == 0).all())
    for name, layer in dense.layers.items():
        got = fast.layers[name]
        for part in ("relevance_out", "relevance_in", "bias", "stabilizer"):
            want = getattr(layer, part)
            if want is None:
                assert getattr(got, part) is None
            else:
                torch.testing.assert_close(getattr(got, part), want, rtol=0, atol=1e-12 * scale)


def test_live_rows_lrp0_equals_gradient_times_input(monkeypatch):
    """LRP-0 on a bias-free ReLU net is gradient x input (Montavon et al. 2019, Sec. 10.2.1)."""
    torch.manual_seed(1)
    model, x = _TokenWise(bias=False).double().eval(), torch.randn(2, 10, 6, dtype=torch.float64)
    taken = _count_sliced(monkeypatch)
    composite = {"rules": [{"match": {"type": "linear"}, "rule": "z"}]}
    got = explain(model, x, composite, init=_one_row_seed([0, 9])).relevance
    assert taken
    leaf = x.clone().requires_grad_()
    out = model(leaf)
    (out[0, 0, 2] + out[1, 9, 2]).backward()
    torch.testing.assert_close(got, (leaf.grad * x).sum(-1) if got.ndim == 2 else leaf.grad * x, rtol=1e-10, atol=1e-12)


def test_rules_that_read_across_rows_walk_densely(token_wise, monkeypatch):
    """norm_scale's stabiliser scales with each sample's whole z: a row alone would get another denominator."""
    model, x = token_wise
    composite = {"rules": [{"match": {"type": "linear"}, "rule": "epsilon", "epsilon": 0.5, "stabilizer_mode": "norm_scale"}]}
    taken = _count_sliced(monkeypatch)
    got = explain(model, x, composite, init=_one_row_seed([3, 7])).relevance
    assert taken == []
    rows = torch.tensor([3])
    alone = explain(model, x[:1].index_select(1, rows), composite, init=_one_row_seed([0])).relevance
    assert float((got[0, 3] - alone[0, 0]).abs().max()) > 1e-3  # the shortcut would have given ``alone``


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_alpha2_beta1", "epsilon_gamma_box"])
def test_a_start_without_relevance_walks_as_before(token_wise, composite, monkeypatch):
    """No row holds relevance (a zero start): nothing to slice; the rules see the whole (zero) layer, as before."""
    model, x = token_wise
    taken = _count_sliced(monkeypatch)
    got = explain(model, x, composite, init=lambda outputs, targets=None: torch.zeros_like(outputs), layer_relevance=True)
    assert taken == []
    assert float(got.relevance.abs().max()) == 0.0
    assert all(float(layer.relevance_in.abs().max()) == 0.0 for layer in got.layers.values())


def test_dense_relevance_is_not_sliced(token_wise, monkeypatch):
    model, x = token_wise
    taken = _count_sliced(monkeypatch)
    explain(model, x, "epsilon_plus", init=lambda outputs, targets=None: outputs.clone())  # every row holds relevance
    assert taken == []


class _Scaled(nn.Module):
    """Element-wise products with constants that vary along the tokens (as a rotary embedding's cos and sin), so
    that no pass folds them into a neighbouring layer: a product, a division and a negation."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(5, 7), nn.Linear(7, 3)
        self.register_buffer("cos", torch.linspace(-1.5, 2.0, 6 * 7).reshape(6, 7))
        self.register_buffer("sin", torch.linspace(0.5, 3.0, 6 * 7).reshape(6, 7))

    def forward(self, x):
        h = self.first(x)
        rotated = h * self.cos + torch.cat([-h[..., 4:], h[..., :4]], dim=-1) / self.sin
        return self.second(torch.relu(rotated)).sum(dim=1)


@pytest.mark.parametrize("mode", ["sign", "clip", "unsigned", "norm_scale"])
@pytest.mark.parametrize("epsilon", [0.0, 1e-6, 0.3])
def test_elementwise_scale_equals_the_general_proportional_path(mode, epsilon, monkeypatch):
    torch.manual_seed(2)
    model, x = _Scaled().double().eval(), torch.randn(4, 6, 5, dtype=torch.float64)
    params = {"epsilon": epsilon, "stabilizer": epsilon, "stabilizer_mode": mode}
    composite = {"rules": [{"match": {"type": "linear"}, "rule": "epsilon"}], "params": params}
    calls: list[str] = []
    original = epsilon_rules._elementwise_scale

    def spy(node, *args):
        taken = original(node, *args)
        if taken:
            calls.append(node.op)
        return taken

    with monkeypatch.context() as patch:
        patch.setattr(epsilon_rules, "_elementwise_scale", spy)
        fast = explain(model, x, composite, target=1, layer_relevance=True)
    assert sorted(calls) == ["div", "mul", "neg"]
    with monkeypatch.context() as patch:
        patch.setattr(epsilon_rules, "_elementwise_scale", lambda *args: False)
        general = explain(model, x, composite, target=1, layer_relevance=True)
    scale = float(general.relevance.abs().max())
    torch.testing.assert_close(fast.relevance, general.relevance, rtol=0, atol=1e-12 * scale)
    for name, layer in general.layers.items():
        torch.testing.assert_close(fast.layers[name].relevance_in, layer.relevance_in, rtol=0, atol=1e-12 * scale)
        torch.testing.assert_close(fast.layers[name].absorbed, layer.absorbed, rtol=0, atol=1e-12 * scale)


class _HeldOverActivation(nn.Module):
    """``c / x`` with c a value held constant (computed from a mask): the activation is the divisor, so z is no
    multiple of x and the shortcut must not serve it."""

    def forward(self, x, mask):
        held = mask.float() * 2.0 + 1.0
        return (held / (x.abs() + 1.0)).sum(-1, keepdim=True).expand(-1, 2)


def test_elementwise_scale_leaves_a_held_numerator_to_the_general_path(monkeypatch):
    calls: list[bool] = []
    original = epsilon_rules._elementwise_scale

    def spy(node, *args):
        taken = original(node, *args)
        if node.op == "div":
            calls.append(taken)
        return taken

    monkeypatch.setattr(epsilon_rules, "_elementwise_scale", spy)
    x, mask = torch.randn(3, 4, dtype=torch.float64), torch.tensor([[1, 0, 1, 1]] * 3)
    try:
        explain(_HeldOverActivation(), x, "epsilon_plus", target=0, inputs={"mask": mask})
    except Exception:  # the builder may refuse the divisor outright: then the shortcut is never asked
        pass
    assert True not in calls
