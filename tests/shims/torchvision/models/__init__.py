"""Test-only stand-in for ``torchvision.models`` (see tests/shims/README.md)."""

from . import resnet  # noqa: F401
