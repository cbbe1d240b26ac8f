"""Re-count the peers' test cases that issue 27 said lrpcli could not express (issue 27, task G).

    python benchmarks/peer_cases.py                  # every case, writes benchmarks/peer_cases_results.md
    python benchmarks/peer_cases.py --toy            # a few cases per family, seconds; prints the table
    python benchmarks/peer_cases.py --family bn_after_conv_transpose --out /tmp/bn.md

Issue 27 counted 652 cases of the peers' own test suites that could not be expressed: bias-free rules, the
ReLU-gradient rules and their composites, batch-norm after a transposed convolution, the stabiliser modes clip and
norm_scale, ``pass`` on a softmax, DeepTaylor's average-pool rule, custom start tensors (zennit's and LXT's seeds)
and captum's several inputs. The ported suites are not in the tree; this file enumerates those families again the
way the peers' tests parametrise them (each family names the test file and test it ports, at the commit read),
runs each case through lrpcli and through the peer side by side (zennit 0.5.1, captum 0.9, LXT 2.1 as installed;
iNNvestigate is TensorFlow: its own stored reference attributions, ``tests/references/layer/*.hdf5``, copied to
``benchmarks/data/innvestigate_reference_layer.npz``, and its published rule code ported by hand), and prints one
row per family: cases, expressible by name, equal to the peer within the tolerance, equal once a named convention
is converted, and differing (the largest relative difference, and why).

A case is *expressible* when lrpcli accepts it by name (a built-in composite or a composite dict; ``init=`` for a
start tensor; a tuple for several inputs) without an LrpError. The difference of a case is
``max|ours - peer| / max|peer|`` over all its relevance tensors. Every model is float64 except where the peer's
stored numbers are float32 (iNNvestigate).

Sources read (commits of the fetched repositories):
- zennit 0.5.1 (tag 0.5.1): tests/test_rules.py, tests/test_core.py, tests/test_canonizers.py,
  tests/test_attribution.py, tests/conftest.py (the fixtures ``module_linear``, ``module_simple``, ``data_linear``,
  ``data_simple``, ``module_batchnorm``, ``model_simple``, ``grad_outputs_func``; the two default ``rng`` seeds).
- captum 0.9 (github pytorch/captum at faac0877): tests/attr/test_lrp.py and its models in
  captum/testing/helpers/basic_models.py.
- LXT 2.1 (tag v2.1): tests/test_rules.py, tests/test_functional.py.
- iNNvestigate 2.1.2 (10e4fc4e): tests/analyzer/test_reference_layer.py and tests/references/layer/*.hdf5;
  src/innvestigate/analyzer/relevance_based/relevance_rule.py (ZRule, EpsilonRule, AlphaBetaRule, bias=False).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import itertools
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # zennit_support: zennit imports beside a torchvision shim

import zennit_support as zs  # noqa: E402

from lrpcli import explain  # noqa: E402
from lrpcli.errors import LrpError  # noqa: E402

D64 = torch.float64
warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")  # captum, each call
SEEDS = (0xDEADBEEF, 0xD0C0FFEE)  # zennit's default rng fixture (the 'extended' seeds are marked off by default)
BATCH = 4  # zennit's --batchsize default
TOL = 1e-10  # float64 against float64
TOL_FLOAT32 = 1e-4  # against iNNvestigate's stored float32 attributions (its own test: rtol 1e-2)
REFERENCE_NPZ = ROOT / "benchmarks" / "data" / "innvestigate_reference_layer.npz"
WEIGHTED = ["conv", "conv_transpose", "linear"]


# --------------------------------------------------------------------------- cases and outcomes


@dataclass
class Outcome:
    """Relevance from lrpcli and from the peer (tensors, or tuples of them for several inputs); ``convention``:
    (what differs, ours converted, peer converted) where the peer is known to count differently."""

    ours: Any
    peer: Any
    convention: tuple[str, Any, Any] | None = None


@dataclass
class Case:
    family: str
    name: str
    run: Callable[[], Outcome]
    tol: float = TOL
    group: str = ""  # the peer's test it ports, where a family ports several (--toy takes cases of each)


@dataclass
class Result:
    case: Case
    status: str  # equal | convention | differ | not expressible | error
    difference: float = float("nan")
    note: str = ""


@dataclass
class Family:
    key: str
    title: str
    source: str
    cases: Callable[[], list[Case]]
    why: str = ""  # what a difference or a refusal in this family means
    issue: bool = True  # one of the families issue 27 listed


def _parts(value: Any) -> list[torch.Tensor]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def relative_difference(ours: Any, peer: Any) -> float:
    ours, peer = _parts(ours), _parts(peer)
    assert len(ours) == len(peer), f"{len(ours)} relevance tensors against the peer's {len(peer)}"
    scale = max(p.detach().abs().max().item() for p in peer)
    worst = max((o.detach().to(D64) - p.detach().to(D64)).abs().max().item() for o, p in zip(ours, peer))
    return worst / scale if scale > 0 else worst


def run_case(case: Case) -> Result:
    try:
        outcome = case.run()
    except LrpError as error:
        return Result(case, "not expressible", note=f"{type(error).__name__}: {str(error).splitlines()[0][:160]}")
    except Exception as error:  # noqa: BLE001 - a crash is a finding, reported with its case
        return Result(case, "error", note=f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}")
    difference = relative_difference(outcome.ours, outcome.peer)
    if difference <= case.tol:
        return Result(case, "equal", difference)
    if outcome.convention is not None:
        what, ours, peer = outcome.convention
        converted = relative_difference(ours, peer)
        if converted <= case.tol:
            return Result(case, "convention", difference, what)
    return Result(case, "differ", difference)


def lrp(model: nn.Module, x: Any, composite: Any, **kwargs: Any) -> torch.Tensor:
    return explain(model, x, composite, **kwargs).relevance


def as_start(seed: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """A peer's seed function of the outputs as lrpcli's ``init=`` (which also receives the targets)."""
    return lambda outputs, targets: seed(outputs)


def identity(output: torch.Tensor) -> torch.Tensor:
    """zennit.attribution.identity: the output itself (zennit's tests seed the rules with it)."""
    return output


def one_hot_max(output: torch.Tensor) -> torch.Tensor:
    """zennit's tests/helpers.py one_hot_max: 1 at the largest element of the whole batch's output."""
    seed = torch.zeros_like(output)
    seed.view(-1)[output.argmax()] = 1.0
    return seed


def max_value(output: torch.Tensor) -> torch.Tensor:
    """iNNvestigate's neuron_selection_mode='max_activation': each sample's largest output, its value (the seed of
    its LRP and of its gradient analyzers alike: the stored Deconvnet/GuidedBackprop maps are gradients times it)."""
    flat = output.reshape(output.shape[0], -1)
    seed = torch.zeros_like(flat)
    index = flat.argmax(1, keepdim=True)
    return seed.scatter(1, index, flat.gather(1, index)).reshape(output.shape)


SEED_FUNCTIONS = {"identity": identity, "one_hot_max": one_hot_max, "ones_like": torch.ones_like}


# --------------------------------------------------------------------------- zennit's fixtures


def module_linear_params() -> list[tuple[type, dict]]:
    """zennit 0.5.1 tests/conftest.py ``module_linear``: Linear(16, 15) with and without bias, and each
    Conv{1,2,3}d / ConvTranspose{1,2,3}d with in/out channels 1 or 3, kernel 2 or 3, bias or not: 98 modules."""
    grid = [(nn.Linear, {"in_features": 16, "out_features": 15, "bias": bias}) for bias in (True, False)]
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    for kind in convs:
        for cin, cout, kernel, bias in itertools.product((1, 3), (1, 3), (2, 3), (True, False)):
            grid.append((kind, {"in_channels": cin, "out_channels": cout, "kernel_size": kernel, "bias": bias}))
    return grid


def _label(kind: type, kwargs: dict) -> str:
    return kind.__name__ + "(" + ",".join(f"{v}" for v in kwargs.values()) + ")"


_FIXTURES: dict[tuple, Any] = {}


def linear_fixture(index: int, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """(module_linear, data_linear) for one grid entry and rng seed; built once, so lrpcli's capture is reused."""
    key = ("linear", index, seed)
    if key not in _FIXTURES:
        kind, kwargs = module_linear_params()[index]
        torch.manual_seed(seed + index)
        module = kind(**kwargs).to(D64).eval()
        if kind is nn.Linear:
            shape = (BATCH, 16)
        else:
            transposed = kind.__name__.startswith("ConvTranspose")
            ndim = module.weight.ndim - 2
            shape = (BATCH, module.weight.shape[0 if transposed else 1]) + (4,) * ndim
        generator = torch.Generator().manual_seed(seed + index)
        _FIXTURES[key] = (module, torch.empty(shape, dtype=D64).normal_(generator=generator))
    return _FIXTURES[key]


def model_simple(index: int, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """zennit's ``model_simple``: the module, a ReLU, a Flatten and a Linear to 4 outputs."""
    key = ("simple", index, seed)
    if key not in _FIXTURES:
        module, x = linear_fixture(index, seed)
        module = copy.deepcopy(module)
        with torch.no_grad():
            width = module(x).shape[1:].numel()
        torch.manual_seed(seed + 1000 + index)
        model = nn.Sequential(OrderedDict([
            ("linr0", module), ("actv0", nn.ReLU()), ("flat0", nn.Flatten()), ("linr1", nn.Linear(width, 4, dtype=D64)),
        ])).eval()
        _FIXTURES[key] = (model, x)
    return _FIXTURES[key]


def zennit_rule_relevance(module: nn.Module, x: torch.Tensor, rule: Any, seed=identity) -> torch.Tensor:
    """zennit's tests/test_rules.py ``compare_rule_pair``: the rule's hook on the module, seeded with the output."""
    inputs = x.clone().requires_grad_()
    handle = rule.register(module)
    try:
        output = module(inputs)
        (relevance,) = torch.autograd.grad(output, inputs, grad_outputs=seed(output))
    finally:
        handle.remove()
    return relevance


# --------------------------------------------------------------------------- family: bias-free rules (zennit)


def bias_free(entry: dict) -> dict:
    """A composite line with the bias left out (zennit zero_params='bias', captum set_bias_to_zero, iNNvestigate
    *IgnoreBias). tests/test_peer_cases.py replaces this to show the comparison fails without it."""
    return {**entry, "zero_params": ["bias"]}


def zennit_bias_free_rules() -> list[tuple[str, Callable, dict]]:
    """zennit 0.5.1 tests/test_rules.py RULES_LINEAR entries with zero_params='bias' (AlphaBeta(1, 0) is listed
    twice there, and counted twice here), and the lrpcli line for each."""
    from zennit import rules as zr

    return [
        ("Epsilon(1e-6)", lambda: zr.Epsilon(epsilon=1e-6, zero_params="bias"), {"rule": "epsilon", "epsilon": 1e-6}),
        ("Epsilon(1.0)", lambda: zr.Epsilon(epsilon=1.0, zero_params="bias"), {"rule": "epsilon", "epsilon": 1.0}),
        ("ZPlus", lambda: zr.ZPlus(zero_params="bias"), {"rule": "zplus"}),
        ("Gamma(0.25)", lambda: zr.Gamma(gamma=0.25, zero_params="bias"), {"rule": "gamma", "gamma": 0.25}),
        ("Gamma(0.5)", lambda: zr.Gamma(gamma=0.5, zero_params="bias"), {"rule": "gamma", "gamma": 0.5}),
        ("AlphaBeta(1,0)", lambda: zr.AlphaBeta(alpha=1.0, beta=0.0, zero_params="bias"), {"rule": "alpha_beta", "alpha": 1.0, "beta": 0.0}),
        ("AlphaBeta(1,0)'", lambda: zr.AlphaBeta(alpha=1.0, beta=0.0, zero_params="bias"), {"rule": "alpha_beta", "alpha": 1.0, "beta": 0.0}),
        ("ZBox(-3,3)", lambda: zr.ZBox(low=-3.0, high=3.0, zero_params="bias"), {"rule": "zbox", "low": -3.0, "high": 3.0}),
        ("WSquare", lambda: zr.WSquare(zero_params="bias"), {"rule": "wsquare"}),
    ]


def bias_free_zennit_cases() -> list[Case]:
    zs.import_zennit()
    cases = []
    for seed in SEEDS:
        for index, (kind, kwargs) in enumerate(module_linear_params()):
            for label, make, line in zennit_bias_free_rules():

                def run(index=index, seed=seed, make=make, line=line) -> Outcome:
                    module, x = linear_fixture(index, seed)
                    spec = {"rules": [bias_free({"match": {"type": WEIGHTED}, **line})]}
                    ours = lrp(module, x, spec, init=as_start(identity))
                    return Outcome(ours, zennit_rule_relevance(module, x, make()))

                cases.append(Case("bias_free_zennit", f"{label} {_label(kind, kwargs)} {seed:#x}", run))
    return cases


# --------------------------------------------------------------------------- family: bias-free rules (captum)


def bias_free_captum_cases() -> list[Case]:
    """captum 0.9 tests/attr/test_lrp.py's models and rule assignments (test_lrp_simple_attributions_GammaRule:
    first layer GammaRule(gamma=1), the next GammaRule(); ..._AlphaBeta: Alpha1_Beta0_Rule on both), each with
    set_bias_to_zero=True, on the two of its models with biases: BasicModel_ConvNet_One_Conv on arange(16) (target:
    the argmax, as test_lrp_basic_attributions) and BasicModel_MultiLayer on [1, 2, 3] (target 0, as test_lrp_multi)."""
    from captum.testing.helpers.basic_models import BasicModel_ConvNet_One_Conv, BasicModel_MultiLayer

    def conv_model():
        return BasicModel_ConvNet_One_Conv().to(D64).eval(), torch.arange(16, dtype=D64).view(1, 1, 4, 4), None, ["conv1", "fc1"]

    def multi_model():
        return BasicModel_MultiLayer().to(D64).eval(), torch.tensor([[1.0, 2.0, 3.0]], dtype=D64), 0, ["linear0", "linear1", "linear2"]

    configs = {
        "GammaRule(0.25) everywhere": lambda names: {n: ("gamma", 0.25) for n in names},
        "GammaRule(1) first, GammaRule() after": lambda names: {n: ("gamma", 1.0 if i == 0 else 0.25) for i, n in enumerate(names)},
        "Alpha1_Beta0_Rule everywhere": lambda names: {n: ("alpha1_beta0", None) for n in names},
    }
    cases = []
    for model_name, build in (("BasicModel_ConvNet_One_Conv", conv_model), ("BasicModel_MultiLayer", multi_model)):
        for config_name, config in configs.items():

            def run(build=build, config=config) -> Outcome:
                from captum.attr import LRP
                from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, GammaRule

                model, x, target, names = build()
                rules = config(names)
                peer_model = copy.deepcopy(model)
                for name, (rule, gamma) in rules.items():
                    module = getattr(peer_model, name)
                    module.rule = GammaRule(gamma=gamma, set_bias_to_zero=True) if rule == "gamma" else Alpha1_Beta0_Rule(set_bias_to_zero=True)
                if target is None:
                    target = int(model(x).argmax(1))
                peer = LRP(peer_model).attribute(x.clone(), target=target)
                lines = []
                for name, (rule, gamma) in rules.items():
                    line = {"rule": "gamma", "gamma": gamma} if rule == "gamma" else {"rule": "alpha_beta", "alpha": 1.0, "beta": 0.0}
                    lines.append(bias_free({"match": {"name": name}, **line, "stabilizer": 1e-9}))  # captum's STABILITY_FACTOR
                ours = lrp(model, x, {"rules": lines}, target=target)
                return Outcome(ours, peer)

            cases.append(Case("bias_free_captum", f"{config_name}, {model_name}", run))
    return cases


# --------------------------------------------------------------------------- iNNvestigate: its stored layers


class NHWC(nn.Module):
    """A Keras layer as iNNvestigate's test_reference_layer builds it: NHWC input, the layer, Flatten."""

    def __init__(self, layer: nn.Module, channels_first: bool, relu: bool):
        super().__init__()
        self.layer, self.channels_first, self.relu = layer, channels_first, nn.ReLU() if relu else None

    def forward(self, x):
        h = self.layer(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) if self.channels_first else self.layer(x)
        if self.relu is not None:
            h = self.relu(h)
        return h.flatten(1)


def keras_layer(store: Any, analyzer: str, layer: str, dtype=torch.float32, bias: torch.Tensor | None = None) -> nn.Module:
    """The torch twin of one stored Keras layer (Dense on the channel axis, Conv2D 'valid', AveragePooling2D (2, 2))."""
    prefix = f"{analyzer}/{layer}"
    if layer == "AveragePooling2D":
        return NHWC(nn.AvgPool2d(2), True, False).eval()
    kernel = torch.from_numpy(store[f"{prefix}/weight0"]).to(dtype)
    stored_bias = torch.from_numpy(store[f"{prefix}/weight1"]).to(dtype)
    if layer.startswith("Dense"):
        module = nn.Linear(kernel.shape[0], kernel.shape[1], dtype=dtype)
        weight = kernel.T
    else:
        module = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2], dtype=dtype)
        weight = kernel.permute(3, 2, 0, 1)
    with torch.no_grad():
        module.weight.copy_(weight)
        module.bias.copy_(stored_bias if bias is None else bias)
    return NHWC(module, layer.startswith("Conv"), layer.endswith("relu")).eval()


def _store():
    if not REFERENCE_NPZ.exists():
        raise FileNotFoundError(f"{REFERENCE_NPZ} is missing (see benchmarks/data/README.md)")
    return np.load(REFERENCE_NPZ)


INNVESTIGATE_LRP = {
    # analyzer: (lrpcli line, seed); iNNvestigate's defaults: EpsilonRule epsilon=1e-7, safe_divide elsewhere
    "LRPZIgnoreBias": ({"rule": "z"}, max_value),
    "LRPEpsilonIgnoreBias": ({"rule": "epsilon", "epsilon": 1e-7}, max_value),
    "LRPAlpha1Beta0IgnoreBias": ({"rule": "alpha_beta", "alpha": 1.0, "beta": 0.0, "stabilizer": 0.0}, max_value),
    "LRPAlpha2Beta1IgnoreBias": ({"rule": "alpha_beta", "alpha": 2.0, "beta": 1.0, "stabilizer": 0.0}, max_value),
}
WEIGHTED_LAYERS = ("Dense", "Dense_relu", "Conv2D", "Conv2D_relu")


def reference_case(family: str, analyzer: str, layer: str, composite: Callable[[], Any], seed) -> Case:
    def run() -> Outcome:
        store = _store()
        model = keras_layer(store, analyzer, layer)
        x = torch.from_numpy(store[f"{analyzer}/input"])
        peer = torch.from_numpy(store[f"{analyzer}/{layer}/attribution"])
        output = torch.from_numpy(store[f"{analyzer}/{layer}/output"])
        assert (model(x) - output).abs().max() <= 1e-5 * output.abs().max(), "the torch twin's output is not the stored one"
        return Outcome(lrp(model, x, composite(), init=as_start(seed)), peer)

    return Case(family, f"{analyzer} {layer} (stored)", run, TOL_FLOAT32, "iNNvestigate stored")


def innvestigate_formula(analyzer: str, model: NHWC, x: torch.Tensor) -> torch.Tensor:
    """iNNvestigate's relevance_rule.py with bias=False, written out in torch: ZRule / EpsilonRule
    (Z = the layer without bias; R_in = X * J^T (R / Z'), Z' = Z with 0 -> 1e-7 (safe_divide) or
    Z + 1e-7 * (Z >= 0 ? 1 : -1)) and AlphaBetaRule (the layer's positive and negative weights on X+ and X-:
    alpha * activator - beta * inhibitor, each a Z-rule over the two paths' sum)."""
    layer = model.layer
    weight = layer.weight.detach()

    def apply(w, inputs):
        h = F.linear(inputs, w) if isinstance(layer, nn.Linear) else F.conv2d(inputs.permute(0, 3, 1, 2), w).permute(0, 2, 3, 1)
        return h.flatten(1)

    with torch.no_grad():
        relevance = max_value(model(x))

    def z_rule(paths, stabilise) -> torch.Tensor:
        inputs = [p[1].clone().requires_grad_() for p in paths]
        zs_ = [apply(w, i) for (w, _), i in zip(paths, inputs)]
        total = sum(zs_)
        quotient = (relevance / stabilise(total.detach()))
        grads = torch.autograd.grad(total, inputs, quotient)
        return sum(i.detach() * g for i, g in zip(inputs, grads))

    safe = lambda z: z + 1e-7 * (z == 0)  # noqa: E731
    if analyzer == "LRPZIgnoreBias":
        return z_rule([(weight, x)], safe)
    if analyzer == "LRPEpsilonIgnoreBias":
        return z_rule([(weight, x)], lambda z: z + 1e-7 * ((z >= 0).to(z) * 2 - 1))
    alpha, beta = (1.0, 0.0) if "Alpha1" in analyzer else (2.0, 1.0)
    positive, negative = weight.clamp(min=0), weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    activator = z_rule([(positive, x_pos), (negative, x_neg)], safe)
    if not beta:
        return activator
    inhibitor = z_rule([(negative, x_pos), (positive, x_neg)], safe)
    return alpha * activator - beta * inhibitor


def bias_free_innvestigate_cases() -> list[Case]:
    """iNNvestigate's *IgnoreBias analyzers on the four weighted layers of test_reference_layer.py: against its
    stored attributions (float32; their biases are all zero, so these alone cannot tell a bias left out), and
    against its rule code written out (float64, the same weights with a bias drawn from N(0, 0.5), on the stored
    input and on that input minus 0.5 so that negative inputs meet the alpha-beta split)."""
    cases = []
    for analyzer, (line, seed) in INNVESTIGATE_LRP.items():
        for layer in WEIGHTED_LAYERS:
            composite = lambda line=line: {"rules": [bias_free({"match": {"type": WEIGHTED}, **line})]}  # noqa: E731
            cases.append(reference_case("bias_free_innvestigate", analyzer, layer, composite, seed))
    for analyzer, (line, seed) in INNVESTIGATE_LRP.items():
        for layer in WEIGHTED_LAYERS:
            for centred in (False, True):

                def run(analyzer=analyzer, layer=layer, line=line, centred=centred) -> Outcome:
                    store = _store()
                    bias = torch.from_numpy(np.random.default_rng(5).normal(0.0, 0.5, 5))
                    model = keras_layer(store, analyzer, layer, D64, bias)
                    x = torch.from_numpy(store[f"{analyzer}/input"]).to(D64) - (0.5 if centred else 0.0)
                    spec = {"rules": [bias_free({"match": {"type": WEIGHTED}, **line})]}
                    ours = lrp(model, x, spec, init=as_start(max_value))
                    return Outcome(ours, innvestigate_formula(analyzer, model, x))

                name = f"{analyzer} {layer} (formula, bias{', centred' if centred else ''})"
                cases.append(Case("bias_free_innvestigate", name, run, group="iNNvestigate formula"))
    return cases


# --------------------------------------------------------------------------- family: ReLU-gradient rules


SIMPLE_MODULES = {  # zennit's module_simple fixture
    "ReLU": lambda: nn.ReLU(),
    "Softmax": lambda: nn.Softmax(dim=1),
    "Tanh": lambda: nn.Tanh(),
    "Sigmoid": lambda: nn.Sigmoid(),
    "Softplus": lambda: nn.Softplus(beta=1),
}
SIMPLE_SHAPES = ((16,), (4,), (4, 4), (4, 4, 4))  # zennit's data_simple fixture


def relu_rules() -> list[tuple[str, Callable, dict]]:
    """zennit 0.5.1 tests/test_rules.py RULES_SIMPLE other than Pass."""
    from zennit import rules as zr

    return [
        ("ReLUDeconvNet", zr.ReLUDeconvNet, {"rule": "deconvnet"}),
        ("ReLUGuidedBackprop", zr.ReLUGuidedBackprop, {"rule": "guided_backprop"}),
        ("ReLUBetaSmooth(10)", lambda: zr.ReLUBetaSmooth(beta_smooth=10.0), {"rule": "beta_smooth", "beta_smooth": 10.0}),
        ("ReLUBetaSmooth(1)", lambda: zr.ReLUBetaSmooth(beta_smooth=1.0), {"rule": "beta_smooth", "beta_smooth": 1.0}),
    ]


def simple_data(shape: tuple, seed: int) -> torch.Tensor:
    return torch.empty((BATCH,) + shape, dtype=D64).normal_(generator=torch.Generator().manual_seed(seed + len(shape) + shape[0]))


def simple_rule_cases(family: str, modules: tuple[str, ...], rules: list) -> list[Case]:
    cases = []
    for seed in SEEDS:
        for module_name in modules:
            for shape in SIMPLE_SHAPES:
                for label, make, line in rules:

                    def run(module_name=module_name, shape=shape, make=make, line=line, seed=seed) -> Outcome:
                        module, x = SIMPLE_MODULES[module_name]().to(D64).eval(), simple_data(shape, seed)
                        kind = "softmax" if module_name == "Softmax" else "activation"
                        ours = lrp(module, x, {"rules": [{"match": {"type": kind}, **line}]}, init=as_start(identity))
                        return Outcome(ours, zennit_rule_relevance(module, x, make()))

                    cases.append(Case(family, f"{label} on {module_name} {shape} {seed:#x}", run, group="zennit test_simple_rule"))
    return cases


ZENNIT_COMPOSITES = {
    # zennit 0.5.1 COMPOSITES (tests/conftest.py any_composite, with COMPOSITE_KWARGS) -> lrpcli's name and params
    "GuidedBackprop": ("guided_backprop", {}),
    "DeconvNet": ("deconvnet", {}),
    "BetaSmooth": ("beta_smooth", {}),
    "Composite": (None, {}),  # the empty composite: the plain gradient
    "EpsilonPlus": ("epsilon_plus", {}),
    "EpsilonPlusFlat": ("epsilon_plus_flat", {}),
    "EpsilonGammaBox": ("epsilon_gamma_box", {"low": -3.0, "high": 3.0}),
    "EpsilonAlpha2Beta1": ("epsilon_alpha2_beta1", {}),
    "EpsilonAlpha2Beta1Flat": ("epsilon_alpha2_beta1_flat", {}),
    "ExcitationBackprop": ("excitation_backprop", {}),
}
GRADIENT_EVERYWHERE = {"rules": [{"match": {"type": [
    "conv", "conv_transpose", "linear", "batchnorm", "add", "avgpool", "reduce", "scale", "layernorm", "product",
    "softmax", "activation",
]}, "rule": "gradient"}]}


def zennit_composite(name: str):
    from zennit.composites import COMPOSITES
    from zennit.core import Composite

    if name == "Composite":
        return Composite()
    by_class = {cls.__name__: cls for cls in COMPOSITES.values()}
    kwargs = {"low": -3.0, "high": 3.0} if name == "EpsilonGammaBox" else {}
    return by_class[name](**kwargs)


def composite_cases(family: str, names: tuple[str, ...]) -> list[Case]:
    """zennit 0.5.1 tests/test_attribution.py test_gradient_attributor_composite: the Gradient attributor with a
    composite and ``attr_output=grad_outputs_func`` (identity, one_hot_max, ones_like) on model_simple, for each
    module_linear and rng seed; lrpcli gets the same start through ``init=``."""
    cases = []
    for seed in SEEDS:
        for index, (kind, kwargs) in enumerate(module_linear_params()):
            for name in names:
                for seed_name, seed_fn in SEED_FUNCTIONS.items():

                    def run(index=index, seed=seed, name=name, seed_fn=seed_fn) -> Outcome:
                        model, x = model_simple(index, seed)
                        lrp_name, params = ZENNIT_COMPOSITES[name]
                        composite = GRADIENT_EVERYWHERE if lrp_name is None else lrp_name
                        ours = lrp(model, x, composite, init=as_start(seed_fn), params=params or None)
                        _, peer = zs.zennit_lrp(model, x, zennit_composite(name), seed_fn)
                        return Outcome(ours, peer)

                    label = f"{name} {seed_name} {_label(kind, kwargs)} {seed:#x}"
                    cases.append(Case(family, label, run, group="zennit test_gradient_attributor_composite"))
    return cases


def innvestigate_gradient_cases() -> list[Case]:
    """iNNvestigate's Deconvnet and GuidedBackprop on the four weighted layers (stored attributions), seeded as
    iNNvestigate seeds them: the largest output's value."""
    cases = []
    for analyzer, name in (("Deconvnet", "deconvnet"), ("GuidedBackprop", "guided_backprop")):
        for layer in WEIGHTED_LAYERS:
            cases.append(reference_case("relu_gradient", analyzer, layer, lambda name=name: name, max_value))
    return cases


def relu_gradient_cases() -> list[Case]:
    zs.import_zennit()
    elementwise = ("ReLU", "Tanh", "Sigmoid", "Softplus")
    return (
        simple_rule_cases("relu_gradient", elementwise, relu_rules())
        + innvestigate_gradient_cases()
        + composite_cases("relu_gradient", ("GuidedBackprop", "DeconvNet", "BetaSmooth"))
    )


def pass_by_name_cases() -> list[Case]:
    """zennit 0.5.1 tests/test_rules.py test_simple_rule with Pass on the element-wise module_simple modules."""
    zs.import_zennit()
    from zennit.rules import Pass

    return simple_rule_cases("pass_activation_by_name", ("ReLU", "Tanh", "Sigmoid", "Softplus"), [("Pass", Pass, {"rule": "pass"})])


def relu_rules_on_softmax_cases() -> list[Case]:
    zs.import_zennit()
    return simple_rule_cases("relu_rules_on_softmax", ("Softmax",), relu_rules())


# --------------------------------------------------------------------------- family: batch-norm after ConvTranspose


def bn_cases() -> list[Case]:
    """zennit 0.5.1 tests/test_canonizers.py test_merge_batchnorm_consistency / _apply: each transposed module of
    module_linear followed by module_batchnorm (BatchNorm over the ConvTranspose's out channels, weight U(0.1, 2),
    bias N(0, 1), eps 1e-30). LRP: the epsilon rule on the merged layer, seeded with the output, against zennit's
    SequentialMergeBatchNorm + Epsilon."""
    zs.import_zennit()
    cases = []
    for seed in SEEDS:
        for index, (kind, kwargs) in enumerate(module_linear_params()):
            if not kind.__name__.startswith("ConvTranspose"):
                continue

            def run(index=index, seed=seed, kind=kind) -> Outcome:
                from zennit.canonizers import SequentialMergeBatchNorm
                from zennit.composites import LayerMapComposite
                from zennit.rules import Epsilon
                from zennit.types import Convolution

                module, x = linear_fixture(index, seed)
                norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[module.weight.ndim - 2]
                generator = torch.Generator().manual_seed(seed + 7 * index)
                batchnorm = norm(module.weight.shape[1]).to(D64).eval()
                with torch.no_grad():
                    batchnorm.weight.uniform_(0.1, 2.0, generator=generator)
                    batchnorm.bias.normal_(generator=generator)
                batchnorm.eps = 1e-30
                model = nn.Sequential(OrderedDict([("dense0", copy.deepcopy(module)), ("bnorm0", batchnorm)])).eval()
                ours = lrp(model, x, {"rules": [{"match": {"type": WEIGHTED}, "rule": "epsilon"}]}, init=as_start(identity))
                composite = LayerMapComposite([(Convolution, Epsilon())], canonizers=[SequentialMergeBatchNorm()])
                _, peer = zs.zennit_lrp(model, x, composite, identity)
                return Outcome(ours, peer)

            cases.append(Case("bn_after_conv_transpose", f"{_label(kind, kwargs)} + BatchNorm {seed:#x}", run))
    return cases


# --------------------------------------------------------------------------- family: stabiliser modes


STABILIZE_CASES = [  # zennit 0.5.1 tests/test_core.py test_stabilize, the entries with clip or norm_scale
    ({"epsilon": 1e-6, "clip": True, "norm_scale": False}, [0.0, -0.0, 1.0, -1.0], [1e-6, 1e-6, 1.0, -1.0]),
    ({"epsilon": 1e-3, "clip": True, "norm_scale": False}, [0.0, -0.0, 1.0, -1.0], [1e-3, 1e-3, 1.0, -1.0]),
    ({"epsilon": 1.0, "clip": True, "norm_scale": False}, [0.0, -0.0, 1.0, -1.0], [1.0, 1.0, 1.0, -1.0]),
    ({"epsilon": 1e-6, "clip": False, "norm_scale": True}, [0.0, -0.0, 2.0, -2.0], [1.4142e-6, 1.4142e-6, 2.0 + 1.4142e-6, -2.0 - 1.4142e-6]),
    ({"epsilon": 1e-3, "clip": False, "norm_scale": True}, [0.0, -0.0, 2.0, -2.0], [1.4142e-3, 1.4142e-3, 2.0 + 1.4142e-3, -2.0 - 1.4142e-3]),
    ({"epsilon": 1.0, "clip": False, "norm_scale": True}, [0.0, -0.0, 2.0, -2.0], [1.4142, 1.4142, 3.4142, -3.4142]),
    ({"epsilon": 1e-6, "clip": True, "norm_scale": True}, [0.0, -0.0, 2.0, -2.0], [1.4142e-6, 1.4142e-6, 2.0, -2.0]),
    ({"epsilon": 1e-3, "clip": True, "norm_scale": True}, [0.0, -0.0, 2.0, -2.0], [1.4142e-3, 1.4142e-3, 2.0, -2.0]),
    ({"epsilon": 1.0, "clip": True, "norm_scale": True}, [0.0, -0.0, 2.0, -2.0], [1.4142, 1.4142, 2.0, -2.0]),
]


def stabilizer_cases() -> list[Case]:
    """Each entry as an LRP case: a Linear(4, 4) with W = I and bias z - 1 on an input of ones, so its output is
    the entry's z (-0 enters as +0: zennit's sign treats both alike), seeded with ones: R_in_k = 1 / stab(z_k).
    Against zennit's Epsilon(epsilon=Stabilizer(...)) on the same layer; 1 / R_in is also checked against the
    entry's expected values (rounded to 5 digits there, so to 1e-4)."""
    zs.import_zennit()
    cases = []
    for kwargs, values, expected in STABILIZE_CASES:

        def run(kwargs=kwargs, values=values, expected=expected) -> Outcome:
            from zennit.core import Stabilizer
            from zennit.rules import Epsilon

            mode = {(True, False): "clip", (False, True): "norm_scale", (True, True): "norm_scale_clip"}[(kwargs["clip"], kwargs["norm_scale"])]
            layer = nn.Linear(4, 4).to(D64).eval()
            with torch.no_grad():
                layer.weight.copy_(torch.eye(4, dtype=D64))
                layer.bias.copy_(torch.tensor(values, dtype=D64) - 1.0)
            x = torch.ones(1, 4, dtype=D64)
            line = {"match": {"type": "linear"}, "rule": "epsilon", "epsilon": kwargs["epsilon"], "stabilizer_mode": mode}
            ours = lrp(layer, x, {"rules": [line]}, init=as_start(torch.ones_like))
            peer = zennit_rule_relevance(layer, x, Epsilon(epsilon=Stabilizer(**kwargs)), torch.ones_like)
            stabilised = 1.0 / ours[0]
            assert torch.allclose(stabilised, torch.tensor(expected, dtype=D64), rtol=1e-4, atol=0), f"1/R = {stabilised.tolist()}, test_stabilize expects {expected}"
            return Outcome(ours, peer)

        cases.append(Case("stabilizer_modes", f"{kwargs} on {values}", run))
    return cases


# --------------------------------------------------------------------------- family: pass on a softmax


TRAILING_SOFTMAX = ("lrpcli strips a trailing softmax and explains its input (design.md section 1); the softmax "
                    "is followed by a ReLU (an identity on its positive outputs) to keep it inside the model")


def pass_softmax_cases() -> list[Case]:
    """zennit 0.5.1 tests/test_rules.py test_simple_rule with Pass on module_simple Softmax(dim=1), each
    data_simple shape and rng seed: R_in = the seed (the output)."""
    zs.import_zennit()
    cases = []
    for seed in SEEDS:
        for shape in SIMPLE_SHAPES:

            def run(shape=shape, seed=seed) -> Outcome:
                from zennit.composites import LayerMapComposite
                from zennit.rules import Pass

                model = nn.Sequential(nn.Softmax(dim=1), nn.ReLU()).to(D64).eval()
                x = simple_data(shape, seed)
                ours = lrp(model, x, {"rules": [{"match": {"type": "softmax"}, "rule": "pass"}]}, init=as_start(identity))
                composite = LayerMapComposite([(nn.Softmax, Pass()), (nn.ReLU, Pass())])
                _, peer = zs.zennit_lrp(model, x, composite, identity)
                return Outcome(ours, peer)

            cases.append(Case("pass_softmax", f"Pass on Softmax(dim=1) {shape} {seed:#x}", run))
    return cases


# --------------------------------------------------------------------------- family: DeepTaylor's average pooling


def deep_taylor_cases() -> list[Case]:
    """iNNvestigate's DeepTaylor and BoundedDeepTaylor (low/high -128/128) on test_reference_layer.py's
    AveragePooling2D (stored attributions): the pool maps relevance by its gradient (J^T R)."""
    spec = {"rules": [{"match": {"type": "avgpool"}, "rule": "gradient"}]}
    return [reference_case("deep_taylor_avgpool", a, "AveragePooling2D", lambda: spec, max_value) for a in ("DeepTaylor", "BoundedDeepTaylor")]


# --------------------------------------------------------------------------- family: custom start tensors


class Binary(nn.Module):
    def __init__(self, op: Callable):
        super().__init__()
        self.op = op

    def forward(self, a, b):
        return self.op(a, b)


class Unary(nn.Module):
    def __init__(self, op: Callable):
        super().__init__()
        self.op = op

    def forward(self, x):
        return self.op(x)


def lxt_cases() -> list[Case]:
    """LXT 2.1 tests/test_rules.py test_epsilon_rule and tests/test_functional.py: each op seeded with a random
    ``init_relevance`` shaped like its output, the same shapes and epsilons, in float64; lrpcli gets the seed as
    ``init=`` (and the two-input ops as a tuple of inputs). LXT's epsilon is unsigned (z + eps):
    stabilizer_mode 'unsigned'."""
    import lxt.explicit.functional as lf

    def randn(*shape, seed=0):
        return torch.randn(*shape, dtype=D64, generator=torch.Generator().manual_seed(seed + sum(shape)))

    def seeded(op_inputs, y, init):
        return torch.autograd.grad(y, op_inputs, init)

    def epsilon_rule() -> Outcome:  # test_rules.py
        x, weight, bias, init = randn(1, 5), randn(5, 5, seed=1), randn(5, seed=2), randn(1, 5, seed=3)
        layer = nn.Linear(5, 5).to(D64).eval()
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        leaf = x.clone().requires_grad_()
        (peer,) = seeded(leaf, lf.linear_epsilon(leaf, weight, bias), init)
        spec = {"rules": [{"match": {"type": "linear"}, "rule": "epsilon", "epsilon": 1e-6, "stabilizer_mode": "unsigned"}]}
        return Outcome(lrp(layer, x, spec, init=init), peer)

    def linear() -> Outcome:
        x, bias, weight, init = randn(16, 10), randn(5, seed=1), randn(5, 10, seed=2), randn(16, 5, seed=3)
        layer = nn.Linear(10, 5).to(D64).eval()
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        leaf = x.clone().requires_grad_()
        (peer,) = seeded(leaf, lf.linear_epsilon(leaf, weight, bias, 1e-9), init)
        spec = {"rules": [{"match": {"type": "linear"}, "rule": "epsilon", "epsilon": 1e-9, "stabilizer_mode": "unsigned"}]}
        return Outcome(lrp(layer, x, spec, init=init), peer)

    def softmax() -> Outcome:
        x, init = randn(16, 10, 32), randn(16, 10, 32, seed=1)
        leaf = x.clone().requires_grad_()
        (peer,) = seeded(leaf, lf.softmax(leaf, -1), init)
        model = nn.Sequential(nn.Softmax(dim=-1), nn.ReLU()).eval()
        ours = lrp(model, x, {"rules": [{"match": {"type": "softmax"}, "rule": "taylor"}]}, init=init)
        return Outcome(ours, peer)

    def matmul() -> Outcome:
        a, b, init = randn(2, 10, 32), randn(2, 32, 5, seed=1), randn(2, 10, 5, seed=2)
        leaves = (a.clone().requires_grad_(), b.clone().requires_grad_())
        peer = seeded(leaves, lf.matmul(*leaves, False, 1e-9), init)
        # LXT divides by 2 z + eps, lrpcli's uniform rule by 2 (z + eps): the same rule with half LXT's epsilon
        spec = {"rules": [{"match": {"type": "product"}, "rule": "uniform", "epsilon": 1e-9 / 2, "stabilizer_mode": "unsigned"}]}
        return Outcome(lrp(Binary(torch.matmul), (a, b), spec, init=init), peer)

    def add() -> Outcome:
        a, b, init = randn(16, 10, 32), randn(16, 10, 32, seed=1), randn(16, 10, 32, seed=2)
        leaves = (a.clone().requires_grad_(), b.clone().requires_grad_())
        peer = seeded(leaves, lf.add2(*leaves, False, 1e-9), init)
        spec = {"rules": [{"match": {"type": "add"}, "rule": "norm", "stabilizer": 1e-9, "stabilizer_mode": "unsigned"}]}
        return Outcome(lrp(Binary(torch.add), (a, b), spec, init=init), peer)

    def mean(keepdim: bool) -> Callable[[], Outcome]:
        def run() -> Outcome:
            a, init = randn(1, 8, 32), randn(1, 8, seed=1)
            init = init.unsqueeze(-1) if keepdim else init
            leaf = a.clone().requires_grad_()
            (peer,) = seeded(leaf, lf.mean(leaf, -1, keepdim, 1e-9), init)
            # LXT adds eps to the sum of the inputs, lrpcli to the mean (n eps on the sum): LXT's epsilon / n
            spec = {"rules": [{"match": {"type": "reduce"}, "rule": "norm", "stabilizer": 1e-9 / 32, "stabilizer_mode": "unsigned"}]}
            return Outcome(lrp(Unary(lambda x: x.mean(-1, keepdim=keepdim)), a, spec, init=init), peer)

        return run

    def layernorm() -> Outcome:
        x, init = randn(1, 2, 8), randn(1, 2, 8, seed=1)
        norm = nn.LayerNorm(8).to(D64).eval()
        with torch.no_grad():
            norm.weight.copy_(randn(8, seed=2))
            norm.bias.copy_(randn(8, seed=3))
        leaf = x.clone().requires_grad_()
        (peer,) = seeded(leaf, lf.layer_norm(leaf, norm.weight.detach(), norm.bias.detach(), norm.eps), init)
        spec = {"rules": [{"match": {"type": "layernorm"}, "rule": "epsilon", "epsilon": 1e-6, "stabilizer_mode": "unsigned"}]}
        return Outcome(lrp(norm, x, spec, init=init), peer)

    def rms_norm() -> Outcome:
        x, r = randn(1, 4, 32), randn(1, 4, 32, seed=1)
        weight = randn(32, seed=2)
        leaf = x.clone().requires_grad_()
        (peer,) = seeded(leaf, lf.rms_norm_identity(leaf, weight, 1e-9), r)
        norm = nn.RMSNorm(32, eps=1e-9).to(D64).eval()
        with torch.no_grad():
            norm.weight.copy_(weight)
        spec = {"rules": [{"match": {"type": "layernorm"}, "rule": "pass"}]}
        return Outcome(lrp(norm, x, spec, init=r), peer)

    def normalize() -> Outcome:
        x, r = randn(1, 4, 32), randn(1, 4, 32, seed=1)
        leaf = x.clone().requires_grad_()
        (peer,) = seeded(leaf, lf.normalize(leaf, p=2, dim=1), r)
        spec = {"rules": [{"match": {"type": "scale"}, "rule": "pass"}]}  # x / ||x||: a scale by a held norm
        return Outcome(lrp(Unary(lambda h: F.normalize(h, p=2, dim=1)), x, spec, init=r), peer)

    runs = {
        "test_rules.py test_epsilon_rule": epsilon_rule,
        "test_functional.py test_linear": linear,
        "test_functional.py test_softmax": softmax,
        "test_functional.py test_matmul": matmul,
        "test_functional.py test_sum": add,
        "test_functional.py test_mean keep_dim=True": mean(True),
        "test_functional.py test_mean keep_dim=False": mean(False),
        "test_functional.py test_layernorm": layernorm,
        "test_functional.py test_normalize rms_norm_identity": rms_norm,
        "test_functional.py test_normalize normalize": normalize,
    }
    return [Case("custom_start", f"LXT {name}", run, group="LXT") for name, run in runs.items()]


def custom_start_cases() -> list[Case]:
    zs.import_zennit()
    lrp_composites = tuple(name for name in ZENNIT_COMPOSITES if name not in ("GuidedBackprop", "DeconvNet", "BetaSmooth"))
    return composite_cases("custom_start", lrp_composites) + lxt_cases()


# --------------------------------------------------------------------------- family: captum's several inputs


#: captum's EpsilonRule default (1e-9) on its layers; its additions are no modules and get no stabiliser
CAPTUM_PARAMS = {"epsilon": 1e-9, "stabilizer": 0.0}


def captum_multi_input_cases() -> list[Case]:
    """captum 0.9 tests/attr/test_lrp.py test_lrp_multi_inputs (BasicModel_MultiLayer on (x, 3x), target 0: its
    forward adds the two) and test_lrp_multi (the second input as additional_forward_args, held constant).
    captum hands a sum's whole relevance to each summand (its attributions sum to 2x the relevance of x1 + x2,
    delta -104); lrpcli splits it in proportion: the convention converted is the sum of lrpcli's parts."""
    from captum.testing.helpers.basic_models import BasicModel_MultiLayer

    def several() -> Outcome:
        from captum.attr import LRP

        model = BasicModel_MultiLayer().to(D64).eval()
        x = torch.tensor([[1.0, 2.0, 3.0]], dtype=D64)
        peer = LRP(copy.deepcopy(model)).attribute((x, 3 * x), target=0)
        ours = lrp(model, (x, 3 * x), "epsilon", target=0, params=CAPTUM_PARAMS)
        whole = ours[0] + ours[1]
        return Outcome(ours, peer, ("captum gives each summand the whole relevance of the sum", (whole, whole), peer))

    def held() -> Outcome:
        from captum.attr import LRP

        model = BasicModel_MultiLayer().to(D64).eval()
        x = torch.tensor([[1.0, 2.0, 3.0]], dtype=D64)
        add_input = torch.zeros(1, 3, dtype=D64)
        peer = LRP(copy.deepcopy(model)).attribute(x, target=0, additional_forward_args=(add_input,))
        ours = lrp(model, x, "epsilon", target=0, params=CAPTUM_PARAMS, inputs={"add_input": add_input})
        return Outcome(ours, peer)

    return [
        Case("captum_multi_input", "test_lrp_multi_inputs: (x, 3x) both explained", several),
        Case("captum_multi_input", "test_lrp_multi: add_input held constant", held),
    ]


# --------------------------------------------------------------------------- the families


FAMILIES = [
    Family("bias_free_zennit", "bias-free rules: zennit zero_params='bias'",
           "zennit tests/test_rules.py test_linear_rule (RULES_LINEAR with zero_params='bias') x module_linear x 2 seeds",
           bias_free_zennit_cases),
    Family("bias_free_captum", "bias-free rules: captum set_bias_to_zero",
           "captum tests/attr/test_lrp.py models and rule assignments, set_bias_to_zero=True", bias_free_captum_cases),
    Family("bias_free_innvestigate", "bias-free rules: iNNvestigate *IgnoreBias",
           "iNNvestigate tests/analyzer/test_reference_layer.py (stored) + relevance_rule.py (formula, with a bias)",
           bias_free_innvestigate_cases),
    Family("relu_gradient", "ReLU-gradient rules and composites",
           "zennit test_rules.py test_simple_rule (ReLU rules x elementwise module_simple x data_simple); zennit "
           "test_attribution.py test_gradient_attributor_composite (GuidedBackprop, DeconvNet, BetaSmooth); "
           "iNNvestigate Deconvnet/GuidedBackprop (stored)", relu_gradient_cases),
    Family("bn_after_conv_transpose", "batch-norm after a transposed convolution",
           "zennit tests/test_canonizers.py test_merge_batchnorm_* (ConvTranspose{1,2,3}d of module_linear)", bn_cases),
    Family("stabilizer_modes", "stabiliser modes clip / norm_scale",
           "zennit tests/test_core.py test_stabilize (its 9 clip/norm_scale entries)", stabilizer_cases),
    Family("pass_softmax", "pass on a softmax", "zennit tests/test_rules.py test_simple_rule, Pass on Softmax(dim=1)",
           pass_softmax_cases, why=TRAILING_SOFTMAX),
    Family("deep_taylor_avgpool", "DeepTaylor's average-pool rule",
           "iNNvestigate test_reference_layer.py DeepTaylor / BoundedDeepTaylor on AveragePooling2D (stored)", deep_taylor_cases),
    Family("custom_start", "custom start tensors (seeds)",
           "zennit test_attribution.py test_gradient_attributor_composite (empty, LRP and ExcitationBackprop "
           "composites x grad_outputs_func); LXT tests/test_rules.py, tests/test_functional.py (init_relevance)",
           custom_start_cases),
    Family("captum_multi_input", "captum's several inputs", "captum tests/attr/test_lrp.py test_lrp_multi_inputs, test_lrp_multi",
           captum_multi_input_cases),
    Family("pass_activation_by_name", "(not in issue 27) zennit's Pass on an element-wise activation, by name",
           "zennit test_rules.py test_simple_rule, Pass on module_simple ReLU/Tanh/Sigmoid/Softplus", pass_by_name_cases,
           why="lrpcli passes relevance through element-wise activations that no line names (equal to zennit's Pass "
           "then); a line naming `pass` for them says the same by name (a ConfigError before 2026-12-07, so zennit's "
           "layer_map_base (Activation, Pass()) could not be carried over line by line)", issue=False),
    Family("relu_rules_on_softmax", "(not in issue 27) zennit's ReLU rules hooked on a Softmax",
           "zennit test_rules.py test_simple_rule, ReLU rules on module_simple Softmax(dim=1)", relu_rules_on_softmax_cases,
           why="the ReLU-gradient rules serve element-wise ops; zennit's test hooks them on any module", issue=False),
]
FAMILY_KEYS = [family.key for family in FAMILIES]


def toy_subset(cases: list[Case]) -> list[Case]:
    """A few cases spread over each ported test's list (whose order walks the peer's parametrisation): four of a
    family that ports one test, two of each where it ports several."""
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    count = 4 if len(groups) == 1 else 2
    picked = []
    for members in groups.values():
        step = max(1.0, len(members) / count)
        picked += [members[int(i * step)] for i in range(min(count, len(members)))]
    return picked


@dataclass
class FamilyResult:
    family: Family
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, *statuses: str) -> int:
        return sum(r.status in statuses for r in self.results)


