"""Graph capture: three routes to one graph, op normalisation, canonizers, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrpcli import ModelError, UnsupportedOpError, capture, explain, load_model
from lrpcli.engine.passes.canonizers import canonize, fold_batchnorm
from lrpcli.engine.composite_yaml import builtin_names


def _forms(model, x, tmp_path):
    """The same model as eager, scripted, traced, and saved TorchScript / .pt2 files."""
    scripted = torch.jit.script(model)
    traced = torch.jit.trace(model, x)
    script_path = tmp_path / "model.ts"
    torch.jit.save(scripted, str(script_path))
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    pt2_path = tmp_path / "model.pt2"
    torch.export.save(ep, str(pt2_path))
    return {
        "eager": model,
        "scripted": scripted,
        "traced": traced,
        "torchscript file": str(script_path),
        "exported program": ep,
        ".pt2 file": str(pt2_path),
    }


@pytest.mark.parametrize("fixture", ["mini_vgg", "small_resnet", "small_vgg_bn"])
def test_every_form_of_a_model_gives_the_same_relevance(fixture, request, tmp_path):
    model = request.getfixturevalue(fixture)
    size = 16 if fixture == "small_vgg_bn" else 32
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(3))
    forms = _forms(model, x, tmp_path)
    reference = explain(model, x, "epsilon_plus_flat")
    assert reference.relevance.abs().sum() > 0
    for name, form in forms.items():
        result = explain(form, x, "epsilon_plus_flat")
        torch.testing.assert_close(result.outputs, reference.outputs, msg=f"outputs differ for {name}")
        scale = reference.relevance.abs().max()
        diff = (result.relevance - reference.relevance).abs().max()
        assert diff <= 1e-5 * scale, f"{name}: relevance differs by {diff} (scale {scale})"


def test_captured_graph_reproduces_the_model_for_other_batch_sizes(small_resnet):
    x = torch.randn(4, 3, 32, 32)
    graph = capture(small_resnet, x)
    assert graph.dynamic_batch
    for batch in (1, 4, 7):
        xb = torch.randn(batch, 3, 32, 32)
        torch.testing.assert_close(graph(xb), small_resnet(xb))


def test_inplace_ops_are_made_out_of_place_and_residual_adds_are_add_nodes(small_resnet):
    graph = capture(torch.jit.script(small_resnet), torch.randn(2, 3, 32, 32))
    targets = {str(node.target) for node in graph.nodes}
    assert not any(t.split(".")[-2].endswith("_") for t in targets if t.startswith("aten.") and t.count(".") >= 2)
    adds = [node for node in graph.nodes if node.kind == "add"]
    assert len(adds) == 2  # one residual join per block
    assert {node.op for node in adds} == {"add_"}  # captured spelling kept for messages


def test_torchscript_graphs_get_layer_names_from_parameters(mini_vgg):
    graph = capture(torch.jit.script(mini_vgg), torch.randn(2, 3, 32, 32))
    weighted = [(node.module, node.module_type) for node in graph.nodes if node.kind in ("conv", "linear")]
    assert weighted == [
        ("features.0", "Conv2d"),
        ("features.3", "Conv2d"),
        ("features.6", "Conv2d"),
        ("features.9", "Conv2d"),
        ("classifier.1", "Linear"),
        ("classifier.4", "Linear"),
    ]


def test_fold_batchnorm_keeps_the_function_and_removes_the_nodes(small_vgg_bn):
    x = torch.randn(3, 3, 16, 16)
    graph = capture(small_vgg_bn, x)
    folded = fold_batchnorm(graph)
    assert sum(node.kind == "batchnorm" for node in graph.nodes) == 2
    assert sum(node.kind == "batchnorm" for node in folded.nodes) == 0
    assert any("folded batch-norm" in note for note in folded.notes)
    torch.testing.assert_close(folded(x), small_vgg_bn(x), rtol=1e-5, atol=1e-5)


def test_dropout_is_dropped_and_a_trailing_softmax_is_stripped():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3), nn.Softmax(dim=1)).eval()
    x = torch.randn(5, 4)
    graph = canonize(capture(model, x), [])
    assert not any(node.op == "dropout" for node in graph.nodes)
    assert not any(node.kind == "softmax" for node in graph.nodes)
    assert any("explaining the logits" in note for note in graph.notes)
    result = explain(model, x, "epsilon")
    torch.testing.assert_close(result.outputs, model[:4](x))  # logits, not probabilities
    assert any("softmax" in note for note in result.notes)


class _Functional(nn.Module):
    """Functional code the way people write it: F.relu, torch.cat, views, functional pooling."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(2, 4, 3, padding=1)
        self.b = nn.Conv1d(2, 4, 5, padding=2)
        self.head = nn.Linear(8 * 4, 3)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        y = F.avg_pool1d(y, 2) + F.max_pool1d(y, 2)
        y = y.view(y.shape[0], -1)
        return self.head(y)


