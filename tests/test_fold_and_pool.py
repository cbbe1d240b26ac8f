"""Batch-norm folding after every affine layer, a conserving rule where it cannot be folded, and max-pool
routing by the model's own forward (issue 27, items 2 and 5)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lrpcli import ModelError, explain
from lrpcli.engine.explainer import Explainer
from lrpcli.runs.conservation import check_conservation
from lrpcli.runs.inspect import inspect_model

from conftest import randomize_batchnorm

F64 = torch.float64


def _merged_by_hand(layer: nn.Module, bn: nn.BatchNorm1d) -> nn.Module:
    """``layer`` with ``bn`` merged into it, one output channel at a time (y = scale * (W a + b) + shift with
    scale = gamma / sqrt(var + eps), shift = beta - mean * scale; Ioffe & Szegedy 2015, eq. in Alg. 1).

    Output channel c of a transposed conv with g groups is weight[grp*in/g : (grp+1)*in/g, c % (out/g)] with
    grp = c // (out/g) (torch.nn.ConvTransposeNd: weight (in, out/g, *kernel)); of a conv or linear, weight[c]."""
    merged = copy.deepcopy(layer)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    with torch.no_grad():
        if merged.bias is None:
            merged.bias = nn.Parameter(torch.zeros_like(shift))
        for c in range(scale.numel()):
            if isinstance(layer, nn.modules.conv._ConvTransposeNd):
                per_group_out = layer.out_channels // layer.groups
                per_group_in = layer.in_channels // layer.groups
                group = c // per_group_out
                merged.weight[group * per_group_in : (group + 1) * per_group_in, c % per_group_out] *= scale[c]
            else:
                merged.weight[c] *= scale[c]
            merged.bias[c] = merged.bias[c] * scale[c] + shift[c]
    return merged


CASES = {
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2), nn.BatchNorm2d, (4, 5, 5)),
    "conv_transpose2d_groups": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d, (4, 5, 5)),
    "conv_transpose1d": (lambda: nn.ConvTranspose1d(3, 5, 4, stride=2, padding=1), nn.BatchNorm1d, (3, 7)),
    "conv_transpose3d": (lambda: nn.ConvTranspose3d(2, 4, 2, stride=2, groups=2), nn.BatchNorm3d, (2, 3, 3, 3)),
    "linear": (lambda: nn.Linear(6, 5), nn.BatchNorm1d, (6,)),
    "conv2d_groups": (lambda: nn.Conv2d(4, 6, 3, groups=2), nn.BatchNorm2d, (4, 6, 6)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("composite", ["lrp_0", "epsilon", "epsilon_plus"])
def test_batchnorm_after_an_affine_layer_gives_the_relevance_of_the_merged_layer(case, composite):
    """BN after conv, linear and transposed conv (groups too) is folded exactly: the relevance equals that of
    the same model with the BN merged by hand (zplus included, whose modified forward uses the merged weights)."""
    make, norm, shape = CASES[case]
    torch.manual_seed(0)
    layer = make()
    bn = norm(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)
    head = [nn.ReLU(), nn.Flatten()]
    model = randomize_batchnorm(nn.Sequential(layer, bn, *head, nn.LazyLinear(3)))
    x = torch.randn(4, *shape)
    model(x)
    model = model.double().eval()
    merged = nn.Sequential(_merged_by_hand(model[0], model[1]), *head, model[-1]).double().eval()
    x = x.double()
    torch.testing.assert_close(merged(x), model(x), rtol=1e-12, atol=1e-12)  # the hand merge is right

    result = explain(model, x, composite)
    expected = explain(merged, x, composite, target=result.targets)
    assert any("folded batch-norm" in note for note in result.notes)
    scale = expected.relevance.abs().max()
    assert (result.relevance - expected.relevance).abs().max() <= 1e-10 * scale
    torch.testing.assert_close(result.outputs, model(x), rtol=1e-12, atol=1e-12)  # the model's own values


def test_batchnorm_over_another_axis_than_a_linear_layers_features_is_not_folded_silently():
    """Linear on (N, L, F) then BatchNorm1d(L) with L == F: the BN scales positions, not the linear's features,
    so merging it into the weight would be wrong; a ModelError says so and how to explain the model unfolded."""
    torch.manual_seed(3)
    model = randomize_batchnorm(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(16, 3))).double()
    x = torch.randn(2, 4, 4, dtype=F64)
    with pytest.raises(ModelError, match="cannot be folded"):
        explain(model, x, "lrp_0")
    result = explain(model, x, {"extends": "lrp_0", "canonizers": []})
    leaf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(leaf).gather(1, result.targets[:, None]).sum(), leaf)
    assert (result.relevance - grad * x).abs().max() <= 1e-10 * (grad * x).abs().max()


class _Unfoldable(nn.Module):
    """Batch-norms that follow no single affine layer: first in the net, and after a residual add."""

    def __init__(self):
        super().__init__()
        self.bn_in = nn.BatchNorm2d(2)
        self.conv_a = nn.Conv2d(2, 3, 3, padding=1)
        self.conv_b = nn.Conv2d(2, 3, 1)
        self.bn_add = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x):
        x = self.bn_in(x)
        y = self.bn_add(self.conv_a(x) + self.conv_b(x))
        return self.fc(torch.relu(y).flatten(1))


def _unfoldable():
    torch.manual_seed(1)
    model = randomize_batchnorm(_Unfoldable()).double().eval()
    x = torch.randn(3, 2, 6, 6, dtype=F64)
    return model, x


