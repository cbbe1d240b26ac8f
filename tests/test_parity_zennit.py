"""Parity with zennit 0.5.1, the reference implementation (design.md, section 2).

Every built-in composite, on four small models with random weights and random
batch-norm statistics (so folding matters): lrpcli's input relevance must equal
zennit's to ``max|ours - zennit| <= RTOL * max|zennit|``.

The zennit side runs zennit's own composites and rules through its ``Gradient``
attributor, seeded with lrpcli's initial relevance; the models are "twins" with
the same weights in the form zennit needs (residual adds as ``zennit.layer.Sum``,
batch-norms merged by zennit's canonizers, made exact -- see
``zennit_support.exact_merge``). Skips, with an install hint, where zennit is
not installed.

Margins (measured when written): float32 differences reach ~5e-6 relative
(ResNet, ``epsilon``: epsilon-rule denominators near zero amplify rounding); in
float64 the two agree to ~1e-12, which ``test_float64_matches_zennit_tightly``
uses to catch slips too small for the float32 tolerance.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

try:  # tests/ as a package or as a plain folder on sys.path (pytest's default)
    from . import zennit_support as zs
except ImportError:
    import zennit_support as zs

from lrpcli.sources.architectures import MLP, VGG, MiniVGG, ResNet

RTOL = 1e-5
BATCH = 3


@pytest.fixture(scope="module", autouse=True)
def zennit():
    return zs.require_zennit()


@pytest.fixture(autouse=True)
def _two_threads():
    # the file is sized for 2 CPU cores (< 60 s); more threads only add overhead for these small models
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Case:
    model: nn.Module  # eval mode, shared between tests: never modify it
    x: torch.Tensor


@functools.lru_cache(maxsize=None)
def _case(kind: str) -> Case:
    seed = {"mlp": 11, "minivgg": 12, "vgg_bn": 13, "resnet": 14}[kind]
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "mlp":
            model, shape = MLP(in_features=20, hidden=(32, 16), num_classes=4), (BATCH, 20)
        elif kind == "minivgg":
            model, shape = MiniVGG(num_classes=6, width=8), (BATCH, 3, 32, 32)
        elif kind == "vgg_bn":
            model = VGG(cfg=(8, "M", 16, "M"), batch_norm=True, num_classes=5, hidden=32, pool_size=2)
            shape = (BATCH, 3, 16, 16)
        elif kind == "resnet":
            model, shape = ResNet(layers=(1, 1), widths=(8, 16), num_classes=4), (BATCH, 3, 32, 32)
        else:  # pragma: no cover
            raise KeyError(kind)
    zs.randomize_batchnorm(model, generator)
    model.eval()
    x = torch.randn(shape, generator=generator).clamp(-2.5, 2.5)
    return Case(model=model, x=x)


@functools.lru_cache(maxsize=None)
def _double(kind: str) -> tuple[nn.Module, torch.Tensor]:
    case = _case(kind)
    return copy.deepcopy(case.model).double(), case.x.double()


MODELS = ("mlp", "minivgg", "vgg_bn", "resnet")
IMAGE_MODELS = ("minivgg", "vgg_bn", "resnet")


@pytest.fixture(params=MODELS)
def case(request) -> Case:
    return _case(request.param)


@pytest.fixture(params=IMAGE_MODELS)
def image_case(request) -> Case:
    return _case(request.param)


def test_models_have_batchnorm_statistics_that_matter():
    """Guard the fixtures: folding must change the weights, or the BN tests prove nothing."""
    for kind in ("vgg_bn", "resnet"):
        norms = [m for m in _case(kind).model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert norms, kind
        for bn in norms:
            assert (bn.running_mean.abs() > 1e-3).any() and ((bn.running_var - 1).abs() > 1e-2).any()
            assert ((bn.weight - 1).abs() > 1e-2).any() and (bn.bias.abs() > 1e-3).any()


# --------------------------------------------------------------------------- helpers


def ours(model: nn.Module, x: torch.Tensor, composite: Any, target: Any = None, init: str = "value"):
    """lrpcli's explanation. The (cached) model itself is passed, so lrpcli's capture cache spares
    a re-export per test; the check afterwards keeps the shared model honest."""
    from lrpcli import explain

    before = {key: value.clone() for key, value in model.state_dict().items()}
    x_before = x.clone()
    result = explain(model, x, composite=composite, target=target, init=init)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), (
        "explain() changed the model's parameters or buffers"
    )
    assert torch.equal(x, x_before), "explain() changed its input"
    assert not model.training, "explain() left the model in training mode"
    return result


def reference(case_model: nn.Module, x: torch.Tensor, targets: torch.Tensor, name: str, init: str = "value", **kwargs):
    """zennit's input relevance for built-in ``name`` (zennit_composite kwargs: epsilon, gamma, low, high, ...)."""
    with torch.no_grad():
        logits = case_model(x)
    twin, canonizers = zs.zennit_twin(case_model)
    composite = zs.zennit_composite(name, canonizers=canonizers, input_ndim=x.ndim, **kwargs)
    outputs, relevance = zs.zennit_lrp(twin, x, composite, zs.initial_relevance(logits, targets, init))
    # the twin computes the model's function (exact merge), or the comparison is meaningless
    assert_close(outputs, logits, "zennit twin logits vs model logits")
    return relevance


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    assert torch.isfinite(expected).all(), f"{what}: zennit gave non-finite values"
    scale = expected.abs().max().item()
    assert scale > 0, f"{what}: zennit's result is all zeros, the comparison proves nothing"
    difference = (actual - expected).abs()
    worst = difference.max().item()
    if worst > rtol * scale:
        index = tuple(int(i) for i in torch.unravel_index(difference.argmax(), difference.shape))
        raise AssertionError(
            f"{what}: max|ours - zennit| = {worst:.3g} > {rtol:g} * max|zennit| = {rtol * scale:.3g} "
            f"(relative {worst / scale:.3g}; worst at {index}: ours {actual[index].item():.6g}, "
            f"zennit {expected[index].item():.6g})"
        )


