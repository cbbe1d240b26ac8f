"""The public API's doors that take a path as well as a model object: ``explain`` and ``Explainer``.

The engine works on loaded models (it imports nothing that reads files); these load a path first with
:func:`lrpcli.sources.files.load_model` (a TorchScript file, a ``.pt2``, a spec) and hand the engine the model.
"""

from __future__ import annotations

from typing import Any

from .engine import explainer as _engine
from .engine.explainer import Explanation
from .sources.files import load_model


class Explainer(_engine.Explainer):
    __doc__ = _engine.Explainer.__doc__

    def __init__(self, model: Any, composite: Any = "epsilon_plus_flat", *, params: dict[str, Any] | None = None):
        super().__init__(load_model(model), composite, params=params)


def explain(model: Any, x: Any, composite: Any = "epsilon_plus_flat", target: Any = None, **options: Any) -> Explanation:
    return _engine.explain(load_model(model), x, composite, target, **options)


explain.__doc__ = _engine.explain.__doc__
