"""Real torchvision architectures in the three forms a user hands lrpcli (marker ``zoo``).

Excluded from the default run (``pyproject.toml`` addopts); torchvision imports only beside
torch 2.14.1, so these run in a venv of their own (see benchmarks/zoo.py's docstring)::

    /work/zoo-venv/bin/python -m pytest -m zoo -q

Each model, at a small input size with random weights, is explained as the eager module,
as its ``torch.jit.trace`` saved and loaded back, and as its ``torch.export`` ``.pt2`` saved and
loaded back: the relevance is finite, shaped like the input, and the same in all three forms.
On pure conv / batch-norm / ReLU / pooling nets with biases and batch-norm shifts zeroed,
LRP-0 equals gradient x input (float64). The full table is benchmarks/zoo_results.md.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from lrpcli import explain

pytestmark = pytest.mark.zoo


def _torchvision():
    try:
        import torchvision
    except Exception as exc:  # not installed, or built for another torch
        pytest.skip(f"torchvision does not import here ({type(exc).__name__}): run in the zoo venv")
    shim = Path(__file__).resolve().parent / "shims"
    if not hasattr(torchvision.models, "list_models") or shim in Path(torchvision.__file__).resolve().parents:
        pytest.skip("only the test shim of torchvision is importable here")
    return torchvision


BATCH = 2
#: name -> (builder kwargs, image size, composite)
MODELS = {
    "resnet18": ({}, 64, "epsilon_plus_flat"),
    "mobilenet_v3_small": ({}, 64, "epsilon_plus_flat"),
    "efficientnet_b0": ({}, 64, "epsilon_plus_flat"),
    "convnext_tiny": ({}, 64, "epsilon_plus_flat"),
    "vit_b_16": ({"image_size": 32}, 32, "attnlrp"),  # two patches a side
    "swin_t": ({}, 64, "attnlrp"),
}
FORMS = ("eager", "torchscript", "pt2")
#: known failures, each with what stops it (benchmarks/zoo_results.md lists them all)
KNOWN = {
    ("swin_t", "torchscript"): "a torch limitation: TS2EPConverter raises GuardOnDataDependentSymNode on the window padding",
}


def _randomize_batchnorm(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


def _randomize_zero_weights(model: torch.nn.Module) -> None:
    """A weight the builder leaves all zero (torchvision ViT's head) would make every logit 0."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)) and not bool(module.weight.any()):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.02)


def _build(name: str, dtype: torch.dtype = torch.float32):
    torchvision = _torchvision()
    kwargs, size, composite = MODELS.get(name, ({}, 64, "epsilon_plus_flat"))
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval().requires_grad_(False)
    _randomize_batchnorm(model)
    _randomize_zero_weights(model)
    model = model.to(dtype)
    x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return model, x, composite


def _as_form(model: torch.nn.Module, x: torch.Tensor, form: str, folder: Path):
    """What a user hands lrpcli: the module, or the path of its saved TorchScript trace or .pt2."""
    if form == "eager":
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if form == "torchscript":
            path = folder / "model.pt"
            torch.jit.save(torch.jit.trace(model, (x,), check_trace=False), str(path))
        else:
            path = folder / "model.pt2"
            program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
            torch.export.save(program, str(path))
    return str(path)


_EAGER: dict[str, torch.Tensor] = {}  # the eager form's relevance, to compare the saved forms with


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", list(MODELS))
def test_relevance_is_finite_in_every_form(name, form, tmp_path, request):
    if (name, form) in KNOWN:
        request.applymarker(pytest.mark.xfail(reason=KNOWN[(name, form)], strict=False))
    model, x, composite = _build(name)
    with torch.no_grad():
        targets = model(x).argmax(1)
    result = explain(_as_form(model, x, form, tmp_path), x, composite, target=targets)
    assert result.relevance.shape == x.shape
    assert torch.isfinite(result.relevance).all()
    assert result.relevance.abs().sum() > 0
    torch.testing.assert_close(result.outputs, model(x), rtol=1e-4, atol=1e-4)
    if form == "eager":
        _EAGER[name] = result.relevance
    elif name in _EAGER:
        torch.testing.assert_close(result.relevance, _EAGER[name], rtol=1e-4, atol=1e-5 * float(_EAGER[name].abs().max()))


def _zero_biases(model: torch.nn.Module) -> torch.nn.Module:
    """Biases and batch-norm shifts zeroed: the net is positively homogeneous, LRP-0 is gradient x input."""
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.zero_()
    return model


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ["resnet18", "alexnet"])
def test_lrp0_equals_gradient_times_input_on_bias_free_relu_nets(name, form, tmp_path):
    model, x, _ = _build(name, torch.float64)
    _zero_biases(model)
    leaf = x.clone().requires_grad_()
    logits = model(leaf)
    targets = logits.detach().argmax(1)
    logits.gather(1, targets[:, None]).sum().backward()
    expected = leaf.grad * x
    result = explain(_as_form(model, x, form, tmp_path), x, "lrp_0", target=targets)
    scale = float(expected.abs().max())
    torch.testing.assert_close(result.relevance, expected, rtol=0, atol=1e-10 * scale)