def test_functional_code_is_covered_and_conserves_under_lrp0():
    torch.manual_seed(0)
    model = _Functional().double().eval()
    for module in model.modules():
        if hasattr(module, "bias") and module.bias is not None:
            nn.init.zeros_(module.bias)
    x = torch.randn(3, 2, 8, dtype=torch.float64)
    result = explain(model, x, "lrp_0")
    logits = result.outputs.gather(1, result.targets[:, None]).squeeze(1)
    torch.testing.assert_close(result.relevance.sum(dim=(1, 2)), logits, rtol=1e-10, atol=1e-12)


def test_conv3d_and_adaptive_pooling_run():
    model = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 2))
    x = torch.randn(2, 1, 4, 4, 4)
    result = explain(model.eval(), x, "epsilon_plus_flat")
    assert result.relevance.shape == x.shape and torch.isfinite(result.relevance).all()


class _Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4))
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = self.inner(x)
        return self.out(torch.exp(h))


def test_unsupported_op_names_op_node_and_module():
    with pytest.raises(UnsupportedOpError) as info:
        explain(_Gated().eval(), torch.randn(2, 4), "epsilon")
    error = info.value
    assert error.op == "exp"
    assert error.node and error.node in str(error)
    assert "_Gated" in str(error) or error.module == ""
    assert "exp" in str(error) and "hint" in str(error)
    assert error.exit_code == 4


def test_softmax_inside_the_model_gets_the_taylor_rule():
    """No longer an error: AttnLRP's Prop. 3.1 (checked against the modified-gradient oracle)."""
    from gradient_oracle import modified_gradient_relevance

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(4, 4)
            self.l2 = nn.Linear(4, 2)

        def forward(self, x):
            return self.l2(torch.softmax(self.l1(x), dim=1))

    model, x = Inner().double().eval(), torch.randn(2, 4, dtype=torch.float64)
    result = explain(model, x, "epsilon", target=1, params={"epsilon": 0.0, "stabilizer": 0.0})
    torch.testing.assert_close(result.relevance, modified_gradient_relevance(model, x, 1, "attnlrp"))


def test_models_with_two_inputs_are_refused_clearly():
    class Two(nn.Module):
        def forward(self, a, b):
            return a + b

    with pytest.raises(ModelError, match="2 inputs"):
        capture(torch.export.export(Two(), (torch.randn(2, 3), torch.randn(2, 3))), torch.randn(2, 3))


def test_load_model_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope.pt")
    state_dict = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, state_dict)
    with pytest.raises(ModelError, match="architecture"):
        load_model(state_dict)


def test_every_builtin_composite_runs_on_every_model_form(small_resnet):
    x = torch.randn(2, 3, 32, 32)
    for name in builtin_names():
        result = explain(small_resnet, x, name)
        assert torch.isfinite(result.relevance).all(), name


