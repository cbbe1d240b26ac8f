"""A captured graph that computes something else than its model is refused at capture (issue 27).

capture() runs the model's own forward once on (two samples of) the capture example and compares the graph's
outputs with it: a graph that differs by more than rounding is a ModelError naming the largest difference, where it
is and what to do; float32 rounding of folded constants (batch-norm as a scale and a shift) passes. ProphetNet's
n-gram mask, written in place into a tensor the model builds (``(ones * min)[i].triu_(1)``), was folded out of place,
its writes lost: the graph's logits were 1e-2 from the model's (benchmarks/hf_zoo_results.md).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpcli
from lrpcli.engine import builder
from lrpcli.engine.capture import capture, export_module
from lrpcli.engine.explainer import Explainer
from lrpcli.errors import ModelError


class Counted(nn.Module):
    """Counts the forwards it runs on real tensors (torch.export traces it with fake ones)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.eager_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if type(x) is torch.Tensor:
            self.eager_calls += 1
        return self.inner(x)


def bn_cnn() -> nn.Module:
    """A float32 CNN whose batch-norms have running statistics far from (0, 1): folding them into one scale and
    shift per channel rounds differently from the model's batch_norm."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5), nn.BatchNorm1d(5),
    )
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels) * 3)
            module.running_var.copy_(torch.rand(channels) * 5 + 1e-3)
            module.weight.data.copy_(torch.randn(channels))
            module.bias.data.copy_(torch.randn(channels))
    return net.eval()


def mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def as_source(model: nn.Module, x: torch.Tensor, source: str):
    if source == "module":
        return model
    if source == "torchscript":
        return torch.jit.trace(model, x)
    return torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))


@pytest.fixture
def constants_off_by_one_percent(monkeypatch):
    """Every weight the graph builder reads from the model is 1 % larger: a capture that computes something else."""
    real = builder._get_attr

    def wrong(gm, target):
        value = real(gm, target)
        return value * 1.01 if isinstance(value, torch.Tensor) and target.endswith("weight") else value

    monkeypatch.setattr(builder, "_get_attr", wrong)


@pytest.mark.parametrize("source", ["module", "torchscript", "exported_program"])
def test_a_graph_made_wrong_is_refused_with_the_difference(constants_off_by_one_percent, source):
    x = torch.randn(3, 6)
    model = as_source(mlp(), x, source)
    with pytest.raises(ModelError) as caught:
        capture(model, x)
    message, hint = caught.value.message, caught.value.hint
    assert "the captured graph computes something else than the model" in message
    assert "largest difference" in message and "output [" in message
    assert "report" in hint and "--no-cache" in hint


def test_the_refusal_reaches_explain(constants_off_by_one_percent):
    with pytest.raises(ModelError, match="computes something else than the model"):
        lrpcli.explain(bn_cnn(), torch.randn(2, 3, 8, 8), "epsilon_plus_flat")


def test_a_normal_model_is_checked_once_per_capture_not_per_batch():
    model = Counted(mlp())
    explainer = Explainer(model, "epsilon")
    for _ in range(3):
        explainer.explain(torch.randn(4, 6))
    assert model.eager_calls == 1  # the check's one forward; the graph is captured once


@pytest.mark.parametrize("source", ["module", "torchscript", "exported_program"])
def test_a_batchnorm_folded_float32_cnn_passes(source):
    x = torch.randn(4, 3, 8, 8)
    net = bn_cnn()
    model = Counted(net) if source == "module" else as_source(net, x, source)
    graph = capture(model, x)
    if source == "module":
        assert model.eager_calls == 1  # checked, and passed
    with torch.no_grad():
        own = net(x)
    # what the check allows (1e-4 of the largest |logit|) is far above the rounding of the folded batch-norms
    scale = max(float(own.abs().max()), 1.0)
    assert float((graph(x) - own).abs().max()) < 1e-5 * scale
    result = lrpcli.explain(model, x, "epsilon_plus_flat")  # canonized (batch-norms folded into the convs)
    torch.testing.assert_close(result.outputs, own, rtol=1e-5, atol=1e-5 * scale)


class InPlaceMask(nn.Module):
    """ProphetNet's n-gram mask in small: a tensor the model builds, written in place through a view."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(2, 6, 6) * -100.0
        mask[0].triu_(1)
        mask[1].fill_diagonal_(0.0)
        return (self.lin(x)[:, None, :] + mask[0] + mask[1]).relu().sum(-1)


