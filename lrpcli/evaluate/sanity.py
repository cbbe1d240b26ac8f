"""Model randomisation for the sanity check (Adebayo et al. 2018, cascading).

Finds the model's weighted (conv/linear) layers through the captured graph and builds
copies with the top 1, 2, ... of them re-initialised; the driver compares the heatmaps of
the original and the randomised models with :func:`~lrpcli.evaluate.metrics.spearman`.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import ModelError


@dataclass
class Layer:
    """A weighted layer found in the captured graph, and the model's tensors that hold its parameters."""

    name: str  # the layer path, e.g. "classifier.4"
    weight_key: str
    bias_key: str | None


def _tensors(model: Any) -> dict[str, torch.Tensor]:
    if isinstance(model, torch.export.ExportedProgram):
        return dict(model.state_dict)
    return dict(model.state_dict(keep_vars=True))


def _find_key(tensors: dict[str, torch.Tensor], value: torch.Tensor | None, preferred: str) -> str | None:
    if value is None or not isinstance(value, torch.Tensor):
        return None

    def same(t: torch.Tensor) -> bool:
        return tuple(t.shape) == tuple(value.shape) and torch.equal(t.detach().to(value.device, value.dtype), value.detach())

    if preferred in tensors and same(tensors[preferred]):
        return preferred
    matches = [key for key, t in tensors.items() if same(t)]
    return matches[0] if len(matches) == 1 else None


def weighted_layers(explainer: Any, x: torch.Tensor) -> list[Layer]:
    """The conv/linear layers of the model in forward order, mapped to the model's parameter names."""
    graph = explainer.captured(x)
    tensors = _tensors(explainer.model)
    found: list[Layer] = []
    for node in graph.nodes:
        if node.kind not in ("conv", "linear"):
            continue
        name = node.module or node.name
        weight_key = _find_key(tensors, node.weight, f"{node.module}.weight")
        if weight_key is None:
            raise ModelError(
                f"cannot randomise layer '{name}': its weight is not a parameter of the model",
                hint="the sanity check randomises the model's own parameters; run without --sanity for this model",
            )
        bias = node.bias if isinstance(node.bias, torch.Tensor) else None
        found.append(Layer(name, weight_key, _find_key(tensors, bias, f"{node.module}.bias")))
    if not found:
        raise ModelError("the model has no conv or linear layer to randomise")
    return found


def randomised_copy(model: Any, layers: Sequence[Layer], seed: int = 0) -> Any:
    """A deep copy of ``model`` whose ``layers`` have random weights (and biases).

    Each weight becomes N(0, std(original weight)) noise (so activations keep their scale;
    Adebayo et al. re-initialise similarly), each bias N(0, std(original bias)). A layer's
    noise depends only on ``seed`` and its parameter name, so a cascade randomises the
    shared layers identically at every level.
    """
    clone = copy.deepcopy(model)
    tensors = _tensors(clone)
    with torch.no_grad():
        for layer in layers:
            generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(layer.weight_key.encode()))
            for key in (layer.weight_key, layer.bias_key):
                if key is None:
                    continue
                tensor = tensors[key]
                scale = float(tensor.detach().double().std()) if tensor.numel() > 1 else float(tensor.detach().abs().max())
                noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * (scale or 1.0)
                tensor.copy_(noise.to(tensor.dtype))
    return clone


def cascade(model: Any, layers: Sequence[Layer], depth: int, seed: int = 0) -> list[tuple[list[str], Any]]:
    """Models with the top 1, 2, ..., ``depth`` layers randomised (output side first)."""
    top = list(reversed(layers))[: max(1, min(depth, len(layers)))]
    return [([layer.name for layer in top[: level + 1]], randomised_copy(model, top[: level + 1], seed)) for level in range(len(top))]