class _FixedBatch(nn.Module):
    """Code that bakes the batch size in (x.view(3, -1)): captured per batch size."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(x.view(3, -1))


def test_models_that_fix_the_batch_size_are_captured_for_that_size():
    model = _FixedBatch().eval()
    x = torch.randn(3, 2, 4)
    result = explain(model, x, "epsilon")
    torch.testing.assert_close(result.outputs, model(x))
    assert result.relevance.shape == x.shape


def test_unfolded_batchnorm_gets_its_own_rule_and_conserves_under_lrp0():
    model = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3, bias=False)).double().eval()
    with torch.no_grad():
        model[0].running_mean.zero_()  # shift 0: the affine map is a pure per-feature scale
        model[0].bias.zero_()
        model[0].weight.uniform_(0.5, 2.0)
        model[0].running_var.uniform_(0.5, 2.0)
    x = torch.randn(5, 4, dtype=torch.float64)
    spec = {"params": {"stabilizer": 0.0}, "rules": [{"match": {"type": "batchnorm"}, "rule": "z"}, {"match": {"type": "linear"}, "rule": "z"}]}
    result = explain(model, x, spec)
    logits = result.outputs.gather(1, result.targets[:, None]).squeeze(1)
    torch.testing.assert_close(result.relevance.sum(1), logits, rtol=1e-10, atol=1e-12)
    pass_spec = {"params": {"stabilizer": 0.0}, "rules": [{"match": {"type": "batchnorm"}, "rule": "pass"}, {"match": {"type": "linear"}, "rule": "z"}]}
    passed = explain(model, x, pass_spec)
    torch.testing.assert_close(passed.relevance, result.relevance)  # a pure scale: z == pass
    with torch.no_grad():
        model[0].bias.fill_(0.5)  # now the shift absorbs part of the relevance under z, none under pass
    shifted = explain(model, x, spec)
    logits = shifted.outputs.gather(1, shifted.targets[:, None]).squeeze(1)
    assert not torch.allclose(shifted.relevance.sum(1), logits, rtol=1e-3)
    torch.testing.assert_close(explain(model, x, pass_spec).relevance.sum(1), logits, rtol=1e-10, atol=1e-12)
    # the built-in lrp_0 gives an unfolded batch-norm z too (issue 27: it was pass)
    torch.testing.assert_close(explain(model, x, "lrp_0").relevance, shifted.relevance, rtol=1e-10, atol=1e-12)


def test_torchscript_conversion_falls_back_to_fewer_dynamic_dims_and_says_so(monkeypatch):
    """Where the all-dynamic conversion fails (shape arithmetic such as Swin's window padding), lrp retries
    with only the batch dim free, then with the exact shape; the graph's notes say which."""
    import torch._export.converter as converter

    from lrpcli.engine.capture import torchscript_conversion

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    scripted = torch.jit.trace(model, torch.randn(2, 3, 6, 6))
    x = torch.randn(3, 3, 6, 6)
    real = converter.TS2EPConverter.convert
    refused: list[str] = []

    def convert(self):
        import torch.export._trace as trace

        mode = "static" if self.sample_args[0].shape[0] == 3 else "dynamic" if trace._export.__name__ == "_export" else "batch"
        if mode in refuse:
            refused.append(mode)
            raise RuntimeError(f"refused the {mode} conversion")
        return real(self)

    monkeypatch.setattr(converter.TS2EPConverter, "convert", convert)
    for refuse, note, dynamic in ((set(), None, True), ({"dynamic"}, "only its batch size free", True), ({"dynamic", "batch"}, "exactly inputs shaped (3, 3, 6, 6)", False)):
        refused.clear()
        program, said = torchscript_conversion(scripted, x)
        assert refused == sorted(refuse, key=["dynamic", "batch"].index)
        assert (said is None) if note is None else note in said
        graph = capture(program, x)
        assert graph.dynamic_batch == dynamic
        torch.testing.assert_close(graph(x), model(x))


class _ShiftMask(nn.Module):
    """torchvision Swin's shifted-window mask: x.new_zeros, filled in place through slices, then compared."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        mask = x.new_zeros((4, 4))
        count = 0
        for h in ((0, 2), (2, 4)):
            for w in ((0, 1), (1, 4)):
                mask[h[0] : h[1], w[0] : w[1]] = count
                count += 1
        mask = mask.view(16)[:4]
        mask = mask.unsqueeze(1) - mask.unsqueeze(0)
        mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        return (self.lin(x) + mask).softmax(-1).sum(1) @ self.lin.weight


def test_a_mask_the_model_builds_and_fills_in_place_is_folded_with_its_fills():
    torch.manual_seed(0)
    model = _ShiftMask().double().eval()
    weight = model.lin.weight.detach().clone()
    x = torch.randn(3, 4, 4, dtype=torch.float64)
    graph = capture(model, x)
    torch.testing.assert_close(graph(x), model(x), rtol=0, atol=1e-12)  # without the fills: -100 is missing
    assert all(node.op != "new_zeros" for node in graph.nodes)
    torch.testing.assert_close(model.lin.weight, weight, rtol=0, atol=0)  # folding wrote into nothing of the model's
    result = explain(model, x, "attnlrp", target=0)
    assert torch.isfinite(result.relevance).all()
