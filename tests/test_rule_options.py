"""Rule options the peers have (issue 27, item 1): ``zero_params: [bias]`` and ``stabilizer_mode``.

- ``zero_params: [bias]``: the bias neither takes nor gives relevance; the modified forward's denominator is
  computed without it. zennit 0.5.1's ``zero_params="bias"`` (``zennit.core.ParamMod``), captum's
  ``set_bias_to_zero``, iNNvestigate's ``*IgnoreBias`` rules.
- ``stabilizer_mode``: how the stabiliser ``e`` makes a denominator ``z`` safe. zennit 0.5.1's
  ``zennit.core.stabilize`` (read from its source)::

      sign = (z == 0) + z.sign()                                  # sign(0) = +1
      e    = e * mean(z**2 over all dims but the batch's) ** .5   # norm_scale=True
      out  = sign * |z|.clip(min=e)                               # clip=True
      out  = z + sign * e                                         # clip=False

  and LXT 2.1's unsigned epsilon (``lxt.explicit.functional._stabilize``: ``z + e``).

Every case runs lrpcli and the reference side by side in float64 on the same small nets and compares to
``max|ours - ref| <= 1e-10 * max|ref|``; each also checks that the option changes the result, so the comparison
could fail.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from lrpcli import ConfigError, explain
from lrpcli.engine.composite_yaml import json_schema, load_composite
from lrpcli.engine.rules import make_rule, rules_text

try:  # tests/ as a package or as a plain folder on sys.path (pytest's default)
    from . import zennit_support as zs
except ImportError:  # pragma: no cover
    import zennit_support as zs

RTOL = 1e-10
MODES = ("sign", "clip", "norm_scale", "norm_scale_clip", "unsigned")
#: every rule with weights: (lrpcli name, its stabiliser's parameter)
WEIGHTED = {
    "epsilon": "epsilon",
    "z": "stabilizer",
    "zplus": "stabilizer",
    "alpha_beta": "stabilizer",
    "gamma": "stabilizer",
    "flat": "stabilizer",
    "wsquare": "stabilizer",
    "zbox": "stabilizer",
}
LOW, HIGH = -3.0, 3.0
#: stabilisers large enough that each mode moves the result (clip: |z| below eps are raised to it)
EPS = {"sign": 0.5, "clip": 0.5, "norm_scale": 0.05, "norm_scale_clip": 1.0, "unsigned": 0.5}


def conv_net() -> nn.Sequential:
    """Two convs and two linears, biases of order one (so leaving them out matters), float64."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 3),
    )
    with torch.no_grad():
        for module in model:
            if hasattr(module, "bias"):
                module.bias.uniform_(-0.5, 0.5)
    return model.double().eval()


