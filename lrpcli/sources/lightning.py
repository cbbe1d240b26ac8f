"""Lightning checkpoints (``.ckpt``) as state dicts: the weights under ``state_dict``, read weights-only.

A LightningModule keeps its network as an attribute, so its keys carry that attribute's name
(``model.features.0.weight``) where the architecture expects ``features.0.weight``: the common prefix is
stripped when that makes the keys fit exactly. ``hyper_parameters`` (what ``save_hyperparameters()`` kept)
become the architecture's keyword arguments where they name its parameters; ``--arch-kwargs`` wins.
Nothing is imported from Lightning: its ``AttributeDict`` is read as a plain dict.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

#: where Lightning's dict of hyper-parameters has lived; read as a plain dict (weights-only, no import)
_ATTRIBUTE_DICTS = ("lightning.fabric.utilities.data.AttributeDict", "pytorch_lightning.utilities.parsing.AttributeDict")


def safe_globals():
    """The context in which ``torch.load(weights_only=True)`` reads a Lightning checkpoint's hyper-parameters."""
    return torch.serialization.safe_globals([(dict, name) for name in _ATTRIBUTE_DICTS])  # a dict stands in


def is_checkpoint(loaded: Any) -> bool:
    return isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict)


def hyper_parameters(loaded: Any) -> dict[str, Any]:
    """A checkpoint's hyper-parameters as a plain dict (empty where it has none)."""
    found = loaded.get("hyper_parameters") if isinstance(loaded, dict) else None
    return {str(k): v for k, v in found.items()} if isinstance(found, dict) else {}


def arch_kwargs(factory: Callable, hparams: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` plus the hyper-parameters that name a parameter of ``factory`` (``given`` wins)."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C extension: no signature to read
        return dict(given)
    named = {
        name for name, p in parameters.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {**{k: v for k, v in hparams.items() if k in named}, **given}


def fit_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """``state`` with the common prefix stripped that makes its keys exactly ``expected`` (the attribute a
    LightningModule keeps its network in: ``model.``, ``net.backbone.``); ``state`` as it is otherwise."""
    if set(state) == expected:
        return state
    prefixes = {key[: index + 1] for key in state for index, char in enumerate(key) if char == "."}
    for prefix in sorted(prefixes, key=len):
        inner = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        if set(inner) == expected:
            return inner
    return state
