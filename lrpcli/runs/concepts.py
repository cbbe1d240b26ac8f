"""Concept Relevance Propagation (Achtibat et al., Nature Machine Intelligence 2023) over inputs and datasets.

Per input: every channel's relevance at a layer for the target ("how much"), and for chosen channels the
conditional heatmap ("where"): the walk with the relevance at the layer masked to that channel. LRP is linear in
the relevance at the layer, so K conditions of one input are K rows of one batched walk (the input repeated, one
channel mask per row) rather than K explanations.

Relevance maximisation: per channel the K dataset inputs where the channel is most relevant (and, to compare, most
active), kept as a running top-K (:class:`TopK`) that merges exactly, and the crop of the input that holds most of
its conditional relevance (:func:`crop_box`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..engine.explainer import Explainer, layer_outputs
from ..engine.propagate import record
from ..errors import UsageError


@dataclass
class Concepts:
    """What :func:`explain_concepts` returns for N inputs and a layer of C channels."""

    layer: str
    relevance: np.ndarray  # (N, C): each channel's relevance at the layer for the sample's target
    activation: np.ndarray  # (N, C): each channel's largest activation at the layer
    targets: np.ndarray  # (N,)
    channels: np.ndarray  # (N, K): the channels whose conditional heatmaps are in ``maps``
    maps: np.ndarray  # (N, K, *input shape): conditional heatmaps

    def table(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One row per input and channel (``concepts.csv``): input, layer, channel, target, relevance, activation."""
        names = list(names) if names is not None else [str(i) for i in range(len(self.relevance))]
        return [
            {
                "input": names[i],
                "layer": self.layer,
                "channel": c,
                "target": int(self.targets[i]),
                "relevance": float(self.relevance[i, c]),
                "activation": float(self.activation[i, c]),
            }
            for i in range(self.relevance.shape[0])
            for c in range(self.relevance.shape[1])
        ]


def _per_channel(values: torch.Tensor, how: str) -> torch.Tensor:
    """(N, C, ...) -> (N, C): summed (relevance) or the largest value (activation) over the other dims."""
    if values.ndim < 2:
        raise UsageError(f"the layer's output is shaped {tuple(values.shape)}: concepts need (batch, channels, ...)")
    flat = values.reshape(values.shape[0], values.shape[1], -1)
    return flat.sum(2) if how == "sum" else flat.amax(2)