def linear_net() -> nn.Sequential:
    """Three linears; weights of unit variance per output, so the inputs (not the biases) drive the logits."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for module in model:
            if hasattr(module, "bias"):
                module.weight.normal_(0, module.weight.shape[1] ** -0.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.double().eval()


def inputs(model: nn.Sequential) -> torch.Tensor:
    torch.manual_seed(2)
    shape = (3, 2, 6, 6) if isinstance(model[0], nn.Conv2d) else (3, 5)
    return torch.randn(shape, dtype=torch.float64).clamp(LOW + 0.5, HIGH - 0.5)  # signed, inside z^B's box


def lrpcli_spec(rule: str, options: dict) -> dict:
    """``rule`` with ``options`` on every conv/linear layer (z^B on the first only, epsilon with the options above)."""
    if rule == "zbox":
        return {
            "rules": [
                {"match": {"first": True}, "rule": "zbox", "low": LOW, "high": HIGH, **_renamed(options, "stabilizer")},
                {"match": {"type": ["conv", "linear"]}, "rule": "epsilon", **_renamed(options, "epsilon")},
            ]
        }
    return {"rules": [{"match": {"type": ["conv", "linear"]}, "rule": rule, **_renamed(options, WEIGHTED[rule])}]}


def _renamed(options: dict, stabiliser: str) -> dict:
    """The tests' ``eps`` under the rule's own name for it (epsilon or stabilizer)."""
    options = dict(options)
    if "eps" in options:
        options[stabiliser] = options.pop("eps")
    return options


def zennit_stabilizer(eps: float, mode: str):
    from zennit.core import Stabilizer

    if mode == "unsigned":
        return lambda z: z + eps  # LXT's form, as zennit's callable stabiliser
    return Stabilizer(epsilon=eps, clip=mode.endswith("clip"), norm_scale=mode.startswith("norm_scale"))


def zennit_rule(rule: str, eps: float, mode: str, zero_params):
    from zennit import rules as zr

    stab = zennit_stabilizer(eps, mode)
    kw = {"zero_params": zero_params}
    return {
        "epsilon": lambda: zr.Epsilon(epsilon=stab, **kw),
        "z": lambda: zr.Epsilon(epsilon=stab, **kw),
        "zplus": lambda: zr.ZPlus(stabilizer=stab, **kw),
        "alpha_beta": lambda: zr.AlphaBeta(alpha=2.0, beta=1.0, stabilizer=stab, **kw),
        "gamma": lambda: zr.Gamma(gamma=0.25, stabilizer=stab, **kw),
        "flat": lambda: zr.Flat(stabilizer=stab, **kw),
        "wsquare": lambda: zr.WSquare(stabilizer=stab, **kw),
        "zbox": lambda: zr.ZBox(low=LOW, high=HIGH, stabilizer=stab, **kw),
    }[rule]()


def zennit_relevance(model, x, targets, rule: str, eps: float, mode: str, zero_params) -> torch.Tensor:
    zs.require_zennit()
    from zennit.composites import LayerMapComposite, SpecialFirstLayerMapComposite
    from zennit.rules import Pass

    weighted = (nn.Conv2d, nn.Linear)
    activations = [(nn.ReLU, Pass())]  # lrpcli passes relevance through element-wise nonlinearities
    if rule == "zbox":
        layer_map = activations + [(t, zennit_rule("epsilon", eps, mode, zero_params)) for t in weighted]
        first_map = [(t, zennit_rule("zbox", eps, mode, zero_params)) for t in weighted]
        composite = SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first_map)
    else:
        composite = LayerMapComposite(layer_map=activations + [(t, zennit_rule(rule, eps, mode, zero_params)) for t in weighted])
    with torch.no_grad():
        logits = model(x)
    _, relevance = zs.zennit_lrp(model, x, composite, zs.initial_relevance(logits, targets, "value"))
    return relevance


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.abs().max().item()
    assert scale > 0 and torch.isfinite(expected).all(), f"{what}: the reference is degenerate"
    worst = (actual - expected).abs().max().item()
    assert worst <= RTOL * scale, f"{what}: max|ours - ref| = {worst:.3g} > {RTOL:g} * {scale:.3g}"


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > 1e-4 * b.abs().max().item()


def run(model, x, rule: str, lowest: bool = False, **options):
    """``lowest``: explain the smallest (negative) logit, where the sign of the stabiliser matters."""
    targets = model(x).argmin(1) if lowest else model(x).argmax(1)
    return explain(model, x, lrpcli_spec(rule, options), target=targets), targets


# --------------------------------------------------------------------------- zero_params: [bias] against zennit


@pytest.mark.parametrize("net", [conv_net, linear_net], ids=["conv", "linear"])
@pytest.mark.parametrize("rule", list(WEIGHTED))
def test_zero_params_bias_matches_zennit(rule, net):
    model = net()
    x = inputs(model)
    eps = 0.0 if rule == "z" else 1e-6
    ours, targets = run(model, x, rule, eps=eps, zero_params=["bias"])
    expected = zennit_relevance(model, x, targets, rule, eps, "sign", "bias")
    assert_close(ours.relevance, expected, f"{rule} zero_params=[bias]")
    with_bias = zennit_relevance(model, x, targets, rule, eps, "sign", None)
    if rule not in ("flat", "zbox"):  # zennit's flat leaves the bias out anyway; z^B's bias terms cancel
        assert differs(expected, with_bias), f"{rule}: leaving the bias out changes nothing, the check proves nothing"


def test_zero_params_takes_a_string_too_and_composite_wide_params():
    model = conv_net()
    x = inputs(model)
    as_list, targets = run(model, x, "gamma", zero_params=["bias"])
    as_string, _ = run(model, x, "gamma", zero_params="bias")
    torch.testing.assert_close(as_string.relevance, as_list.relevance, rtol=0, atol=0)
    spec = {"params": {"zero_params": ["bias"]}, "rules": [{"match": {"type": ["conv", "linear"]}, "rule": "gamma"}]}
    wide = explain(model, x, spec, target=targets)
    torch.testing.assert_close(wide.relevance, as_list.relevance, rtol=0, atol=0)
    # the Python API: load_composite(..., zero_params=...) and make_rule
    builtin = explain(model, x, load_composite("epsilon_plus", zero_params=["bias"]), target=targets)
    plain = explain(model, x, "epsilon_plus", target=targets)
    assert differs(builtin.relevance, plain.relevance)
    assert make_rule("zplus", zero_params=["bias"]).values["zero_params"] == ("bias",)


def test_zero_params_bias_by_hand_on_a_two_layer_net():
    """LRP-0 with the bias left out, on y = w2 . relu(W1 x + b1) + b2, computed by hand.

    Formula (Bach et al. 2015 eq. 56, Montavon et al. 2019 eq. 4 with the bias term dropped from the denominator,
    as zennit's ``zero_params='bias'`` does): R_j = a_j w_jk R_k / sum_j' a_j' w_j'k.
    x = (1, 2); W1 = [[1, -1], [2, 1]], b1 = (0.5, -1): h = relu(-0.5, 3) = (0, 3); w2 = (1, 3), b2 = 2: y = 11.
    Top: z' = 1*0 + 3*3 = 9, R_h = (0, 9 * 11/9) = (0, 11). Bottom: z' = W1 x = (-1, 4); only h_2 carries
    relevance: R_x = (1*2, 2*1) * 11/4 = (5.5, 5.5), summing to y: with no bias to absorb any, LRP-0 conserves.
    With the bias (today's rule): R_h = (0, 9), R_x = (1*2, 2*1) * 9/3 = (6, 6).
    """
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
        model[0].bias.copy_(torch.tensor([0.5, -1.0]))
        model[2].weight.copy_(torch.tensor([[1.0, 3.0]]))
        model[2].bias.copy_(torch.tensor([2.0]))
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    free = explain(model, x, {"rules": [{"match": {"type": "linear"}, "rule": "z", "zero_params": ["bias"]}]}, layer_relevance=True)
    np.testing.assert_allclose(free.relevance.numpy(), [[5.5, 5.5]], rtol=1e-14)
    assert all(layer.bias is None or float(layer.bias.abs().max()) == 0 for layer in free.layers.values())
    biased = explain(model, x, {"rules": [{"match": {"type": "linear"}, "rule": "z"}]})
    np.testing.assert_allclose(biased.relevance.numpy(), [[6.0, 6.0]], rtol=1e-14)


# --------------------------------------------------------------------------- stabiliser modes against zennit / LXT


@pytest.mark.parametrize("mode", [m for m in MODES if m != "sign"])
@pytest.mark.parametrize("rule", list(WEIGHTED))
def test_stabilizer_mode_matches_zennit(rule, mode):
    """A large stabiliser, so that every mode moves the result; the smallest logit (negative) explained, so that the
    signed and unsigned forms part at the top layer."""
    model = conv_net()
    x = inputs(model)
    eps = EPS[mode]
    ours, targets = run(model, x, rule, lowest=True, eps=eps, stabilizer_mode=mode)
    expected = zennit_relevance(model, x, targets, rule, eps, mode, None)
    assert_close(ours.relevance, expected, f"{rule} stabilizer_mode={mode}")
    if mode == "unsigned" and rule in ("zplus", "flat", "wsquare"):
        return  # denominators never below 0: z + eps is z + eps*sign(z) there
    assert differs(expected, zennit_relevance(model, x, targets, rule, eps, "sign", None)), f"{rule}: {mode} is sign here"


@pytest.mark.parametrize("mode", ["clip", "unsigned"])
def test_stabilizer_mode_with_zero_params_matches_zennit(mode):
    model = conv_net()
    x = inputs(model)
    ours, targets = run(model, x, "alpha_beta", eps=0.5, stabilizer_mode=mode, zero_params=["bias"])
    assert_close(ours.relevance, zennit_relevance(model, x, targets, "alpha_beta", 0.5, mode, "bias"), f"alpha_beta {mode} no bias")


def test_unsigned_epsilon_matches_lxt():
    """LXT 2.1's explicit linear epsilon rule (its backward hands relevance down: R_in = x * W^T (R / (z + eps))),
    explaining the smallest logit, where the unsigned epsilon differs from the signed one."""
    if importlib.util.find_spec("lxt") is None:
        pytest.skip("lxt 2.1 not installed: pip install --no-deps lxt==2.1")
    from lxt.explicit.functional import linear_epsilon  # a plain autograd Function: imports patch nothing

    model = linear_net()
    x = inputs(model)
    eps = 0.5
    leaf = x.clone().requires_grad_(True)
    h = leaf
    for module in model:
        h = linear_epsilon(h, module.weight, module.bias, eps) if isinstance(module, nn.Linear) else module(h)
    targets = h.argmin(1)  # negative logits: there z + eps and z + eps*sign(z) part
    logit = h.detach().gather(1, targets[:, None])
    seed = torch.zeros_like(h).scatter_(1, targets[:, None], logit)  # its backward hands relevance down: R = logit
    h.backward(seed)
    expected = leaf.grad
    ours = explain(model, x, {"rules": [{"match": {"type": "linear"}, "rule": "epsilon", "epsilon": eps, "stabilizer_mode": "unsigned"}]}, target=targets)
    assert_close(ours.relevance, expected, "epsilon unsigned vs LXT")
    signed = explain(model, x, {"rules": [{"match": {"type": "linear"}, "rule": "epsilon", "epsilon": eps}]}, target=targets)
    assert differs(signed.relevance, expected)


# --------------------------------------------------------------------------- the ledger under each mode


LEDGER_CASES = [(rule, mode, []) for rule in WEIGHTED for mode in MODES] + [
    (rule, mode, ["bias"]) for rule in WEIGHTED for mode in ("sign", "unsigned")  # leaving the bias out: any mode will do
]


@pytest.mark.parametrize("rule, mode, zero_params", LEDGER_CASES, ids=[f"{r}-{m}{'-no-bias' if z else ''}" for r, m, z in LEDGER_CASES])
def test_ledger_accounts_for_every_mode(rule, mode, zero_params):
    """sum of input relevance + what the ledger says biases and stabilisers took == the target logit, per sample,
    and no layer loses relevance the ledger cannot name."""
    model = conv_net()
    x = inputs(model)
    spec = lrpcli_spec(rule, {"eps": EPS[mode], "stabilizer_mode": mode, "zero_params": zero_params})
    result = explain(model, x, spec, target=model(x).argmin(1), layer_relevance=True)
    logit = result.outputs.gather(1, result.targets[:, None]).squeeze(1)
    ledger = torch.zeros_like(logit)
    for layer in result.layers.values():
        for part in (layer.bias, layer.stabilizer, layer.rule_share):
            if part is not None:
                ledger = ledger + part
        assert layer.other.abs().max() <= 1e-10 * logit.abs().max(), f"{layer.module} ({layer.rule}) loses {layer.other}"
        if zero_params and layer.kind in ("conv", "linear"):
            assert layer.bias is None or layer.bias.abs().max() == 0, f"{layer.module}: a left-out bias took relevance"
    torch.testing.assert_close(result.relevance.flatten(1).sum(1) + ledger, logit, rtol=1e-10, atol=1e-12)
    stabilised = sum(layer.stabilizer.abs().sum() for layer in result.layers.values() if layer.stabilizer is not None)
    if not (mode.endswith("clip") and rule in ("flat", "wsquare")):  # their denominators never come near eps
        assert stabilised > 1e-3, "the stabilisers took nothing: the ledger check proves nothing"


def test_layernorm_epsilon_rule_takes_both_options():
    """The epsilon rule also serves layer norms: LRP-0 without the LN's bias hands down all it receives
    (sum_i x_i J_ik = y_k - b_k for the centred map, 1/sigma held), and each mode keeps the ledger whole."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 2)).double().eval()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-1, 1)
    x = torch.randn(2, 4, dtype=torch.float64)
    ln = {"match": {"type": "layernorm"}, "rule": "z", "zero_params": ["bias"]}
    rest = {"match": {"type": "linear"}, "rule": "epsilon"}
    result = explain(model, x, {"rules": [ln, rest]}, layer_relevance=True)
    norm = next(layer for layer in result.layers.values() if layer.kind == "layernorm")
    torch.testing.assert_close(norm.relevance_in, norm.relevance_out, rtol=1e-12, atol=1e-12)
    with_bias = explain(model, x, {"rules": [{**ln, "zero_params": []}, rest]}, layer_relevance=True)
    norm_b = next(layer for layer in with_bias.layers.values() if layer.kind == "layernorm")
    assert (norm_b.relevance_in - norm_b.relevance_out).abs().max() > 1e-3
    for mode in MODES:
        ln_mode = {"match": {"type": "layernorm"}, "rule": "epsilon", "epsilon": 0.3, "stabilizer_mode": mode}
        result = explain(model, x, {"rules": [ln_mode, rest]}, layer_relevance=True)
        for layer in result.layers.values():
            assert layer.other.abs().max() <= 1e-10, f"{mode}: {layer.module} loses {layer.other}"


# --------------------------------------------------------------------------- configuration: errors, schema, listing


def test_unknown_values_are_config_errors_naming_the_allowed_ones():
    with pytest.raises(ConfigError) as error:
        make_rule("epsilon", zero_params=["weight"])
    assert "bias" in str(error.value) and "weight" in str(error.value)
    with pytest.raises(ConfigError) as error:
        make_rule("gamma", stabilizer_mode="clipped")
    message = str(error.value) + str(error.value.hint)
    assert all(mode in message for mode in MODES) and "clip" in (error.value.hint or "")
    with pytest.raises(ConfigError, match="zero_params"):
        load_composite({"rules": [{"match": {"type": "conv"}, "rule": "zplus", "zero_params": [3]}]})
    with pytest.raises(ConfigError, match="stabilizer_mode"):
        load_composite({"params": {"stabilizer_mode": "sgn"}, "rules": [{"match": {"type": "conv"}, "rule": "zplus"}]})
    with pytest.raises(ConfigError, match="zero_params"):
        make_rule("pass", zero_params=["bias"])  # a rule with no bias to leave out


def test_yaml_file_names_the_line_of_a_bad_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rules:\n  - match: {type: conv}\n    rule: gamma\n    stabilizer_mode: clamp\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_composite(str(path))
    assert error.value.line == 4
    path.write_text("rules:\n  - match: {type: conv}\n    rule: gamma\n    stabilizer_mode: clip\n    zero_params: [bias]\n", encoding="utf-8")
    rule = load_composite(str(path)).make_rule(load_composite(str(path)).entries[0])
    assert rule.values["stabilizer_mode"] == "clip" and rule.values["zero_params"] == ("bias",)


def test_schema_and_listing_show_both_options():
    schema = json_schema()
    entries = {item["properties"]["rule"]["const"]: item for item in schema["properties"]["rules"]["items"]["oneOf"]}
    for rule in WEIGHTED:
        properties = entries[rule]["properties"]
        assert properties["stabilizer_mode"]["enum"] == list(MODES)
        assert "bias" in str(properties["zero_params"])
    params = schema["properties"]["params"]["properties"]
    assert params["stabilizer_mode"]["enum"] == list(MODES) and "bias" in str(params["zero_params"])
    jsonschema = pytest.importorskip("jsonschema")
    good = {"params": {"zero_params": "bias"}, "rules": [{"match": {"type": "conv"}, "rule": "gamma", "zero_params": ["bias"], "stabilizer_mode": "clip"}]}
    jsonschema.validate(good, schema)
    for bad in ({"zero_params": ["weight"]}, {"stabilizer_mode": "clamp"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"rules": [{"rule": "gamma", **bad}]}, schema)
    text = rules_text()
    assert "zero_params" in text and all(mode in text for mode in MODES)