def test_unfoldable_batchnorm_gets_lrp0_in_lrp_0_so_relevance_is_gradient_times_input():
    """LRP-0 on every linear map (the BN's y = a*x + b included) is gradient x input on a ReLU net
    (Montavon et al. 2019, "Layer-wise relevance propagation: an overview", sec. 10.2.1); passing relevance
    through the BN is not."""
    model, x = _unfoldable()
    result = explain(model, x, "lrp_0")
    assert not any("folded" in note for note in result.notes)
    leaf = x.clone().requires_grad_()
    out = model(leaf)
    (grad,) = torch.autograd.grad(out.gather(1, result.targets[:, None]).sum(), leaf)
    expected = grad * x
    assert (result.relevance - expected).abs().max() <= 1e-10 * expected.abs().max()


def test_unfoldable_batchnorm_books_its_shift_share_as_bias_and_conserves():
    """Under the epsilon rule a BN hands down all it got but its shift's share: R_out - R_in = sum R_y b / (y +
    eps sign y) + the stabiliser's share, so nothing is left unexplained; with LRP-0 the shift's share is
    sum_c b_c dF/dy_c (R_y = y dF/dy), computed here by autograd on the model."""
    model, x = _unfoldable()
    explainer = Explainer(model, "lrp_0")
    result = explainer.explain(x, layer_relevance=True)
    bn = next(layer for layer in result.layers.values() if layer.module == "bn_add")
    assert bn.rule == "z"
    captured = {}
    model.bn_add.register_forward_hook(lambda module, args, out: captured.setdefault("y", out))
    leaf = x.clone().requires_grad_()
    out = model(leaf)
    (grad_y,) = torch.autograd.grad(out.gather(1, result.targets[:, None]).sum(), captured["y"])
    scale = model.bn_add.weight / torch.sqrt(model.bn_add.running_var + model.bn_add.eps)
    shift = model.bn_add.bias - model.bn_add.running_mean * scale
    expected_bias = (grad_y * shift.reshape(1, -1, 1, 1)).sum((1, 2, 3)).detach()
    torch.testing.assert_close(bn.bias, expected_bias, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bn.other, torch.zeros_like(bn.other), rtol=0, atol=1e-12)

    report = check_conservation(Explainer(model, "epsilon"), x, count="unexplained")
    assert report.passed, [(s.unexplained, s.worst_layer) for s in report.samples]


def test_pass_on_a_batchnorm_is_said_to_be_non_conservative_in_the_ledger_and_in_inspect():
    model, x = _unfoldable()
    spec = {"extends": "epsilon", "rules": [{"match": {"type": "batchnorm"}, "rule": "pass"}]}
    report = check_conservation(Explainer(model, spec), x, count="unexplained")
    assert not report.passed
    assert {sample.worst_layer for sample in report.samples} <= {"bn_in", "bn_add"}
    bn = next(c for c in report.samples[0].layers if c.layer == "bn_add")
    assert bn.rule == "pass" and bn.other != 0 and bn.other == pytest.approx(-bn.bias)

    warnings = "\n".join(inspect_model(model, x[:1], spec).warnings)
    assert "bn_add" in warnings and "bn_in" in warnings and "does not conserve" in warnings
    assert "does not conserve" not in "\n".join(inspect_model(model, x[:1], "epsilon").warnings)


def _tied_model() -> tuple[nn.Module, torch.Tensor]:
    """conv -> BN -> max-pool whose windows hold exact ties in the model's own float64 forward: integer kernel
    entries and a uniform patch of 2s make different receptive fields sum to the same integers, while the
    merged weights (kernel * BN scale) round each sum differently."""
    conv = nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 2.0, -1.0], [3.0, -2.0, 1.0], [1.0, 1.0, -3.0]]], [[[2.0, -1.0, 1.0], [1.0, 1.0, 2.0], [-2.0, 3.0, 1.0]]]]))
        conv.bias.copy_(torch.tensor([0.3, -0.2]))
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.1, -0.3]))
        bn.running_var.copy_(torch.tensor([0.37, 1.9]))
        bn.weight.copy_(torch.tensor([1.3, 0.7]))
        bn.bias.copy_(torch.tensor([-0.1, 0.2]))
    torch.manual_seed(2)
    model = nn.Sequential(conv, bn, nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double().eval()
    x = torch.zeros(2, 1, 8, 8, dtype=F64)
    x[0, :, 1:6, 2:7] = 2.0  # uniform patches
    x[1, :, 2:8, 0:5] = 2.0
    x[1, :, 0:2, 5:8] = -1.0
    return model, x


def test_max_pool_routes_relevance_as_the_models_own_forward_chose_among_ties():
    """LRP-0 routes relevance through max-pool as the gradient does (to the winner), so LRP-0 equals gradient x
    input of the model as given (unfolded) also where windows hold exact ties (Montavon et al. 2019, sec.
    10.2.1; torch picks the first maximum)."""
    model, x = _tied_model()
    conv_out = model[1](model[0](x))
    windows = conv_out.unfold(2, 2, 2).unfold(3, 2, 2).reshape(*conv_out.shape[:2], 4, 4, 4)
    tied = (windows == windows.amax(-1, keepdim=True)).sum(-1) > 1
    assert tied.sum() >= 4  # the input does make ties in the model's forward
    result = explain(model, x, "lrp_0")
    assert any("folded batch-norm" in note for note in result.notes)
    leaf = x.clone().requires_grad_()
    out = model(leaf)
    (grad,) = torch.autograd.grad(out.gather(1, result.targets[:, None]).sum(), leaf)
    expected = grad * x
    assert (result.relevance - expected).abs().max() <= 1e-10 * expected.abs().max()
