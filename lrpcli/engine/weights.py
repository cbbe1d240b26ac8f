"""What the engine needs to know of a loaded model object: that it is one, and its tensors.

Its own module, importing only torch, so that sources (models.py) and runs can use it without importing
the engine's compiler-facing parts (torch.fx, torch.export).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ModelError


def model_tensors(model: Any) -> list[torch.Tensor]:
    """A loaded model's parameters and buffers, whatever its form."""
    if isinstance(model, torch.export.ExportedProgram):
        return [t for t in list(model.state_dict.values()) + list(model.constants.values()) if isinstance(t, torch.Tensor)]
    return [t for t in model.state_dict(keep_vars=True).values() if isinstance(t, torch.Tensor)]


def loaded_model(model: Any) -> Any:
    """``model`` when it is something the engine captures (an nn.Module, a ScriptModule, an ExportedProgram)."""
    if isinstance(model, (torch.nn.Module, torch.export.ExportedProgram)):
        return model
    raise ModelError(
        f"cannot use an object of type {type(model).__name__} as a model",
        hint="pass an nn.Module, a ScriptModule, an ExportedProgram, or a path to lrpcli.explain / lrpcli.Explainer",
    )
