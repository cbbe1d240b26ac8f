"""``lrpcli.architectures``, the name model specs and ``--arch`` write (``lrpcli.architectures:MiniVGG``): the
shipped architectures live in :mod:`lrpcli.sources.architectures`; this alias keeps every spec working."""

from .sources.architectures import *  # noqa: F401,F403
from .sources.architectures import __all__  # noqa: F401
