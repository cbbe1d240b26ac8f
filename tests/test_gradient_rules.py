"""The ReLU-gradient rules (GuidedBackprop, DeconvNet, BetaSmooth), the plain gradient, `pass` on a softmax
inside the model and DeepTaylor's average-pool rule (issue 27, item 1).

The references, each independent of lrpcli:
- the definitions, applied by autograd hooks on the ReLU modules of a small conv net (float64):
  GuidedBackprop (Springenberg et al. 2015, "Striving for simplicity", sec. 3.4): the gradient passes a ReLU
  only where both its forward input and the backward signal are positive; DeconvNet (Zeiler & Fergus 2014,
  ibid.): the ReLU is applied to the backward signal alone; BetaSmooth (Dombrowski et al. 2019, "Explanations
  can be manipulated and geometry is to blame", eq. 11): the ReLU's gradient replaced by softplus_beta's,
  sigmoid(beta * x);
- zennit 0.5.1's composites of the same names, run side by side (tests/zennit_support.py);
- DeepTaylor's average pooling, as iNNvestigate defines it (``innvestigate/analyzer/deeptaylor.py``,
  ``DeepTaylor._create_analysis``: average pooling maps relevance by ``_gradient_reverse_mapping``, i.e.
  ``J^T R``), computed by hand for a 2x2 pool: each input gets a quarter of its window's relevance.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

try:  # tests/ as a package or as a plain folder on sys.path (pytest's default)
    from . import zennit_support as zs
except ImportError:
    import zennit_support as zs

from lrpcli import ConfigError, explain

D64 = torch.float64
TOL = 1e-10  # float64: max |ours - reference| <= TOL * max |reference|

#: the definitions, as backward(ReLU input x, signal g) -> the ReLU input's signal
DEFINITIONS = {
    "guided_backprop": lambda x, g: torch.where((x > 0) & (g > 0), g, torch.zeros_like(g)),
    "deconvnet": lambda x, g: torch.relu(g),
    "beta_smooth": lambda x, g: torch.sigmoid(10.0 * x) * g,
}
ALL_GRADIENT = ["conv", "linear", "batchnorm", "add", "avgpool", "reduce", "scale", "layernorm", "product", "softmax", "activation"]


def small_net() -> nn.Module:
    """Conv, ReLU, max-pool, conv, ReLU, adaptive average pool, linear, ReLU, linear: every node kind the
    gradient composites meet on a CNN."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3),
    ).to(D64).eval()


@pytest.fixture(scope="module")
def case():
    model = small_net()
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=D64)
    targets = model(x).argmax(1)
    return model, x, targets


