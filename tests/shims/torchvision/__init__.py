"""Test-only stand-in for torchvision (see tests/shims/README.md).

Provides just enough for ``import zennit`` (zennit 0.5.1 imports
``torchvision.models.resnet.BasicBlock`` / ``Bottleneck`` at import time).
It is loaded only by ``tests/zennit_support.import_zennit()``, which removes it
from ``sys.modules`` again right after zennit has been imported.
"""

__version__ = "0.0.0+lrpcli-test-shim"
LRPCLI_TEST_SHIM = True

from . import models  # noqa: E402,F401