def test_writes_into_a_tensor_the_model_builds_are_kept():
    torch.manual_seed(2)
    model, x = InPlaceMask().eval(), torch.randn(3, 6)
    graph = capture(model, x)  # refused by the check before the builder kept the writes
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=0, atol=0)


def test_a_buffer_of_the_model_is_never_written_by_the_builder():
    class Filled(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.randn(6, 6))

        def forward(self, x):
            self.table[0].fill_(1.0)  # the model's own forward writes its buffer; the graph builder must not
            return x @ self.table

    torch.manual_seed(3)
    model = Filled().eval()
    before = model.table.clone()
    x = torch.randn(2, 6)
    builder.from_graph_module(export_module(model, x).module(), "export")
    assert torch.equal(model.table, before)


def test_a_model_whose_own_forward_fails_is_noted_not_refused():
    class ExportOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            if not torch.compiler.is_exporting():
                raise RuntimeError("runs only under torch.export")
            return self.lin(x)

    graph = capture(ExportOnly().eval(), torch.randn(2, 4))
    assert any("not checked against the model" in note and "runs only under torch.export" in note for note in graph.notes)


def test_prophetnet_causal_lm_graph_is_the_model_and_explains_as_the_oracle():
    """The case that showed it (benchmarks/hf_zoo_results.md): its n-gram mask is ``ones * finfo.min`` written in
    place through views. Float64, tiny: the graph's logits equal the model's and AttnLRP equals the modified-gradient
    oracle (tests/gradient_oracle.py, which runs torch.export's own graph, in-place writes and all). Its relevance
    sums to 1e-3 of the logit or less on both sides: this random model's logit is mostly its constants' share."""
    transformers = pytest.importorskip("transformers")
    from gradient_oracle import embedding_relevance
    from test_more_ops import _Logits

    torch.manual_seed(12)
    config = transformers.ProphetNetConfig(
        vocab_size=40, hidden_size=16, num_encoder_layers=2, num_decoder_layers=2, num_encoder_attention_heads=2,
        num_decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=32, ngram=2,
        num_buckets=8, relative_max_distance=16,
    )
    model = _Logits(transformers.ProphetNetForCausalLM(config), last=True).double().eval()
    x = torch.randint(3, 40, (2, 6))
    with torch.no_grad():
        own = model(x)
    result = lrpcli.explain(model, x, "attnlrp", target=1, params={"epsilon": 0.0, "stabilizer": 0.0})
    assert (result.outputs - own).abs().max() <= 1e-12 * own.abs().max()
    expected = embedding_relevance(model, x, 1, "attnlrp")
    assert (result.relevance - expected).abs().max() <= 1e-9 * expected.abs().max()


def test_equal_infinities_and_nans_agree_and_one_sided_ones_do_not():
    """A row with an infinite feature gives -inf in the graph and in the model (tests/test_hostile_inputs.py's CSV
    row): that is agreement, not a difference of NaN."""
    from lrpcli.engine.capture import _largest_gap

    inf, nan = float("inf"), float("nan")
    same = torch.tensor([[-inf, 1.0, nan], [inf, 2.0, 3.0]])
    assert _largest_gap(same, same.clone())[0] == 0.0
    assert _largest_gap(torch.tensor([[-inf, 1.0]]), torch.tensor([[0.0, 1.0]]))[0] == inf
    assert _largest_gap(torch.tensor([[nan, 1.0]]), torch.tensor([[0.0, 1.0]]))[0] == inf
