"""The engine's fast paths give what the slow, obvious way gives.

* every direct transpose (max-pool with recorded indices, reshapes, adaptive average
  pooling, residual adds) equals autograd's vector-Jacobian product of the same op;
* dropping ReLU outputs after the forward pass (and recomputing them on demand)
  changes no relevance;
* modified weights cached per model follow in-place weight changes;
* what ``explain`` returns is usable with autograd although the walk runs in
  inference mode.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrpcli import Explainer, explain
from lrpcli.engine import propagate as propagate_module
from lrpcli.sources.architectures import MiniVGG, ResNet
from lrpcli.engine.graph import Node, Ref
from lrpcli.engine.transposes import _DIRECT, _autograd_vjp, vjp

aten = torch.ops.aten


def _node(target, *args, op: str, name: str = "n") -> Node:
    return Node(name=name, target=target, kind="route", args=args, kwargs={}, op=op)


@pytest.mark.parametrize(
    ("target", "op", "extra"),
    [
        (aten.max_pool2d_with_indices.default, "max_pool2d_with_indices", ([2, 2], [2, 2])),
        (aten.max_pool2d_with_indices.default, "max_pool2d_with_indices", ([3, 3], [2, 2], [1, 1])),
        (aten.max_pool2d_with_indices.default, "max_pool2d_with_indices", ([3, 3], [1, 1], [1, 1], [1, 1], True)),
        (aten.flatten.using_ints, "flatten", (1,)),
        (aten.view.default, "view", ([4, -1],)),
        (aten.adaptive_avg_pool2d.default, "adaptive_avg_pool2d", ([3, 3],)),
        (aten.mean.dim, "mean", ([1], True)),
        (aten.mean.dim, "mean", ([-1, -2],)),
        (aten.sum.dim_IntList, "sum", ([0, 2], False)),
    ],
)
def test_direct_transposes_equal_autograd(target, op, extra):
    assert op in _DIRECT, "the op must have a direct transpose, or this test tests nothing"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=generator, dtype=torch.float64).relu()  # ties at 0, as after ReLU
    node = _node(target, Ref("x"), *extra, op=op)
    values = {"x": x, "n": node.call({"x": x})}
    output = values["n"]
    grad = torch.randn(output[0].shape if isinstance(output, tuple) else output.shape, generator=generator, dtype=x.dtype)
    grad_outputs = [grad, None] if isinstance(output, tuple) else grad
    direct = _DIRECT[op](node, values, ["x"], grad_outputs)
    assert direct is not None, "the direct transpose declined this op"
    expected = _autograd_vjp(node, values, ["x"], grad_outputs)
    torch.testing.assert_close(direct["x"], expected["x"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("op", ["add", "sub"])
def test_residual_add_transpose_equals_autograd(op):
    x, y = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    node = Node(name="n", target=getattr(aten, op).Tensor, kind="add", args=(Ref("x"), Ref("y")), kwargs={}, op=op)
    values = {"x": x, "y": y, "n": node.call({"x": x, "y": y})}
    grad = torch.randn(2, 5, dtype=torch.float64)
    direct = vjp(node, values, ["x", "y"], grad)
    expected = _autograd_vjp(node, values, ["x", "y"], grad)
    for name in ("x", "y"):
        torch.testing.assert_close(direct[name], expected[name], rtol=0, atol=0)


def _two_factor_cases():
    from lrpcli.engine.passes.transformer import apply_mask, attention_scores

    r = torch.Generator().manual_seed(1)

    def t(*shape):
        return torch.randn(*shape, generator=r, dtype=torch.float64)

    return [
        ("mul, same shapes", aten.mul.Tensor, (t(2, 3, 4), t(2, 3, 4)), ()),
        ("mul, broadcast gate", aten.mul.Tensor, (t(2, 3, 4, 4), t(2, 3, 1, 1)), ()),
        ("mul, constant factor", aten.mul.Tensor, (t(2, 3),), (t(1, 3),)),
        ("add, broadcast constant", aten.add.Tensor, (t(2, 5, 3),), (t(5, 3),)),
        ("sub, constant first", aten.sub.Tensor, (t(4, 2),), (t(2),)),
        ("matmul, batched", aten.matmul.default, (t(2, 3, 5, 4), t(2, 3, 4, 6)), ()),
        ("matmul, broadcast batch", aten.matmul.default, (t(2, 3, 5, 4), t(3, 4, 6)), ()),
        ("bmm", aten.bmm.default, (t(6, 5, 4), t(6, 4, 2)), ()),
        ("attention scores", attention_scores, (t(2, 2, 5, 4), t(2, 2, 7, 4)), (None,)),
        ("attention scores, scale", attention_scores, (t(2, 5, 4), t(2, 7, 4)), (0.3,)),
        ("boolean mask", apply_mask, (t(2, 5, 5),), (torch.rand(5, 5, generator=r) > 0.5,)),
        ("additive mask", apply_mask, (t(2, 5, 5),), (t(5, 5),)),
    ]


@pytest.mark.parametrize("case", _two_factor_cases(), ids=lambda case: case[0])
@pytest.mark.parametrize("wanted", ["all", "first", "last"])
def test_product_and_constant_transposes_equal_autograd(case, wanted):
    from lrpcli.engine.ops import op_name

    label, target, activations, constants = case
    names = [f"a{i}" for i in range(len(activations))]
    if label == "sub, constant first":  # the activation second: c - x
        args = (constants[0], Ref(names[0]))
    else:
        args = tuple(Ref(n) for n in names) + tuple(constants)
    node = Node(name="n", target=target, kind="product", args=args, kwargs={}, op=op_name(target))
    values = dict(zip(names, activations))
    values["n"] = node.call(values)
    inputs = {"all": names, "first": names[:1], "last": names[-1:]}[wanted]
    grad = torch.randn(values["n"].shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert op_name(target) in _DIRECT
    direct = _DIRECT[op_name(target)](node, values, inputs, grad)
    assert direct is not None and set(direct) == set(inputs), "the direct transpose declined or left out an input"
    expected = _autograd_vjp(node, values, inputs, grad)
    for name in inputs:
        torch.testing.assert_close(direct[name], expected[name], rtol=1e-12, atol=1e-12)


def test_unusual_arguments_fall_back_to_autograd():
    """An add with alpha, or a pool given keyword arguments, is not taken by a direct transpose."""
    x, y = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    node = Node(name="n", target=aten.add.Tensor, kind="add", args=(Ref("x"), Ref("y")), kwargs={"alpha": 3}, op="add")
    values = {"x": x, "y": y, "n": node.call({"x": x, "y": y})}
    assert _DIRECT["add"](node, values, ["x", "y"], torch.ones(2, 5, dtype=torch.float64)) is None
    grads = vjp(node, values, ["x", "y"], torch.ones(2, 5, dtype=torch.float64))
    torch.testing.assert_close(grads["y"], torch.full((2, 5), 3.0, dtype=torch.float64))


def _minivgg() -> nn.Module:
    torch.manual_seed(0)
    return MiniVGG(num_classes=5, width=8).eval().double()


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat"])
def test_dropping_relu_outputs_changes_nothing(monkeypatch, composite):
    model = _minivgg()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    explainer = Explainer(model, composite)
    fast = explainer.explain(x).relevance
    graph, _ = explainer.prepare(x)
    assert propagate_module._recomputable(graph), "MiniVGG has ReLUs whose outputs should be dropped"
    monkeypatch.setattr(propagate_module, "_recomputable", lambda graph: {})  # keep every value
    kept = Explainer(model, composite).explain(x).relevance
    torch.testing.assert_close(fast, kept, rtol=0, atol=0)


def test_dropped_relu_outputs_are_really_dropped():
    model = _minivgg()
    x = torch.randn(2, 3, 32, 32)
    explainer = Explainer(model.float(), "epsilon")
    graph, _ = explainer.prepare(x)
    with torch.inference_mode():
        values = propagate_module.record(graph, x)
    relus = [node.name for node in graph.nodes if node.op.startswith("relu")]
    assert relus and all(name not in dict(values) for name in relus[:-1])
    recomputed = values[relus[0]]  # recomputed on demand, equal to the real thing
    source = graph.node(relus[0]).refs[0]
    torch.testing.assert_close(recomputed, values[source].relu())


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat"])
def test_cached_modified_weights_follow_in_place_changes(composite):
    model = _minivgg()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    explainer = Explainer(model, composite)
    before = explainer.explain(x, 0).relevance
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(-1.5)  # W+ becomes a scaled W-: a stale cache would give the old heatmap's shape
    after = explainer.explain(x, 0).relevance
    fresh = Explainer(model, composite).explain(x, 0).relevance
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)
    assert not torch.allclose(before, after)


def test_derived_parameters_are_recomputed_after_an_in_place_change():
    """The cache itself (not only the engine's recapture) notices in-place changes to a weight or bias."""
    from lrpcli.engine.rules import Derived

    weight, bias = torch.tensor([[1.0, -2.0]]), torch.tensor([-1.0])
    node = Node(name="n", target=aten.linear.default, kind="linear", args=(Ref("x"), weight, bias), kwargs={}, op="linear")
    derived = Derived()
    positive = lambda: (node.weight.clamp(min=0), node.bias.clamp(min=0))  # noqa: E731
    first = derived.get(node, "w+", positive)
    assert derived.get(node, "w+", positive) is first  # cached
    weight.mul_(-1.0)
    torch.testing.assert_close(derived.get(node, "w+", positive)[0], torch.tensor([[0.0, 2.0]]))
    bias.mul_(-1.0)
    torch.testing.assert_close(derived.get(node, "w+", positive)[1], torch.tensor([1.0]))


def test_results_are_usable_with_autograd():
    model = _minivgg().float()
    x = torch.randn(2, 3, 32, 32)
    result = explain(model, x, "epsilon", layer_relevance=True)
    for tensor in (result.relevance, result.outputs, result.targets, result.initial):
        assert not tensor.is_inference()
    assert not next(iter(result.layers.values())).relevance_in.is_inference()
    leaf = x.clone().requires_grad_()
    (model(leaf).gather(1, result.targets[:, None]).sum() * result.relevance.sum()).backward()  # no inference-tensor error
    assert leaf.grad is not None


def test_resnet_adds_use_the_direct_transpose(monkeypatch):
    """The residual adds of a ResNet go through the direct path (autograd is never called)."""
    torch.manual_seed(0)
    model = ResNet(layers=(1, 1), widths=(8, 16), num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = explain(model, x, "epsilon_plus_flat").relevance
    import lrpcli.engine.transposes as transposes

    def refuse(*args, **kwargs):
        raise AssertionError("autograd fallback used")

    monkeypatch.setattr(transposes, "_autograd_vjp", refuse)
    torch.testing.assert_close(explain(model, x, "epsilon_plus_flat").relevance, expected, rtol=0, atol=0)


class _ViewHead(nn.Module):
    """A ReLU net whose output is the last layer's output itself, or a view of it."""

    def __init__(self, view: bool):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
        self.view = view

    def forward(self, x):
        out = self.body(x)
        return out.view(-1, 2, 2).flatten(1) if self.view else out


@pytest.mark.parametrize("view", [False, True])
def test_rules_that_overwrite_a_layer_output_leave_the_returned_outputs_alone(view):
    """alpha-beta writes z- into the layer's recorded output; the last layer's output is what the caller gets."""
    torch.manual_seed(0)
    model = _ViewHead(view).eval().double()
    x = torch.randn(5, 6, dtype=torch.float64)
    composite = {"rules": [{"match": {"type": "linear"}, "rule": "alpha_beta", "alpha": 2.0, "beta": 1.0}]}
    result = explain(model, x, composite)
    torch.testing.assert_close(result.outputs, model(x), rtol=0, atol=0)
    torch.testing.assert_close(result.initial.sum(1), model(x).gather(1, result.targets[:, None]).squeeze(1))


@pytest.mark.parametrize("slice_size", [7, 1 << 22])
def test_in_place_stabiliser_equals_the_plain_one(monkeypatch, slice_size):
    from lrpcli.engine.rules import base as rules

    monkeypatch.setattr(rules, "_SLICE", slice_size)  # 7: several slices, the last one short
    z = torch.randn(3, 4, 5, dtype=torch.float64)
    z[0, 0, :3] = torch.tensor([0.0, -0.0, -1e-7])
    expected = rules.stabilise(z, 1e-6)
    for tensor in (z.clone(), z.clone().transpose(1, 2)):  # contiguous (sliced) and not
        result = rules.stabilise_(tensor, 1e-6)
        assert result is tensor
        torch.testing.assert_close(result, expected if result.shape == expected.shape else expected.transpose(1, 2), rtol=0, atol=0)
    assert rules.stabilise_(z.clone(), 1e-6)[0, 0, 1] == 1e-6  # sign(-0.0) counts as +
