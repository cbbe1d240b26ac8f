"""Several model inputs get relevance (issue 27 item 4): ``explain(model, (x1, x2))`` returns one relevance per
input from one walk; ``inputs=`` still means "held constant".

Why the equalities below hold exactly (not just approximately): where two inputs meet only through a join of their
branches (a concatenation, or an addition a = f(x1) + g(x2)), the relevance that reaches the join's output depends
only on the forward values above it, which are the same whether x2 is explained or held. A concatenation routes each
branch its own slice; the add rule gives the branch f(x1) the share f / (f + g) (Bach et al. 2015, eq. 56, weights 1),
whether g is an explained branch or a held constant (then g's share is absorbed, as a bias is). Below the join each
branch is walked by the same rules on the same values. So x1's relevance with x2 held equals x1's part of the joint
walk, to the last bit.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpcli
from lrpcli.engine.explainer import Explainer, explain
from lrpcli.errors import InputError, ModelError


class ConcatNet(nn.Module):
    """Two branches, concatenated, then a head: the inputs meet only in the concatenation."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(4, 6, bias=bias), nn.ReLU())
        self.b = nn.Sequential(nn.Linear(3, 5, bias=bias), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(11, 7, bias=bias), nn.ReLU(), nn.Linear(7, 3, bias=bias))

    def forward(self, x1, x2):
        return self.head(torch.cat([self.a(x1), self.b(x2)], dim=1))


class AddNet(nn.Module):
    """Two branches added (a residual-style join), then a head."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(4, 6, bias=bias), nn.ReLU(), nn.Linear(6, 5, bias=bias))
        self.b = nn.Linear(3, 5, bias=bias)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(5, 3, bias=bias))

    def forward(self, x1, x2):
        return self.head(self.a(x1) + self.b(x2))


class ImageTable(nn.Module):
    """An image (N, 1, 6, 6) through a small CNN and a table row (N, 5) through a linear layer, concatenated."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 8), nn.ReLU())
        self.table = nn.Sequential(nn.Linear(5, 4), nn.ReLU())
        self.head = nn.Linear(12, 3)

    def forward(self, image, row):
        return self.head(torch.cat([self.image(image), self.table(row)], dim=1))


class ImageText(nn.Module):
    """An image through a conv layer and token ids through an embedding (mean over tokens), concatenated."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embedding = nn.Embedding(11, 4)
        self.head = nn.Sequential(nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 2))

    def forward(self, image, ids):
        return self.head(torch.cat([self.image(image), self.embedding(ids).mean(dim=1)], dim=1))


def _net(cls, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return cls(**kwargs).double().eval()


def _pair(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=generator, dtype=torch.double), torch.randn(n, 3, generator=generator, dtype=torch.double)


def _logit(result) -> torch.Tensor:
    return result.outputs.gather(1, result.targets[:, None])[:, 0]


@pytest.mark.parametrize("cls", [ConcatNet, AddNet])
@pytest.mark.parametrize("composite", ["epsilon", "lrp_0", "epsilon_plus_flat"])
def test_each_inputs_relevance_equals_explaining_it_with_the_other_held(cls, composite):
    model = _net(cls)
    x1, x2 = _pair()
    joint = explain(model, (x1, x2), composite)
    assert isinstance(joint.relevance, tuple) and [r.shape for r in joint.relevance] == [x1.shape, x2.shape]
    first = explain(model, x1, composite, target=joint.targets, inputs={"x2": x2})
    second = explain(model, x2, composite, target=joint.targets, inputs={"x1": x1})  # the held input comes first
    torch.testing.assert_close(first.relevance, joint.relevance[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(second.relevance, joint.relevance[1], rtol=0, atol=1e-15)
    assert joint.relevance[0].abs().sum() > 0 and joint.relevance[1].abs().sum() > 0


@pytest.mark.parametrize("cls", [ConcatNet, AddNet, ImageTable])
def test_all_inputs_relevance_and_the_ledger_sum_to_the_logit(cls):
    model = _net(cls)
    x = (torch.randn(4, 1, 6, 6, dtype=torch.double), torch.randn(4, 5, dtype=torch.double)) if cls is ImageTable else _pair(4)
    result = explain(model, x, "epsilon", layer_relevance=True)
    inputs_total = sum(r.flatten(1).sum(1) for r in result.relevance)
    absorbed = sum(layer.absorbed for layer in result.layers.values())
    torch.testing.assert_close(inputs_total + absorbed, _logit(result), rtol=1e-10, atol=1e-12)
    assert float(absorbed.abs().max()) > 1e-3  # biases take a share, so leaving either side out fails


@pytest.mark.parametrize("cls", [ConcatNet, AddNet])
def test_lrp_0_on_a_bias_free_relu_net_equals_gradient_times_input_per_input(cls):
    # LRP-0 on a bias-free ReLU network equals gradient x input (Montavon et al. 2019, "Layer-Wise Relevance
    # Propagation: An Overview", sec. 10.2.1); autograd gives the gradient of each input independently.
    model = _net(cls, bias=False)
    x1, x2 = (t.requires_grad_(True) for t in _pair())
    result = explain(model, (x1.detach(), x2.detach()), "lrp_0")
    logit = model(x1, x2).gather(1, result.targets[:, None]).sum()
    g1, g2 = torch.autograd.grad(logit, (x1, x2))
    torch.testing.assert_close(result.relevance[0], (x1 * g1).detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.relevance[1], (x2 * g2).detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sum(r.sum(1) for r in result.relevance), _logit(result), rtol=1e-10, atol=1e-12)


def test_captum_lrp_on_tuple_inputs():
    # captum.attr.LRP with its default epsilon rule (1e-9) on Linear layers; a concatenation is routed by autograd,
    # as lrpcli routes it, so the two agree input by input.
    captum_attr = pytest.importorskip("captum.attr")
    model = _net(ConcatNet)
    x1, x2 = _pair()
    ours = explain(model, (x1, x2), "epsilon", params={"epsilon": 1e-9})
    theirs = captum_attr.LRP(model).attribute((x1, x2), target=ours.targets)
    for mine, reference in zip(ours.relevance, theirs):
        torch.testing.assert_close(mine, reference.detach(), rtol=1e-9, atol=1e-12)


class CaptumMultiLayer(nn.Module):
    """captum 0.9's tests/helpers/basic_models.py BasicModel_MultiLayer (the part its LRP tests run)."""

    def __init__(self):
        super().__init__()
        self.linear0 = nn.Linear(3, 3)
        self.linear1 = nn.Linear(3, 4)
        self.linear2 = nn.Linear(4, 2)
        with torch.no_grad():
            self.linear0.weight.copy_(torch.eye(3))
            self.linear0.bias.zero_()
            self.linear1.weight.fill_(1.0)
            self.linear1.bias.copy_(torch.tensor([-10.0, 1.0, 1.0, 1.0]))
            self.linear2.weight.fill_(1.0)
            self.linear2.bias.copy_(torch.tensor([-1.0, 1.0]))

    def forward(self, x, add_input=None):
        return self.linear2(torch.relu(self.linear1(self.linear0(x if add_input is None else x + add_input))))


