"""Test-only stand-in for ``torchvision.models.resnet`` (see tests/shims/README.md).

zennit only uses these classes for ``isinstance`` checks in its torchvision
canonizers, so empty module subclasses are enough; nothing in lrpcli's tests
instantiates them.
"""

from torch import nn


class BasicBlock(nn.Module):
    """Placeholder for torchvision's ResNet basic block (never instantiated by the tests)."""

    expansion = 1


class Bottleneck(nn.Module):
    """Placeholder for torchvision's ResNet bottleneck block (never instantiated by the tests)."""

    expansion = 4