def layer_activation(explainer: Explainer, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Each channel's largest activation at ``layer`` (N, C), from one forward pass through the prepared graph."""
    graph, _ = explainer.prepare(x)
    (node,) = layer_outputs(graph, [layer])
    with torch.inference_mode():
        values = record(graph, x)
        return _per_channel(values[node], "max").clone()


def channel_relevance(explainer: Explainer, x: torch.Tensor, layer: str, target: Any = None, init: Any = "value") -> tuple[torch.Tensor, torch.Tensor]:
    """Each channel's relevance at ``layer`` (N, C) and the targets (N,), from one walk."""
    result = explainer.explain(x, target, init=init, layers=[layer])
    if layer not in result.layer_maps:
        raise UsageError(f"no relevance reached layer '{layer}' (it is not on the way from the output to the input)")
    return _per_channel(result.layer_maps[layer], "sum"), result.targets


def conditional_maps(
    explainer: Explainer,
    x: torch.Tensor,
    targets: torch.Tensor,
    layer: str,
    channels: torch.Tensor,
    count: int,
    init: Any = "value",
    batch_size: int = 32,
) -> torch.Tensor:
    """The conditional heatmaps (N, K, *x.shape[1:]) of ``channels`` (N, K) of the ``count`` at ``layer``: the N*K
    conditions walked as rows of batches of ``batch_size`` (each input repeated, one channel kept per row)."""
    n, k = channels.shape
    rows = torch.arange(n, device=x.device).repeat_interleave(k)
    flat = channels.reshape(-1).to(x.device)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    outputs = []
    for start in range(0, n * k, batch_size):
        index, picked = rows[start : start + batch_size], flat[start : start + batch_size]
        masks = torch.zeros(len(index), count, dtype=dtype, device=x.device)
        masks[torch.arange(len(index), device=x.device), picked] = 1
        outputs.append(explainer.explain(x[index], targets[index], init=init, condition={layer: masks}).relevance)
    return torch.cat(outputs).reshape(n, k, *x.shape[1:])


def choose_channels(relevance: torch.Tensor, top: int | None = None, channels: Sequence[int] | None = None) -> torch.Tensor:
    """(N, K): the named ``channels`` for every input, or each input's ``top`` channels by relevance (most for the
    target first; ties to the lower channel)."""
    count = relevance.shape[1]
    if channels is not None:
        bad = [c for c in channels if not 0 <= int(c) < count]
        if bad:
            raise UsageError(f"channel {bad[0]} is out of range: the layer has {count} channels (0..{count - 1})")
        return torch.as_tensor(list(channels), dtype=torch.long).expand(relevance.shape[0], -1).clone()
    if top is None or top < 1:
        raise UsageError(f"top must be at least 1, got {top}", hint="or name the channels")
    order = torch.sort(-relevance.double(), dim=1, stable=True).indices
    return order[:, : min(top, count)].cpu()


def explain_concepts(
    explainer: Explainer,
    x: torch.Tensor,
    layer: str,
    target: Any = None,
    *,
    top: int | None = 5,
    channels: Sequence[int] | None = None,
    init: Any = "value",
    batch_size: int = 32,
) -> Concepts:
    """Every channel's relevance at ``layer`` for each input of ``x`` and the conditional heatmaps of its ``top``
    channels (or of the named ``channels``)."""
    relevance, targets = channel_relevance(explainer, x, layer, target, init)
    chosen = choose_channels(relevance, top, channels)
    maps = conditional_maps(explainer, x, targets, layer, chosen, relevance.shape[1], init, batch_size)
    activation = layer_activation(explainer, x, layer)
    return Concepts(
        layer=layer,
        relevance=relevance.double().cpu().numpy(),
        activation=activation.double().cpu().numpy(),
        targets=targets.cpu().numpy(),
        channels=chosen.cpu().numpy(),
        maps=maps.detach().cpu().numpy(),
    )


# --------------------------------------------------------------------------- relevance maximisation


class TopK:
    """Per channel, the ``k`` largest values seen and the inputs that gave them. Ties go to the input name that
    sorts first, so the result does not depend on the order inputs arrive in: the top-K of shards merged is the
    top-K of the whole set, exactly."""

    def __init__(self, k: int, channels: int):
        if k < 1:
            raise UsageError(f"--reference must be at least 1, got {k}")
        self.k, self.channels = k, channels
        self.best: list[list[tuple[float, str]]] = [[] for _ in range(channels)]

    def _top(self, pairs: list[tuple[float, str]]) -> list[tuple[float, str]]:
        return sorted(pairs, key=lambda pair: (-pair[0], pair[1]))[: self.k]

    def add(self, values: np.ndarray, names: Sequence[str]) -> None:
        """``values`` (N, C) of the N inputs ``names``."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(names), self.channels):
            raise UsageError(f"expected values shaped ({len(names)}, {self.channels}), got {values.shape}")
        for c in range(self.channels):
            column = values[:, c]
            keep = range(len(column))
            if len(column) > self.k:  # what can still place: the k largest and every value tied with the k-th
                keep = np.flatnonzero(column >= np.partition(column, len(column) - self.k)[len(column) - self.k])
            self.best[c] = self._top(self.best[c] + [(float(column[i]), str(names[i])) for i in keep])

    def merge(self, other: "TopK") -> "TopK":
        if (other.k, other.channels) != (self.k, self.channels):
            raise UsageError(f"cannot merge a top-{other.k} of {other.channels} channels into a top-{self.k} of {self.channels}")
        merged = TopK(self.k, self.channels)
        merged.best = [self._top(a + b) for a, b in zip(self.best, other.best)]
        return merged

    def ranking(self, channel: int) -> list[tuple[str, float]]:
        """(input, value), best first."""
        return [(name, value) for value, name in self.best[channel]]


def crop_box(heat: np.ndarray, share: float = 0.8) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), end exclusive: the bounding box of the fewest pixels that hold ``share`` of the
    map's positive relevance (``heat`` (H, W), or (C, H, W) summed over channels). The whole image where no
    relevance is positive."""
    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim == 3:
        heat = heat.sum(0)
    positive = np.clip(heat, 0, None).ravel()
    total = positive.sum()
    height, width = heat.shape
    if not total > 0:
        return 0, 0, height, width
    order = np.argsort(-positive, kind="stable")
    needed = int(np.searchsorted(np.cumsum(positive[order]), share * total)) + 1
    rows, cols = np.unravel_index(order[:needed], heat.shape)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def relevance_maximisation(
    explainer: Explainer,
    batches: Iterable[tuple[Sequence[str], torch.Tensor]],
    layer: str,
    k: int,
    target: Any = None,
    init: Any = "value",
) -> tuple[TopK, TopK]:
    """Over ``batches`` of (names, x): per channel the ``k`` inputs where it is most relevant for the target (its
    summed relevance at the layer) and those where it is most active (its largest activation)."""
    relevant = active = None
    for names, x in batches:
        relevance, _ = channel_relevance(explainer, x, layer, target, init)
        activation = layer_activation(explainer, x, layer)
        if relevant is None:
            relevant, active = TopK(k, relevance.shape[1]), TopK(k, relevance.shape[1])
        relevant.add(relevance.double().cpu().numpy(), names)
        active.add(activation.double().cpu().numpy(), names)
    if relevant is None:
        raise UsageError("no inputs to rank", hint="give a folder of images")
    return relevant, active