def test_captums_lrp_multi_inputs_case():
    # captum's test_lrp_multi_inputs: inputs (x, 3x), x = [1, 2, 3], target 0; captum gives x [16, 32, 48], the
    # relevance of the sum x + 3x (its add hands each summand the full relevance: delta -104). lrpcli's add rule
    # splits it in proportion, x : 3x = 1 : 3, so x gets [4, 8, 12] and 3x [12, 24, 36]; together captum's
    # [16, 32, 48], 96 in all: the output 88 less what the biases absorbed, -1 at linear2 (88 - 89) and -7 at
    # linear1 (-10 + 1 + 1 + 1).
    model = CaptumMultiLayer().eval()
    x = torch.tensor([[1.0, 2.0, 3.0]])
    result = explain(model, (x, 3 * x), "epsilon", target=0, params={"epsilon": 1e-9}, layer_relevance=True)
    torch.testing.assert_close(result.relevance[0], torch.tensor([[4.0, 8.0, 12.0]]))
    torch.testing.assert_close(result.relevance[1], torch.tensor([[12.0, 24.0, 36.0]]))
    torch.testing.assert_close(result.relevance[0] + result.relevance[1], torch.tensor([[16.0, 32.0, 48.0]]))
    assert float(result.outputs[0, 0]) == 88.0
    absorbed = sum(layer.absorbed for layer in result.layers.values())
    torch.testing.assert_close(absorbed, torch.tensor([-8.0]))


def test_captums_lrp_multi_case_a_held_zero_input_changes_nothing():
    # captum's test_lrp_multi: add_input = 0 passed as an additional forward arg gives the same attribution.
    # (lrpcli's add x + 0 is a node of its own, its share x / (x + 0 + stabilizer): float64, stabilizer 1e-12 here.)
    model = CaptumMultiLayer().double().eval()
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.double)
    small = {"epsilon": 1e-12, "stabilizer": 1e-12}
    alone = explain(model, x, "epsilon", target=0, params=small)
    held = explain(model, x, "epsilon", target=0, params=small, inputs={"add_input": torch.zeros(1, 3, dtype=torch.double)})
    torch.testing.assert_close(held.relevance, alone.relevance, rtol=1e-11, atol=0)
    # by hand: linear1 gives [-4, 7, 7, 7], the ReLU keeps the last three, so x_i * 3 = [3, 6, 9] (of the output 20)
    torch.testing.assert_close(held.relevance, torch.tensor([[3.0, 6.0, 9.0]], dtype=torch.double))