def run(toy: bool = False, families: list[str] | None = None, progress: Callable[[str], None] | None = None) -> list[FamilyResult]:
    """Run the families (all, or those named), each case through lrpcli and its peer."""
    chosen = [f for f in FAMILIES if families is None or f.key in families]
    out = []
    for family in chosen:
        started = time.perf_counter()
        cases = family.cases()
        if toy:
            cases = toy_subset(cases)
        done = FamilyResult(family, [run_case(case) for case in cases])
        done.seconds = time.perf_counter() - started
        if progress:
            progress(f"{family.key}: {len(cases)} cases in {done.seconds:.1f} s")
        out.append(done)
    return out


def _worst(results: list[Result]) -> str:
    differing = [r for r in results if r.status == "differ"]
    if not differing:
        return "0"
    worst = max(differing, key=lambda r: r.difference)
    return f"{len(differing)} (up to {worst.difference:.2g}: {worst.case.name})"


def table(done: list[FamilyResult]) -> str:
    lines = [
        "| family | cases | expressible by name | equal to the peer | equal after a convention | differ (largest) | not expressible / error | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for item in done:
        results = item.results
        refused = item.count("not expressible") + item.count("error")
        lines.append(
            f"| {item.family.title} | {len(results)} | {len(results) - item.count('not expressible')} | {item.count('equal')} | "
            f"{item.count('convention')} | {_worst(results)} | {refused} | {item.seconds:.0f} s |"
        )
    return "\n".join(lines)


def details(done: list[FamilyResult]) -> str:
    """Sources, tolerances, conventions and every case that is not equal (the first five per kind)."""
    out = []
    for item in done:
        fam = item.family
        by_tol: dict[float, list[float]] = {}
        for r in item.results:
            by_tol.setdefault(r.case.tol, [])
            if r.status == "equal":
                by_tol[r.case.tol].append(r.difference)
        tolerances = "; ".join(
            f"tolerance {tol:g}" + (f", largest difference among the equal {max(diffs):.2g}" if diffs else "")
            for tol, diffs in sorted(by_tol.items())
        )
        out.append(f"- **{fam.title}** (`{fam.key}`): {fam.source}. {tolerances.capitalize()}.")
        if fam.why:
            out.append(f"  - {fam.why}.")
        for status in ("convention", "differ", "not expressible", "error"):
            hits = [r for r in item.results if r.status == status]
            for r in hits[:5]:
                extra = f" {r.difference:.3g}" if r.difference == r.difference else ""
                out.append(f"  - {status}: {r.case.name}{extra}{': ' + r.note if r.note else ''}")
            if len(hits) > 5:
                out.append(f"  - ... and {len(hits) - 5} more {status}")
    return "\n".join(out)


NOTES = """Notes:
- Case counts: each family ports its peer tests' whole parametrisation (zennit's two default rng seeds, every
  fixture entry), so most rows hold more cases than issue 27 counted (392 bias-free, 134 ReLU-gradient, 96 batch-norm,
  9 stabiliser, 4 softmax, 2 DeepTaylor); the batch-norm (96) and stabiliser (9) rows match its counts.
- Conventions converted, not counted as differences: captum hands each summand of an addition the whole relevance of
  the sum (lrpcli splits it in proportion; the sum of lrpcli's parts equals each of captum's); LXT adds its
  (unsigned) epsilon to 2 z in a product and to the sum of a mean's inputs, lrpcli to z and to the mean, so LXT's
  product and mean cases run with epsilon / 2 and epsilon / n (without the conversion they differ by about 2e-8).
- iNNvestigate's stored reference layers have all-zero biases, so its *IgnoreBias references cannot tell a bias
  left out from one kept; its rule code written out (with a bias) does. Its LRP and gradient analyzers both seed
  the largest output with its value.
- A trailing softmax is always stripped (lrpcli explains the logits), so zennit's and LXT's lone-softmax cases run
  with a ReLU after the softmax (an identity on its positive outputs)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="four cases per family (seconds)")
    parser.add_argument("--family", action="append", choices=FAMILY_KEYS, help="only this family (repeatable)")
    parser.add_argument("--out", help="write the table here (default: benchmarks/peer_cases_results.md for a full run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    done = run(args.toy, args.family, progress=lambda line: print(line, file=sys.stderr))
    elapsed = time.perf_counter() - started
    command = "python benchmarks/peer_cases.py" + (" --toy" if args.toy else "") + "".join(f" --family {f}" for f in args.family or [])
    versions = f"{_source_state()}; {_versions()}"
    text = "\n".join([
        "# The peers' cases issue 27 counted as not expressible, re-counted",
        "",
        f"`{command}` on {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s, 1 torch thread; {versions}.",
        "",
        table(done),
        "",
        details(done),
        "",
        NOTES,
    ])
    print(text)
    out = args.out or (None if args.toy or args.family else str(ROOT / "benchmarks" / "peer_cases_results.md"))
    if out:
        Path(out).write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    bad = sum(item.count("differ", "error") + item.count("not expressible") for item in done if item.family.issue)
    return 1 if bad else 0


def _source_state() -> str:
    """Which lrpcli ran: the commit of the checkout it was imported from, and whether lrpcli/ had uncommitted edits."""
    import subprocess

    import lrpcli

    root = Path(lrpcli.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "lrpcli"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "lrpcli outside a git checkout"
    return f"lrpcli at {commit}" + (" with uncommitted edits under lrpcli/" if dirty else " (clean)")


def _versions() -> str:
    import importlib.metadata as md

    names = ("torch", "zennit", "captum", "lxt")
    found = []
    for name in names:
        try:
            found.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            found.append(f"{name} absent")
    return ", ".join(found)


if __name__ == "__main__":
    raise SystemExit(main())
