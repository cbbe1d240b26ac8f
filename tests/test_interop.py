"""The tools users already evaluate with (issue 26, item 7): a Quantus ``explain_func`` and a Captum-style
``attribute``, run by Quantus and checked against Captum's own gradient x input (which LRP-0 equals on a
bias-free ReLU network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lrpcli


def _relu_net(bias: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.ReLU(), nn.Linear(8, 3, bias=bias)).eval()


def test_the_captum_style_attribute_equals_captums_gradient_x_input_for_lrp_0():
    captum_attr = pytest.importorskip("captum.attr")
    model = _relu_net()
    x = torch.rand(5, 6)
    target = torch.tensor([0, 1, 2, 1, 0])
    ours = lrpcli.LRPAttribution(model, "lrp_0").attribute(x, target=target)
    theirs = captum_attr.InputXGradient(model).attribute(x, target=target)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-7)
    with pytest.raises(lrpcli.UsageError):
        lrpcli.LRPAttribution(model).attribute(x, target=0, additional_forward_args=(1,))


def _import_quantus():
    """Quantus imports zennit where it is installed, which imports torchvision: zennit first, against the
    tests' torchvision shim (zennit_support), then Quantus."""
    from zennit_support import import_zennit

    try:
        import_zennit()
    except ModuleNotFoundError:
        pass
    return pytest.importorskip("quantus")


def test_quantus_runs_a_metric_with_the_explain_func():
    quantus = _import_quantus()
    model = _relu_net(bias=True)
    x = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    y = model(torch.from_numpy(x)).argmax(1).numpy()
    relevance = lrpcli.quantus_explain_func(model, x, y, composite="epsilon")
    expected = lrpcli.explain(model, torch.from_numpy(x), "epsilon", target=torch.from_numpy(y)).relevance.numpy()
    np.testing.assert_allclose(relevance, expected, rtol=0, atol=0)
    scores = quantus.Sparseness(disable_warnings=True, display_progressbar=False)(
        model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=lrpcli.quantus_explain_func,
        explain_func_kwargs={"composite": "epsilon"}, device="cpu",
    )
    assert len(scores) == 4 and all(np.isfinite(scores))
    direct = quantus.Sparseness(disable_warnings=True, display_progressbar=False)(
        model=model, x_batch=x, y_batch=y, a_batch=expected, device="cpu",
    )
    np.testing.assert_allclose(scores, direct)  # the metric saw the relevance explain() gives