def test_an_image_and_a_table_row_in_one_walk():
    model = _net(ImageTable)
    image, row = torch.rand(3, 1, 6, 6, dtype=torch.double), torch.rand(3, 5, dtype=torch.double)
    result = explain(model, (image, row), "epsilon_plus_flat")
    assert result.relevance[0].shape == image.shape and result.relevance[1].shape == row.shape
    held_row = explain(model, image, "epsilon_plus_flat", target=result.targets, inputs={"row": row})
    held_image = explain(model, row, "epsilon_plus_flat", target=result.targets, inputs={"image": image})
    torch.testing.assert_close(held_row.relevance, result.relevance[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(held_image.relevance, result.relevance[1], rtol=0, atol=1e-15)
    assert result.heatmap(0, input=0).shape == (6, 6, 3)
    assert result.of_input(1) is result.relevance[1]


def test_an_image_and_token_ids_in_one_walk():
    model = _net(ImageText)
    image, ids = torch.rand(2, 1, 5, 5, dtype=torch.double), torch.tensor([[1, 4, 7], [2, 2, 10]])
    result = explain(model, (image, ids), "epsilon", params={"epsilon": 1e-12}, layer_relevance=True)
    assert result.relevance[0].shape == image.shape and result.relevance[1].shape == ids.shape  # one value per token
    held = explain(model, ids, "epsilon", target=result.targets, params={"epsilon": 1e-12}, inputs={"image": image})
    torch.testing.assert_close(held.relevance, result.relevance[1], rtol=0, atol=1e-15)
    inputs_total = sum(r.flatten(1).sum(1) for r in result.relevance)
    absorbed = sum(layer.absorbed for layer in result.layers.values())
    torch.testing.assert_close(inputs_total + absorbed, _logit(result), rtol=1e-10, atol=1e-12)


def test_the_single_input_api_is_unchanged_and_a_one_tuple_gives_a_one_tuple():
    model = nn.Sequential(nn.Linear(4, 3)).double().eval()
    x = _pair()[0]
    single = explain(model, x, "epsilon")
    assert isinstance(single.relevance, torch.Tensor)
    one = explain(model, (x,), "epsilon")
    assert isinstance(one.relevance, tuple) and len(one.relevance) == 1
    torch.testing.assert_close(one.relevance[0], single.relevance, rtol=0, atol=0)


def test_the_explainer_and_the_captum_style_attribute_take_tuples():
    model = _net(ConcatNet)
    x1, x2 = _pair()
    explainer = Explainer(model, "epsilon")
    torch.testing.assert_close(explainer.forward((x1, x2)), model(x1, x2))
    again = explainer.explain((x1[:2], x2[:2]))  # another batch size: the same captured graph
    torch.testing.assert_close(again.relevance[1], explain(model, (x1, x2), "epsilon").relevance[1][:2])
    parts = lrpcli.LRPAttribution(model, "epsilon").attribute((x1, x2), target=0)
    assert isinstance(parts, tuple) and parts[1].shape == x2.shape


def test_an_exported_program_with_two_inputs():
    model = _net(ConcatNet)
    x1, x2 = _pair()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x1, x2), dynamic_shapes=({0: batch}, {0: batch}))
    eager = explain(model, (x1, x2), "epsilon")
    saved = explain(program, (x1[:3], x2[:3]), "epsilon")
    for mine, reference in zip(saved.relevance, eager.relevance):
        torch.testing.assert_close(mine, reference[:3], rtol=0, atol=1e-15)
    held = explain(program, x1, "epsilon", target=eager.targets, inputs={"x2": x2})
    torch.testing.assert_close(held.relevance, eager.relevance[0], rtol=0, atol=1e-15)


def test_clear_errors():
    model = _net(ConcatNet)
    x1, x2 = _pair()
    with pytest.raises(InputError, match="different numbers of samples"):
        explain(model, (x1, x2[:3]))
    with pytest.raises(InputError, match="input 1.*torch.Tensor, got list"):
        explain(model, (x1, [[0.0, 1.0, 2.0]] * 5))
    with pytest.raises(InputError, match="empty"):
        explain(model, ())
    with pytest.raises(ModelError, match="could not capture Linear"):  # more inputs than forward takes
        explain(nn.Linear(4, 3).double(), (x1, x1))
    program = torch.export.export(model, (x1, x2), dynamic_shapes=({0: torch.export.Dim("b")}, {0: torch.export.Dim("b")}))
    with pytest.raises(ModelError, match=r"takes 2 inputs; 1 given(.|\n)*explain\(model, \(x1, x2\)\)"):
        explain(program, x1)
    scripted = torch.jit.trace(model, (x1, x2))
    with pytest.raises(ModelError, match="TorchScript"):
        explain(scripted, (x1, x2))
