"""Registries: every registered name is tested the day it is added."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrpcli import ConfigError, explain
from lrpcli.engine.passes.canonizers import CANONIZERS
from lrpcli.engine.composite_yaml import builtin_names
from lrpcli.registry import Registry
from lrpcli.engine.rules import RULES, make_rule


class Mixed(nn.Module):
    """Conv, LayerNorm, attention (Q K^T, softmax, A V), a sigmoid gate and a linear head in one small net."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.qkv = nn.Linear(8, 24)
        self.gate = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = torch.relu(self.conv(x)).reshape(x.shape[0], 4, 8)
        q, k, v = self.qkv(self.norm(tokens)).chunk(3, dim=-1)
        attended = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
        gated = attended * torch.sigmoid(self.gate(attended))
        return self.head(gated.mean(1))


#: for each transformer kind, two rules whose results must differ
ALTERNATIVES = {
    "layernorm": ("epsilon", "pass"),
    "product": ("uniform", "signal"),
    "softmax": ("taylor", "constant"),
    # (guided_backprop and deconvnet agree on LRP relevance: a ReLU's zero outputs get none from above)
    "elementwise": ("beta_smooth", "deconvnet"),
}


@pytest.mark.parametrize("name", [n for n in RULES.names() if "conv" not in RULES.get(n).kinds])
def test_every_transformer_rule_runs_on_its_kind_and_differs_from_another(name):
    torch.manual_seed(0)
    model, x = Mixed().eval(), torch.randn(2, 2, 4, 4)
    kind = RULES.get(name).kinds[0]
    uniform = {"match": {"type": "product"}, "rule": "uniform"}  # so that relevance reaches the softmax
    result = explain(model, x, {"rules": [{"match": {"type": kind}, "rule": name}, uniform]})
    assert result.relevance.shape == x.shape
    assert torch.isfinite(result.relevance).all()
    assert result.relevance.abs().sum() > 0
    other = next(rule for rule in ALTERNATIVES[kind] if rule != name)
    alternative = explain(model, x, {"rules": [{"match": {"type": kind}, "rule": other}, uniform]})
    assert not torch.allclose(result.relevance, alternative.relevance)


@pytest.mark.parametrize("name", [n for n in RULES.names() if "conv" in RULES.get(n).kinds])
def test_every_rule_runs_on_conv_and_linear_layers_and_differs_from_another(name):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2 * 4 * 4), nn.ReLU(), nn.Linear(32, 3)
    ).eval()
    x = torch.randn(2, 2, 4, 4)
    spec = {"rules": [{"match": {"type": ["conv", "linear"], "name": ["0", "3"]}, "rule": name}, {"match": {"type": "linear"}, "rule": "epsilon"}]}
    result = explain(model, x, spec)
    assert result.relevance.shape == x.shape
    assert torch.isfinite(result.relevance).all()
    assert result.relevance.abs().sum() > 0
    if name != "epsilon":
        other = explain(model, x, {"rules": [{"match": {"type": ["conv", "linear"]}, "rule": "epsilon"}]})
        if name not in ("z", "norm"):  # LRP-0 and norm are epsilon up to the stabiliser
            assert not torch.allclose(result.relevance, other.relevance)


@pytest.mark.parametrize("name", RULES.names())
def test_every_rule_has_a_formula_and_documented_params(name):
    cls = RULES.get(name)
    assert cls.formula and cls.name == name
    rule = make_rule(name)
    assert set(rule.values) == set(cls.params)
    assert all(spec.help for spec in cls.params.values())


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_composite_runs_and_conserves_roughly_on_a_bias_free_net(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3, bias=False)).eval()
    x = torch.rand(2, 3, 4, 4)
    result = explain(model, x, name, target=0)
    logits = result.outputs[:, 0]
    assert torch.isfinite(result.relevance).all()
    if name in ("lrp_0", "epsilon"):
        torch.testing.assert_close(result.relevance.sum((1, 2, 3)), logits, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", CANONIZERS.names())
def test_every_canonizer_keeps_the_model_function(name, small_vgg_bn):
    from lrpcli import capture

    model = nn.Sequential(small_vgg_bn, nn.Softmax(dim=1)).eval()
    x = torch.randn(2, 3, 16, 16)
    graph = capture(model, x)
    changed = CANONIZERS.get(name)(graph)
    expected = small_vgg_bn(x) if name == "strip_softmax" else model(x)
    torch.testing.assert_close(changed(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("registry", [RULES, CANONIZERS])
def test_listing_is_sorted(registry):
    assert registry.names() == sorted(registry.names())


def test_registering_a_name_twice_is_an_error():
    registry: Registry[int] = Registry("thing")
    registry.register("one", 1)
    with pytest.raises(ValueError, match="twice"):
        registry.register("one", 2)
    with pytest.raises(ValueError, match="not canonical"):
        registry.register("Two-Words", 2)


def test_a_miss_suggests_the_nearest_names():
    with pytest.raises(ConfigError) as info:
        RULES.resolve("gamme")
    assert "did you mean 'gamma'" in str(info.value)


@pytest.mark.parametrize("spelling, name", [("alpha-beta", "alpha_beta"), ("Z-Plus", "zplus"), ("lrp-0", "z"), ("w-square", "wsquare")])
def test_rule_spellings(spelling, name):
    assert RULES.resolve(spelling) == name


def test_the_rules_listing_lrp_rules_prints_is_the_registry_s():
    """`lrp rules` prints lrpcli/engine/rules/rules.txt (no torch to import); it must say what the registry says."""
    from pathlib import Path

    from click.testing import CliRunner

    from lrpcli.cli import main
    from lrpcli.engine.rules import rules_text

    listing = Path(__file__).resolve().parents[1] / "lrpcli" / "engine" / "rules" / "rules.txt"
    assert listing.read_text(encoding="utf-8") == rules_text(), "run `python -m lrpcli.engine.rules` to write it again"
    assert CliRunner().invoke(main, ["rules"]).output == rules_text()


def test_the_composites_listing_lrp_composites_prints_is_the_built_ins():
    from pathlib import Path

    from click.testing import CliRunner

    from lrpcli.cli import main
    from lrpcli.engine.listings import composites_text

    listing = Path(__file__).resolve().parents[1] / "lrpcli" / "engine" / "rules" / "composites.txt"
    assert listing.read_text(encoding="utf-8") == composites_text(), "run `python -m lrpcli.engine.rules` to write it again"
    assert CliRunner().invoke(main, ["composites"]).output == composites_text()
