"""Shared fixtures: small seeded models with non-trivial batch-norm statistics."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _graph_cache_of_this_run(tmp_path_factory):
    """The graph cache (lrpcli/sources/cache.py) of the test run lives in a folder of its own, never in ~/.cache."""
    import os

    folder = tmp_path_factory.mktemp("graph-cache")
    previous = os.environ.get("LRP_CACHE_DIR")
    os.environ["LRP_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("LRP_CACHE_DIR", None)
    else:
        os.environ["LRP_CACHE_DIR"] = previous


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every batch-norm random statistics and affine parameters, so folding matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 2 - 1)
    return model.eval()


@pytest.fixture
def mini_vgg():
    from lrpcli.sources.architectures import MiniVGG

    torch.manual_seed(0)
    return MiniVGG(width=4).eval()


@pytest.fixture
def small_resnet():
    from lrpcli.sources.architectures import ResNet

    torch.manual_seed(1)
    return randomize_batchnorm(ResNet(layers=(1, 1), widths=(4, 8), num_classes=3))


@pytest.fixture
def small_vgg_bn():
    from lrpcli.sources.architectures import VGG

    torch.manual_seed(2)
    return randomize_batchnorm(VGG(cfg=(4, "M", 8, "M"), batch_norm=True, num_classes=5, hidden=16, pool_size=2))
