"""lrpcli: Layer-wise Relevance Propagation for trained PyTorch models.

    from lrpcli import explain
    result = explain(model, x, composite="epsilon_plus_flat")
    result.relevance   # shaped like x
    result.outputs     # the model's logits
    result.targets     # the explained class per sample

Names are imported lazily so that ``lrp --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "explain": "lrpcli.api",
    "explain_texts": "lrpcli.api",
    "concepts": "lrpcli.api",
    "Concepts": "lrpcli.runs.concepts",
    "references": "lrpcli.api",
    "References": "lrpcli.runs.concepts",
    "TextExplanation": "lrpcli.runs.texts",
    "Explainer": "lrpcli.api",
    "LRPAttribution": "lrpcli.api",
    "quantus_explain_func": "lrpcli.api",
    "Explanation": "lrpcli.engine.explainer",
    "Contrast": "lrpcli.engine.explainer",
    "LayerRelevance": "lrpcli.engine.explainer",
    "load_model": "lrpcli.sources.files",
    "evaluate": "lrpcli.evaluate",
    "spray": "lrpcli.runs.spray",
    "SprayResult": "lrpcli.runs.spray",
    "capture": "lrpcli.engine.capture",
    "Graph": "lrpcli.engine.graph",
    "load_composite": "lrpcli.engine.composite_yaml",
    "Composite": "lrpcli.engine.composite",
    "LrpError": "lrpcli.errors",
    "UsageError": "lrpcli.errors",
    "ConfigError": "lrpcli.errors",
    "ModelError": "lrpcli.errors",
    "UnsupportedOpError": "lrpcli.errors",
    "InputError": "lrpcli.errors",
    "CheckFailed": "lrpcli.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .engine.composite import Composite
    from .engine.composite_yaml import load_composite
    from .api import Explainer, LRPAttribution, concepts, explain, explain_texts, quantus_explain_func, references
    from .runs.concepts import Concepts, References
    from .runs.texts import TextExplanation
    from .engine.explainer import Contrast, Explanation, LayerRelevance
    from .evaluate import evaluate
    from .runs.spray import spray
    from .runs.spray import SprayResult
    from .errors import CheckFailed, ConfigError, InputError, LrpError, ModelError, UnsupportedOpError, UsageError
    from .engine.capture import capture
    from .engine.graph import Graph
    from .sources.files import load_model


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lrpcli' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public API (what ``dir(lrpcli)`` and ``help(lrpcli)`` list), not this module's helpers."""
    return list(__all__)