def hooked_gradient(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, backward) -> torch.Tensor:
    """d logit_target / d x with each ReLU module's backward replaced by ``backward(its input, the signal)``."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.register_forward_hook(lambda m, inputs, output: setattr(m, "seen", inputs[0].detach()))
            module.register_full_backward_hook(lambda m, grad_in, grad_out: (backward(m.seen, grad_out[0]),))
    x = x.clone().requires_grad_()
    model(x).gather(1, targets[:, None]).sum().backward()
    return x.grad


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = TOL) -> None:
    scale = expected.abs().max().item()
    assert scale > 0, "the reference is all zeros: the comparison proves nothing"
    worst = (actual - expected).abs().max().item()
    assert worst <= tol * scale, f"max |ours - reference| = {worst:.3g}, {worst / scale:.3g} of max |reference|"


# --------------------------------------------------------------------------- the definitions


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_relu_gradient_composites_equal_their_definitions(case, name):
    model, x, targets = case
    expected = hooked_gradient(model, x, targets, DEFINITIONS[name])
    result = explain(model, x, name, target=targets, init="one-hot")
    assert result.relevance.dtype == D64
    assert_close(result.relevance, expected)
    # init "value" (the default) starts from the target logit instead of 1: the same map times the logit
    logit = result.outputs.gather(1, targets[:, None]).reshape(-1, 1, 1, 1)
    assert_close(explain(model, x, name, target=targets).relevance, expected * logit)


def test_the_definitions_differ_from_each_other_and_from_the_gradient(case):
    """The references are far apart, so a rule swapped for another fails the comparisons above."""
    model, x, targets = case
    maps = {name: hooked_gradient(model, x, targets, backward) for name, backward in DEFINITIONS.items()}
    maps["gradient"] = hooked_gradient(model, x, targets, lambda x, g: g * (x > 0))
    names = sorted(maps)
    for i, left in enumerate(names):
        for right in names[i + 1:]:
            assert (maps[left] - maps[right]).abs().max() > 1e-3 * maps[right].abs().max(), (left, right)


def test_the_gradient_rule_everywhere_is_autograd_s_gradient(case):
    model, x, targets = case
    spec = {"rules": [{"match": {"type": ALL_GRADIENT}, "rule": "gradient"}]}
    result = explain(model, x, spec, target=targets, init="one-hot")
    leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(model(leaf).gather(1, targets[:, None]).sum(), leaf)
    assert_close(result.relevance, expected)


def test_a_functional_relu_gets_the_rule_as_a_module_does(case):
    """The rule follows the op, not the module: F.relu in a forward is a ReLU too (zennit hooks modules only)."""
    model, x, targets = case

    class Functional(nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.layers = nn.ModuleList(layer for layer in layers if not isinstance(layer, nn.ReLU))

        def forward(self, h):
            for layer in self.layers:
                h = layer(h)
                if isinstance(layer, (nn.Conv2d, nn.Linear)) and layer is not self.layers[-1]:
                    h = F.relu(h)
            return h

    functional = Functional(model).eval()
    torch.testing.assert_close(functional(x), model(x), rtol=0, atol=0)
    for name in DEFINITIONS:
        ours = explain(functional, x, name, target=targets, init="one-hot").relevance
        assert_close(ours, explain(model, x, name, target=targets, init="one-hot").relevance)


def test_the_ledger_books_what_the_rules_change_as_their_share(case):
    model, x, targets = case
    result = explain(model, x, "guided_backprop", target=targets, layer_relevance=True)
    by_rule = {layer.rule for layer in result.layers.values()}
    assert {"guided_backprop", "gradient"} <= by_rule
    for layer in result.layers.values():
        assert layer.other.abs().max() <= 1e-9 * max(1.0, layer.relevance_out.abs().max().item()), layer


# --------------------------------------------------------------------------- zennit side by side


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_relu_gradient_composites_equal_zennit_s(case, name):
    model, x, targets = case
    zs.require_zennit()
    seed = zs.initial_relevance(model(x), targets, "one-hot")
    _, expected = zs.zennit_lrp(copy.deepcopy(model), x, zs.zennit_composite(name), seed)
    assert_close(explain(model, x, name, target=targets, init="one-hot").relevance, expected)


def test_beta_smooth_with_another_beta_equals_zennit_s(case):
    model, x, targets = case
    zs.require_zennit()
    spec = {"extends": "beta_smooth", "rules": [{"match": {"type": "relu"}, "rule": "beta_smooth", "beta_smooth": 2.5}]}
    seed = zs.initial_relevance(model(x), targets, "one-hot")
    _, expected = zs.zennit_lrp(copy.deepcopy(model), x, zs.zennit_composite("beta_smooth", beta_smooth=2.5), seed)
    ours = explain(model, x, spec, target=targets, init="one-hot").relevance
    assert_close(ours, expected)
    assert (ours - explain(model, x, "beta_smooth", target=targets, init="one-hot").relevance).abs().max() > 1e-3 * expected.abs().max()


# --------------------------------------------------------------------------- where the rules apply


def test_a_relu_line_with_a_relevance_rule_is_refused_with_the_rules_that_fit():
    with pytest.raises(ConfigError) as info:
        explain(small_net(), torch.zeros(1, 2, 8, 8, dtype=D64), {"rules": [{"match": {"type": "relu"}, "rule": "epsilon"}]})
    assert "does not apply to type ['relu']" in str(info.value)
    assert "beta_smooth, deconvnet, gradient, guided_backprop" in info.value.hint


def test_activations_without_a_line_still_pass_relevance_unchanged(case):
    """Giving activations a rule is opt-in: an LRP composite's ReLUs get none and the maps stay as they were."""
    model, x, targets = case
    plain = explain(model, x, "epsilon", target=targets, layer_relevance=True)
    assert {layer.rule for layer in plain.layers.values() if layer.kind == "elementwise"} == {"pass"}
    spec = {"extends": "epsilon", "rules": [{"match": {"type": "activation"}, "rule": "gradient"}]}
    # on LRP relevance a ReLU's gradient changes nothing: relevance reaches only its positive outputs
    assert_close(explain(model, x, spec, target=targets).relevance, plain.relevance)


