"""Conservation: with LRP-0 on a bias-free ReLU network, nothing is absorbed.

For such a network (linear/conv layers without bias, ReLU, max-pool, avg-pool, flatten and
residual joins ``x + f(x)``) the LRP-0 relevance of the input sums to the explained logit
(seeded with init="value"), and every layer hands on exactly the relevance it receives.
Such networks are positively homogeneous, and LRP-0 equals gradient x input on them, so
the element-wise relevance is also checked against ``x * d logit / d x`` from autograd —
an independent reference that needs nothing from lrpcli.

With biases and the epsilon rule relevance *is* absorbed; one test pins how much.
"""

from __future__ import annotations

import copy

import numpy as np

import torch
import torch.nn as nn
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays reproducible
    # no shrinking: every example re-exports a model, and shrinking a failure would blow the
    # time budget; the failing example is printed as drawn (architecture, input shape, seed)
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

MIN_LOGIT = 1e-6


class Residual(nn.Module):
    """``x + f(x)``: a residual join the engine sees as an ``add`` node."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, x):
        return x + self.f(x)


# --------------------------------------------------------------------------------------
# Random bias-free ReLU networks
# --------------------------------------------------------------------------------------


def _fill(model: nn.Module, seed: int) -> nn.Module:
    """Seeded N(0, 1/fan_in) weights: mixed signs, activations of order one."""
    rng = np.random.RandomState(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                w = rng.randn(*module.weight.shape) / np.sqrt(fan_in)
                module.weight.copy_(torch.as_tensor(w))
                assert module.bias is None
    return model


@st.composite
def mlp_nets(draw):
    in_dim = draw(st.integers(1, 16))
    depth = draw(st.integers(1, 4))  # number of Linear layers
    widths = [draw(st.integers(1, 16)) for _ in range(depth - 1)]
    classes = draw(st.integers(1, 16))
    dims = [in_dim] + widths + [classes]
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=False))
        if i < depth - 1:
            layers.append(nn.ReLU())
    batch = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    return _fill(nn.Sequential(*layers), seed), (batch, in_dim), seed


@st.composite
def conv_nets(draw):
    size = draw(st.integers(4, 8))
    in_ch = draw(st.integers(1, 3))
    n_conv = draw(st.integers(1, 2))
    layers: list[nn.Module] = []
    ch, s = in_ch, size
    for _ in range(n_conv):
        out_ch = draw(st.integers(1, 4))
        k = draw(st.sampled_from([1, 2, 3]))
        layers += [nn.Conv2d(ch, out_ch, k, padding=k // 2, bias=False), nn.ReLU()]
        ch = out_ch
        s = s + 2 * (k // 2) - k + 1
    if draw(st.booleans()):  # a residual block keeping the shape
        block = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        )
        layers += [Residual(block), nn.ReLU()]
    pool = draw(st.sampled_from(["none", "max", "avg"]))
    if pool != "none" and s >= 2:
        layers.append(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))
        s //= 2
    layers.append(nn.Flatten())
    features = ch * s * s
    if draw(st.booleans()):
        hidden = draw(st.integers(1, 16))
        layers += [nn.Linear(features, hidden, bias=False), nn.ReLU()]
        features = hidden
    layers.append(nn.Linear(features, draw(st.integers(1, 10)), bias=False))
    batch = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    return _fill(nn.Sequential(*layers), seed), (batch, in_ch, size, size), seed


@st.composite
def residual_mlps(draw):
    d = draw(st.integers(1, 16))
    w = draw(st.integers(1, 16))
    classes = draw(st.integers(1, 16))
    block = nn.Sequential(nn.Linear(w, w, bias=False), nn.ReLU(), nn.Linear(w, w, bias=False))
    layers = [nn.Linear(d, w, bias=False), nn.ReLU(), Residual(block), nn.ReLU()]
    if draw(st.booleans()):  # a second join, without the ReLU in between
        block2 = nn.Sequential(nn.Linear(w, w, bias=False), nn.ReLU(), nn.Linear(w, w, bias=False))
        layers += [Residual(block2), nn.ReLU()]
    layers.append(nn.Linear(w, classes, bias=False))
    batch = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    return _fill(nn.Sequential(*layers), seed), (batch, d), seed


any_net = st.one_of(mlp_nets(), conv_nets(), residual_mlps())


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _input(shape, seed, dtype):
    rng = np.random.RandomState(seed ^ 0x5EED)
    return torch.as_tensor(rng.randn(*shape), dtype=dtype)


def _explain(model, x, **kw):
    from lrpcli import explain

    return explain(model, x, composite="lrp_0", **kw)


def _target_logits(res):
    return res.outputs.gather(1, res.targets.view(-1, 1)).squeeze(1)


def _weighted_paths(model):
    return {name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def _grad_times_input(model, x, targets):
    x = x.clone().requires_grad_()
    out = model(x)
    out.gather(1, targets.view(-1, 1)).sum().backward()
    return (x * x.grad).detach()


def _check_lrp0(model, shape, seed, dtype, rtol, layers):
    model = model.to(dtype).eval()
    x = _input(shape, seed, dtype)
    with torch.no_grad():
        logits = model(x)
    top = logits.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)
    assume(bool((top.abs() >= MIN_LOGIT).all()))

    res = _explain(model, x, layer_relevance=layers)
    assert res.relevance.shape == x.shape
    assert res.relevance.dtype == dtype
    torch.testing.assert_close(res.outputs, logits, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0)
    assert torch.equal(res.targets.cpu(), logits.argmax(1))

    # conservation of the whole explanation
    target = _target_logits(res).double()
    total = res.relevance.double().flatten(1).sum(1)
    gap = (total - target).abs() / target.abs()
    assert (gap <= rtol).all(), f"relevance sums {total.tolist()} vs target logits {target.tolist()} (rel gap {gap.tolist()})"

    # element-wise: LRP-0 == gradient x input on bias-free ReLU nets
    gxi = _grad_times_input(model, x, res.targets).double()
    scale = target.abs().view(-1, *([1] * (x.ndim - 1)))
    err = (res.relevance.double() - gxi).abs() / scale
    assert (err <= 10 * rtol).all(), f"LRP-0 differs from gradient x input by {err.max().item():.3g} (relative)"

    if not layers:
        return
    assert res.layers, "layer_relevance=True gave no per-layer relevance"
    reported = {layer.module for layer in res.layers.values()}
    missing = _weighted_paths(model) - reported
    assert not missing, f"weighted layers without per-layer relevance: {sorted(missing)}"
    branches = [f"{path}." for path, m in model.named_modules() if isinstance(m, Residual)]
    for name, layer in res.layers.items():
        r_out = layer.relevance_out.double()
        r_in = layer.relevance_in.double()
        assert r_out.shape == r_in.shape == target.shape, name
        gap = (r_in - r_out).abs() / target.abs()
        assert (gap <= rtol).all(), (
            f"{name} ({layer.module}, {layer.kind}, rule {layer.rule}): in {r_in.tolist()} != out {r_out.tolist()}"
        )
        # and nothing is lost between the logit and any layer on the main path (a layer inside a
        # residual branch receives only the branch's share)
        if not any(layer.module.startswith(prefix) for prefix in branches):
            gap = (r_out - target).abs() / target.abs()
            assert (gap <= rtol).all(), f"{name} ({layer.module}): receives {r_out.tolist()}, logit {target.tolist()}"


# --------------------------------------------------------------------------------------
# float64: 1e-10 relative
# --------------------------------------------------------------------------------------


@settings(SETTINGS, max_examples=20)
@given(mlp_nets())
def test_lrp0_conserves_mlp(net):
    _check_lrp0(*net, dtype=torch.float64, rtol=1e-10, layers=True)


@settings(SETTINGS, max_examples=15)
@given(conv_nets())
def test_lrp0_conserves_convnet(net):
    _check_lrp0(*net, dtype=torch.float64, rtol=1e-10, layers=True)


@settings(SETTINGS, max_examples=20)
@given(residual_mlps())
def test_lrp0_conserves_residual(net):
    _check_lrp0(*net, dtype=torch.float64, rtol=1e-10, layers=True)


# --------------------------------------------------------------------------------------
# float32: 1e-5 relative
# --------------------------------------------------------------------------------------


@settings(SETTINGS, max_examples=15)
@given(any_net)
def test_lrp0_conserves_float32(net):
    model, shape, seed = net
    model = model.float().eval()
    x = _input(shape, seed, torch.float32)
    with torch.no_grad():
        logits = model(x)
    top = logits.max(1).values
    assume(bool((top.abs() >= 1e-3).all()))  # float32: keep away from cancellation-dominated logits
    res = _explain(model, x)
    assert res.relevance.dtype == torch.float32
    target = _target_logits(res).double()
    total = res.relevance.double().flatten(1).sum(1)
    gap = (total - target).abs() / target.abs()
    assert (gap <= 1e-5).all(), f"relevance sums {total.tolist()} vs logits {target.tolist()} (rel gap {gap.tolist()})"


# --------------------------------------------------------------------------------------
# With biases, relevance is absorbed (so the conservation checks above can fail)
# --------------------------------------------------------------------------------------


@settings(SETTINGS, max_examples=20)
@given(
    in_dim=st.integers(1, 8),
    classes=st.integers(1, 6),
    eps=st.sampled_from([0.0, 1e-6, 0.1, 1.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_bias_absorbs_relevance_single_layer(in_dim, classes, eps, seed):
    """One Linear layer, epsilon rule: sum_j R_j = sum_j a_j w_jt * z_t / (z_t + eps sign0(z_t)) = (z_t - b_t) z_t / stab(z_t)."""
    rng = np.random.RandomState(seed)
    model = nn.Sequential(nn.Linear(in_dim, classes)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(rng.randn(classes, in_dim)))
        model[0].bias.copy_(torch.as_tensor(rng.uniform(0.5, 2.0, classes) * rng.choice([-1, 1], classes)))
    x = torch.as_tensor(rng.randn(2, in_dim))
    with torch.no_grad():
        logits = model(x)
    top = logits.max(1).values
    assume(bool((top.abs() >= 1e-3).all()))
    from lrpcli import explain

    res = explain(model, x, composite={"rules": [{"match": {"type": "linear"}, "rule": "epsilon", "epsilon": eps}]})
    z = _target_logits(res)
    b = model[0].bias.detach()[res.targets]
    sign0 = torch.where(z >= 0, 1.0, -1.0).double()
    want = (z - b) * z / (z + eps * sign0)
    total = res.relevance.sum(1)
    torch.testing.assert_close(total, want, rtol=1e-10, atol=1e-12)
    # the bias took its share: the sum is measurably not the logit
    assert ((total - z).abs() > 1e-3 * z.abs()).all()


def test_bias_breaks_conservation_deep():
    """A biased 3-layer net under the epsilon composite does not conserve; bias-free it does."""
    torch.manual_seed(0)
    biased = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    with torch.no_grad():
        for m in biased:
            if isinstance(m, nn.Linear):
                m.bias.uniform_(0.3, 1.0)
    x = torch.randn(4, 6, dtype=torch.float64)
    from lrpcli import explain

    comp = {"rules": [{"match": {"type": "linear"}, "rule": "epsilon", "epsilon": 1e-6}]}
    res = explain(biased, x, composite=comp, layer_relevance=True)
    z = _target_logits(res)
    total = res.relevance.sum(1)
    assert ((total - z).abs() > 1e-3 * z.abs()).all(), (total, z)
    # at least one layer absorbs relevance
    assert any(((l.relevance_in - l.relevance_out).abs() > 1e-6).any() for l in res.layers.values())

    unbiased = copy.deepcopy(biased)
    with torch.no_grad():
        for m in unbiased:
            if isinstance(m, nn.Linear):
                m.bias.zero_()
    res0 = explain(unbiased, x, composite="lrp_0")
    z0 = _target_logits(res0)
    torch.testing.assert_close(res0.relevance.sum(1), z0, rtol=1e-10, atol=0)
