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


def quantus_explain_func(model: Any, inputs: Any, targets: Any, composite: Any = "epsilon_plus_flat", **options: Any) -> Any:
    """An ``explain_func`` for Quantus (and tools built on its interface): numpy inputs and targets in, the
    relevance shaped like the inputs out, as a numpy array. ``composite`` and ``params`` may come through
    ``explain_func_kwargs``; Quantus's own keys (``device``, ``channel_first``, ...) are accepted and unused."""
    import numpy as np
    import torch

    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    target = torch.as_tensor(np.asarray(targets).reshape(-1), dtype=torch.long)
    result = explain(model, x, composite, target, params=options.get("params"))
    return result.relevance.detach().cpu().numpy()


class LRPAttribution:
    """Captum's interface over lrpcli: ``LRPAttribution(model, composite).attribute(inputs, target=...)`` returns
    the relevance shaped like ``inputs``, for tools that take a Captum attribution method."""

    def __init__(self, model: Any, composite: Any = "epsilon_plus_flat", *, params: dict[str, Any] | None = None):
        self.explainer = Explainer(model, composite, params=params)

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None) -> Any:
        if additional_forward_args is not None:
            from .errors import UsageError

            raise UsageError(
                "additional_forward_args are not passed on; lrpcli takes a model's further inputs by name",
                hint="use lrpcli.Explainer(model).explain(x, target, inputs={name: tensor})",
            )
        return self.explainer.explain(inputs, target).relevance
