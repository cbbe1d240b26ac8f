"""Test-only stand-in for ``torchvision.models.vision_transformer`` (see tests/shims/README.md).

LXT 2.1 imports this module at ``import lxt.efficient`` and uses nothing from it but ``nn``
(its torchvision-ViT preset patches ``vision_transformer.nn.GELU`` / ``LayerNorm`` /
``MultiheadAttention``, i.e. torch's own classes). Only ``tests/lxt_support.py`` loads it, in
the separate process that runs LXT.
"""

from torch import nn  # noqa: F401

LRPCLI_TEST_SHIM = True
