"""The public API: targets, initial relevance, outputs, per-layer totals, input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrpcli import Explainer, InputError, UsageError, explain
from lrpcli.sources.architectures import MLP


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return MLP(6, (8,), 4).eval()


def test_result_shapes_and_default_target_is_argmax(mlp):
    x = torch.randn(5, 6)
    result = explain(mlp, x)
    assert result.relevance.shape == x.shape
    torch.testing.assert_close(result.outputs, mlp(x))
    assert result.targets.dtype == torch.long
    assert torch.equal(result.targets, mlp(x).argmax(1))
    assert not result.relevance.requires_grad


@pytest.mark.parametrize("target", [2, torch.tensor(2), [2, 2, 2]])
def test_target_as_int_tensor_or_list(mlp, target):
    x = torch.randn(3, 6)
    result = explain(mlp, x, "epsilon", target=target)
    assert result.targets.tolist() == [2, 2, 2]
    expected = torch.zeros(3, 4)
    expected[:, 2] = mlp(x)[:, 2].detach()
    torch.testing.assert_close(result.initial, expected)


def test_per_sample_targets_explain_different_classes(mlp):
    x = torch.randn(1, 6).repeat(4, 1)
    result = explain(mlp, x, "epsilon", target=torch.arange(4))
    sums = result.relevance.sum(1)
    assert len({round(float(s), 6) for s in sums}) == 4


def test_one_hot_init_is_the_value_init_divided_by_the_logit(mlp):
    x = torch.randn(3, 6)
    value = explain(mlp, x, "epsilon", target=1)
    one_hot = explain(mlp, x, "epsilon", target=1, init="one-hot")
    logit = value.outputs[:, 1:2]
    torch.testing.assert_close(one_hot.relevance * logit, value.relevance, rtol=1e-4, atol=1e-6)


def test_bad_targets_and_init_are_usage_errors(mlp):
    x = torch.randn(2, 6)
    with pytest.raises(UsageError, match="out of range"):
        explain(mlp, x, target=4)
    with pytest.raises(UsageError, match="2 targets"):
        explain(mlp, torch.randn(3, 6), target=[0, 1])
    with pytest.raises(UsageError, match="integers"):
        explain(mlp, x, target=0.5)
    with pytest.raises(UsageError, match="one-hot"):
        explain(mlp, x, init="onehot")


def test_bad_inputs_are_input_errors(mlp):
    with pytest.raises(InputError, match="floating-point"):
        explain(mlp, torch.ones(2, 6, dtype=torch.uint8))
    with pytest.raises(InputError, match="torch.Tensor"):
        explain(mlp, [[0.0] * 6])


def test_regression_outputs_explain_the_single_unit():
    torch.manual_seed(0)
    for head in (nn.Linear(8, 1), nn.Sequential(nn.Linear(8, 1), nn.Flatten(0))):
        model = nn.Sequential(nn.Linear(5, 8, bias=False), nn.ReLU(), head).double().eval()
        if isinstance(head, nn.Linear):
            nn.init.zeros_(head.bias)
        else:
            nn.init.zeros_(head[0].bias)
        x = torch.randn(4, 5, dtype=torch.float64)
        result = explain(model, x, "lrp_0")
        assert result.targets.tolist() == [0, 0, 0, 0]
        torch.testing.assert_close(result.relevance.sum(1), model(x).reshape(-1), rtol=1e-10, atol=1e-12)


def test_layer_relevance_records_every_layer_in_graph_order(mlp):
    x = torch.randn(3, 6)
    result = explain(mlp, x, "epsilon", layer_relevance=True)
    modules = [layer.module for layer in result.layers.values()]
    assert modules == ["layers.0", "layers.1", "layers.2"]
    top = list(result.layers.values())[-1]
    torch.testing.assert_close(top.relevance_out, result.initial.sum(1))
    first = list(result.layers.values())[0]
    torch.testing.assert_close(first.relevance_in, result.relevance.sum(1))
    assert [layer.rule for layer in result.layers.values()] == ["epsilon", "pass", "epsilon"]


def test_explainer_captures_once_and_handles_any_batch_size(mlp):
    explainer = Explainer(mlp, "epsilon_plus")
    for batch in (1, 3, 8):
        x = torch.randn(batch, 6)
        a = explainer.explain(x).relevance
        b = explain(mlp, x, "epsilon_plus").relevance
        torch.testing.assert_close(a, b)
    assert len(explainer._prepared) == 1


def test_changed_weights_are_seen_by_the_next_explanation(mlp):
    x = torch.randn(2, 6)
    before = explain(mlp, x, "epsilon").relevance
    with torch.no_grad():
        mlp.layers[0].weight.mul_(-1)  # in place: the captured graph shares this storage
        mlp.layers[2].weight = nn.Parameter(-mlp.layers[2].weight)  # a new tensor: the cache must notice
    after = explain(mlp, x, "epsilon").relevance
    twin = MLP(6, (8,), 4).eval()  # a new object: captured afresh, no cache involved
    twin.load_state_dict(mlp.state_dict())
    fresh = explain(twin, x, "epsilon").relevance
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh)


def test_the_model_is_left_in_its_training_mode(mlp):
    mlp.train()
    explain(mlp, torch.randn(2, 6))
    assert mlp.training


def test_float64_inputs_compute_in_float64(mlp):
    x = torch.randn(2, 6, dtype=torch.float64)
    result = explain(mlp, x)
    assert result.relevance.dtype == torch.float64 and result.outputs.dtype == torch.float64


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat", "lrp_0"])
def test_per_layer_absorption_adds_up_to_the_total_gap_and_is_explained(composite, small_resnet):
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)  # float32 weights, float64 run
    result = explain(small_resnet, x, composite, layer_relevance=True)
    gap = result.initial.sum(1) - result.relevance.flatten(1).sum(1)
    layers = result.layers.values()
    torch.testing.assert_close(sum(layer.absorbed for layer in layers), gap, rtol=0, atol=1e-12)
    explained = sum((layer.bias if layer.bias is not None else 0) + (layer.stabilizer if layer.stabilizer is not None else 0) for layer in layers)
    torch.testing.assert_close(explained, gap, rtol=0, atol=1e-12)  # biases and stabilisers explain all of it
    assert gap.abs().min() > 1e-3  # the net has biases: something was absorbed


def test_relevance_lost_at_zero_denominators_is_reported_as_other():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
        model[1].weight.copy_(torch.tensor([[1.0, 1.0]]))
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)  # hidden unit 0 is exactly 0
    # flat on top hands relevance to the zero unit too; LRP-0 below cannot divide it and loses it
    spec = {"rules": [{"match": {"name": "1"}, "rule": "flat"}, {"match": {"name": "0"}, "rule": "z"}]}
    result = explain(model, x, spec, init="one-hot", layer_relevance=True)
    bottom, top = result.layers["linear"], result.layers["linear_1"]
    assert float(top.absorbed) == pytest.approx(0.0, abs=1e-5)  # flat: only its tiny stabiliser
    assert float(bottom.other) == pytest.approx(0.5)  # half the relevance sat on the zero unit
    assert float(result.relevance.sum()) == pytest.approx(0.5, abs=1e-5)


def test_the_token_embeddings_relevance_is_returned_on_request():
    """A bag of embeddings with a bias-free linear head: each hidden unit's relevance is E[id, h] * W[target, h]."""
    torch.manual_seed(0)
    embedding, head = torch.nn.Embedding(12, 5), torch.nn.Linear(5, 3, bias=False)

    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding, self.head = embedding, head

        def forward(self, ids):
            return self.head(self.embedding(ids).sum(1))

    model = Bag().double().eval()
    ids = torch.tensor([[1, 4, 4, 7], [2, 3, 0, 11]])
    result = explain(model, ids, "lrp_0", target=2, embedding_relevance=True)
    expected = embedding.weight.detach()[ids] * head.weight.detach()[2]
    torch.testing.assert_close(result.embedding, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result.relevance, expected.sum(-1), rtol=1e-12, atol=1e-12)
    assert explain(model, ids, "lrp_0", target=2).embedding is None