def check(case: Case, composite: Any, name: str, target: Any = None, init: str = "value", x=None, **zennit_kwargs):
    x = case.x if x is None else x
    result = ours(case.model, x, composite, target=target, init=init)
    with torch.no_grad():
        logits = case.model(x)
    assert_close(result.outputs.detach(), logits, "outputs")
    if target is None:
        expected_targets = logits.argmax(dim=1)
    else:
        expected_targets = torch.as_tensor(target, dtype=torch.long).reshape(-1).expand(x.shape[0])
    assert torch.equal(torch.as_tensor(result.targets).reshape(-1).long(), expected_targets), "targets"
    expected = reference(case.model, x, expected_targets, name, init=init, **zennit_kwargs)
    assert_close(result.relevance.detach(), expected, f"relevance ({name})")
    return result, expected


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", zs.BUILTIN_COMPOSITES)
def test_builtin_composite_matches_zennit(case, name):
    kwargs = {}
    x = case.x
    if name == "epsilon_gamma_box":
        # the built-in's bounds are [0, 1] (configs/epsilon_gamma_box.yaml): keep the input inside them
        kwargs = {"low": 0.0, "high": 1.0}
        x = (case.x + 2.5) / 5.0
    check(case, name, name, x=x, **kwargs)


def test_hyphenated_builtin_spelling_matches_zennit():
    check(_case("minivgg"), "Epsilon-Plus-Flat", "epsilon_plus_flat")


def test_gamma_box_with_bounds_matches_zennit(case):
    params = {"low": -3.0, "high": 3.0, "epsilon": 1e-6, "gamma": 0.25, "stabilizer": 1e-6}
    check(case, {"extends": "epsilon_gamma_box", "params": params}, "epsilon_gamma_box", **params)


def test_gamma_box_with_per_channel_bounds_and_other_params_matches_zennit(image_case):
    params = {
        "low": [-2.6, -2.8, -3.1],
        "high": [2.5, 2.9, 3.3],
        "epsilon": 1e-3,
        "gamma": 0.5,
        "stabilizer": 1e-6,
    }
    check(image_case, {"extends": "epsilon_gamma_box", "params": params}, "epsilon_gamma_box", **params)


@pytest.mark.parametrize("name", ["epsilon_plus", "epsilon_alpha2_beta1_flat"])
def test_non_default_epsilon_matches_zennit(case, name):
    check(case, {"extends": name, "params": {"epsilon": 0.05}}, name, epsilon=0.05)


def test_target_as_int_matches_zennit(case):
    name, kwargs = "epsilon_gamma_box", {"low": -3.0, "high": 3.0}
    num_classes = _num_classes(case)
    result, _ = check(case, {"extends": name, "params": kwargs}, name, target=num_classes - 1, **kwargs)
    assert torch.equal(result.targets.long(), torch.full((BATCH,), num_classes - 1))


def test_target_as_tensor_matches_zennit(case):
    name = "epsilon_alpha2_beta1"
    num_classes = _num_classes(case)
    target = torch.tensor([num_classes - 1, 0, 1])
    result, _ = check(case, name, name, target=target)
    assert torch.equal(result.targets.long(), target)


def test_one_hot_init_matches_zennit_seed(case):
    result, expected = check(case, "epsilon_plus_flat", "epsilon_plus_flat", init="one-hot")
    # one-hot and value seeds differ by the target logit per sample, a good cross-check of both
    value = ours(case.model, case.x, "epsilon_plus_flat").relevance.detach()
    logit = result.outputs.detach().gather(1, result.targets.long().view(-1, 1)).view(-1, *[1] * (case.x.ndim - 1))
    assert_close(value, expected * logit, "value seed vs one-hot seed times logit")


def _num_classes(case: Case) -> int:
    with torch.no_grad():
        return case.model(case.x[:1]).shape[1]