# --------------------------------------------------------------------------- pass on a softmax


class Scores(nn.Module):
    def forward(self, q, k):
        return q @ k.transpose(1, 2) / 2.0


class TinyAttention(nn.Module):
    """One attention head over 4 tokens of width 4, mean-pooled into 3 logits."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.scores = Scores()
        self.attn = nn.Softmax(dim=-1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        weights = self.attn(self.scores(self.q(x), self.k(x)))
        return self.head((weights @ self.v(x)).mean(1))


def test_pass_on_a_softmax_inside_the_model_hands_its_relevance_on_unchanged():
    torch.manual_seed(0)
    model, x = TinyAttention().to(D64).eval(), torch.randn(2, 4, 4, dtype=D64)
    uniform = {"match": {"type": "product"}, "rule": "uniform"}  # so that relevance reaches the softmax
    spec = {"extends": "attnlrp", "rules": [{"match": {"type": "softmax"}, "rule": "pass"}, uniform]}
    result = explain(model, x, spec, layers=["scores", "attn"], layer_relevance=True)
    at_output, at_input = result.layer_maps["attn"], result.layer_maps["scores"]
    assert at_output.abs().max() > 0
    assert torch.equal(at_input, at_output)  # the scores feed the softmax only: its input's relevance is its output's
    (softmax,) = [layer for layer in result.layers.values() if layer.kind == "softmax"]
    assert softmax.rule == "pass"
    torch.testing.assert_close(softmax.relevance_in, softmax.relevance_out, rtol=0, atol=0)
    for other in ("taylor", "constant"):
        changed = {"extends": "attnlrp", "rules": [{"match": {"type": "softmax"}, "rule": other}, uniform]}
        assert not torch.allclose(explain(model, x, changed).relevance, result.relevance), other


# --------------------------------------------------------------------------- DeepTaylor's average pooling


def test_deep_taylor_average_pooling_is_the_gradient_rule_on_the_pool():
    """iNNvestigate's DeepTaylor maps average pooling by the gradient: a 2x2 window's relevance, a quarter to each
    input (computed here by hand), whatever the inputs' values, unlike the proportional rule."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 2))
    model, x = model.to(D64).eval(), torch.randn(2, 2, 4, 4, dtype=D64)
    spec = {"extends": "epsilon_plus", "rules": [{"match": {"type": "avgpool"}, "rule": "gradient"}]}
    result = explain(model, x, spec, layers=["1", "2"])
    pooled, below = result.layer_maps["2"], result.layer_maps["1"]
    by_hand = pooled.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) / 4
    assert_close(below, by_hand)
    proportional = explain(model, x, "epsilon_plus", layers=["1"]).layer_maps["1"]
    assert (proportional - by_hand).abs().max() > 1e-3 * by_hand.abs().max()


def test_pass_named_on_activations_equals_leaving_them_without_a_line():
    """zennit's ``(Activation, Pass())`` layer map, line by line: an activation's relevance passes unchanged, which is
    also what an activation without a line gets (benchmarks/peer_cases.py found the named form refused)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 7), nn.Softplus(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    linear = {"match": {"type": "linear"}, "rule": "epsilon", "epsilon": 0.1}
    named = explain(model, x, {"rules": [{"match": {"type": "activation"}, "rule": "pass"}, linear]}, target=1).relevance
    unnamed = explain(model, x, {"rules": [linear]}, target=1).relevance
    torch.testing.assert_close(named, unnamed, rtol=0, atol=1e-14)
    gradient = explain(model, x, {"rules": [{"match": {"type": "activation"}, "rule": "gradient"}, linear]}, target=1).relevance
    assert float((gradient - named).abs().max()) > 1e-3  # the line is applied: another rule there changes the map