def test_relevance_at_named_layers_is_returned_and_conserves_through_a_bias_free_net():
    """layers=[...]: each map is the relevance at that layer's output; with LRP-0 on a bias-free ReLU net every
    layer's map sums to the logit, and the first layer's output map equals gradient x activation there."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 8, bias=False), torch.nn.ReLU(), torch.nn.Linear(8, 5, bias=False), torch.nn.ReLU(), torch.nn.Linear(5, 3, bias=False)
    ).double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    result = explain(model, x, "lrp_0", target=1, layers=["0", "2"])
    assert set(result.layer_maps) == {"0", "2"}
    for name in ("0", "2"):
        torch.testing.assert_close(result.layer_maps[name].sum(1), result.outputs[:, 1], rtol=1e-10, atol=1e-12)
    hidden = model[0](x).detach().requires_grad_(True)
    model[1:](hidden)[:, 1].sum().backward()
    torch.testing.assert_close(result.layer_maps["0"], hidden * hidden.grad, rtol=1e-10, atol=1e-12)
    with pytest.raises(UsageError, match="no layer 'nope'"):
        explain(model, x, "lrp_0", layers=["nope"])


def test_the_api_names_common_mistakes():
    from lrpcli import ModelError
    from lrpcli.sources.architectures import MiniVGG

    model = MiniVGG(width=4).eval()
    with pytest.raises(UsageError, match="class indices, not names"):
        explain(model, torch.rand(1, 3, 32, 32), target="cat")
    with pytest.raises(UsageError, match="not an int"):
        explain(model, torch.rand(1, 3, 32, 32), target={"a": 1})
    with pytest.raises(ModelError) as caught:
        explain(model, torch.rand(3, 32, 32))  # one image without its batch dimension
    assert "x[None]" in caught.value.hint


def test_the_result_draws_the_heatmap_lrp_explain_writes(tmp_path):
    """Explanation.heatmap(): red where the channel-summed relevance is positive, blue where negative, white at 0."""
    import numpy as np
    from PIL import Image

    from lrpcli.sources.architectures import MiniVGG

    torch.manual_seed(0)
    result = explain(MiniVGG(width=4).eval(), torch.rand(2, 3, 32, 32), "epsilon")
    image = result.heatmap(1, path=tmp_path / "h.png")
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "h.png").convert("RGB")), image)
    summed = result.relevance[1].sum(0).numpy()
    strongest = np.unravel_index(np.abs(summed).argmax(), summed.shape)
    r, g, b = image[strongest].astype(int)
    assert (r > b) if summed[strongest] > 0 else (b > r)
    with pytest.raises(UsageError):
        explain(torch.nn.Linear(4, 2), torch.rand(1, 4), "epsilon").heatmap()


def test_explain_in_a_loop_prepares_the_graph_once_per_composite(monkeypatch):
    from lrpcli.engine import explainer as engine_module
    from lrpcli.sources.architectures import MiniVGG

    calls = []
    original = engine_module.canonize
    monkeypatch.setattr(engine_module, "canonize", lambda *a, **k: calls.append(1) or original(*a, **k))
    model, x = MiniVGG(width=4).eval(), torch.rand(1, 3, 32, 32)
    first = explain(model, x, "epsilon")
    for _ in range(3):
        again = explain(model, x, "epsilon")
    assert len(calls) == 1
    torch.testing.assert_close(again.relevance, first.relevance, rtol=0, atol=0)
    other = explain(model, x, "epsilon", params={"epsilon": 0.5})  # another composite: prepared anew
    assert len(calls) == 2 and not torch.equal(other.relevance, first.relevance)


def test_a_model_whose_output_batch_differs_from_its_input_batch_is_refused():
    """Issue 27: a model that mixes the samples (a mean over the batch) was explained without a word."""
    import pytest
    from torch import nn

    from lrpcli import explain
    from lrpcli.errors import ModelError

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x).mean(0, keepdim=True)

    torch.manual_seed(0)
    with pytest.raises(ModelError, match=r"returns \(1, 3\) for a batch of 3 input"):
        explain(Pooled().eval(), torch.rand(3, 4), "epsilon")


def test_a_model_converted_in_place_is_captured_again():
    """model.to(dtype) swaps its parameters' data in place (same tensors, same versions): the graph captured before
    must not be reused. A BERT explained in float32, then converted to bfloat16, failed inside the old graph
    ('expected m1 and m2 to have the same dtype'); found by benchmarks/gpu.py."""
    transformers = pytest.importorskip("transformers")
    from lrpcli import Explainer

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=16, num_labels=3)

    class Embeds(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = transformers.BertForSequenceClassification(config).eval()

        def forward(self, embeds):
            return self.model(inputs_embeds=embeds).logits

    model = Embeds().eval()
    x = torch.rand(2, 5, 16)
    first = Explainer(model, "attnlrp").explain(x)
    model.to(torch.bfloat16)
    again = Explainer(model, "attnlrp").explain(x.bfloat16())
    assert again.relevance.dtype == torch.bfloat16 and torch.isfinite(again.relevance.float()).all()
    assert torch.allclose(again.outputs.float(), first.outputs, atol=0.05)


def test_capture_puts_each_submodule_back_in_its_own_mode():
    """A wrapper in training mode around a model in eval mode: capturing must not switch the inner model to training
    (it did: ``model.train(was_training)`` on the wrapper set every submodule, so dropout came on in the model)."""
    from lrpcli.engine.capture import export_module

    inner = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5)).eval()
    wrapper = torch.nn.Sequential(inner)  # training mode: nn.Module's default
    assert wrapper.training and not inner.training
    export_module(wrapper, torch.randn(2, 4))
    assert wrapper.training and not inner.training and not inner[1].training