def _block_input_consumer(module_name: str) -> bool:
    """A ResNet block's conv1 / downsample conv shares its input with the other path of the block."""
    parts = module_name.split(".")
    return module_name.startswith("layer") and (parts[-1] == "conv1" or parts[-2:] == ["downsample", "0"])


@pytest.mark.parametrize("name", ["epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_layer_relevance_matches_zennit(case, name):
    """Per-layer totals: what each conv/linear layer hands down, per sample, equals zennit's.

    (Where two layers share an input -- a ResNet block's conv1 and its identity or
    downsample path -- zennit's hook sees the sum, so those layers are left out.)
    """
    from lrpcli import explain

    result = explain(case.model, case.x, name, layer_relevance=True)
    layers = result.layers
    twin, canonizers = zs.zennit_twin(case.model)
    composite = zs.zennit_composite(name, canonizers=canonizers, input_ndim=case.x.ndim)
    seed = zs.initial_relevance(result.outputs, result.targets)
    captured = zs.zennit_layer_relevances(twin, case.x, composite, seed, (nn.Conv2d, nn.Linear))
    compared = 0
    for layer in layers.values():
        if layer.kind not in ("conv", "linear") or _block_input_consumer(layer.module):
            continue
        assert layer.module in captured, f"no zennit relevance for layer '{layer.module}'"
        reference_in = captured[layer.module]
        totals = reference_in.flatten(1).sum(1)
        scale = reference_in.abs().flatten(1).sum(1).max().item()
        worst = (layer.relevance_in - totals).abs().max().item()
        assert worst <= RTOL * scale, f"{layer.module} ({layer.rule}): totals {layer.relevance_in} vs zennit {totals}"
        compared += 1
    assert compared >= 3


@pytest.mark.parametrize("kind", ["vgg_bn", "resnet"])
@pytest.mark.parametrize("name", zs.BUILTIN_COMPOSITES)
def test_float64_matches_zennit_tightly(kind, name):
    """In float64 the two agree to ~1e-12; a tight tolerance catches slips (a stabiliser in the wrong
    place, a 1e-6 offset) that float32 rounding (up to ~5e-6 relative here, see RTOL) would hide."""
    model, x = _double(kind)
    kwargs = {"low": -3.0, "high": 3.0} if name == "epsilon_gamma_box" else {}
    spec = {"extends": name, "params": kwargs} if kwargs else name
    result = ours(model, x, spec)
    assert result.relevance.dtype == torch.float64
    targets = model(x).argmax(1)
    expected = reference(model, x, targets, name, **kwargs)
    assert_close(result.relevance.detach(), expected, f"float64 relevance ({name})", rtol=1e-9)


# --------------------------------------------------------------------------- the reference itself


def test_tolerance_separates_the_composites():
    """The parity checks can fail: zennit's composites differ from each other far beyond RTOL."""
    case = _case("minivgg")
    targets = case.model(case.x).argmax(1)
    results = {
        name: reference(case.model, case.x, targets, name, low=-3.0, high=3.0)
        for name in ("epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")
    }
    names = sorted(results)
    for i, left in enumerate(names):
        for right in names[i + 1:]:
            a, b = results[left], results[right]
            assert (a - b).abs().max() > 100 * RTOL * b.abs().max(), (left, right)


@pytest.mark.parametrize("kind", ["mlp", "resnet"])
def test_zennit_reference_conserves_on_bias_free_models(kind):
    """The zennit side is sound: LRP-0 on a bias-free net (after folding) conserves the target logit."""
    case = _case(kind)
    model = copy.deepcopy(case.model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.BatchNorm2d):  # folded bias (bias - mean * scale) must vanish too
                module.running_mean.zero_()
                module.bias.zero_()
        logits = model(case.x)
    targets = logits.argmax(1)
    relevance = reference(model, case.x, targets, "lrp_0")
    sums = relevance.flatten(1).sum(1)
    expected = logits.gather(1, targets.view(-1, 1)).view(-1)
    assert torch.allclose(sums, expected, rtol=1e-4, atol=1e-6), (sums, expected)


def test_import_zennit_leaves_no_fake_torchvision():
    import sys

    zs.import_zennit()
    assert "zennit.torchvision" in sys.modules
    assert not any(
        getattr(module, "LRPCLI_TEST_SHIM", False)
        for name, module in list(sys.modules.items())
        if name == "torchvision" or name.startswith("torchvision.")
    )
    assert str(zs.SHIM_DIR) not in sys.path


def test_every_builtin_composite_has_a_zennit_counterpart():
    """A new built-in composite is parity-tested the day it is added (or this fails): against zennit, or,
    for the transformer composites zennit has no counterpart of, against the modified-gradient oracle."""
    from lrpcli.engine.composite_yaml import builtin_names
    from test_modern_rules import MODES

    oracle_tested = [composite for composite, _ in MODES]
    oracle_tested.append("mambalrp")  # tests/test_mamba.py: against the authors' rules written as a modified gradient
    assert sorted(builtin_names()) == sorted(list(zs.BUILTIN_COMPOSITES) + oracle_tested)
