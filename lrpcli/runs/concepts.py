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

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..data.images import ImageInput, Preprocessing
from ..engine.explainer import Explainer, layer_outputs
from ..engine.propagate import record
from ..errors import InputError, UsageError
from ..outputs import atomic_text, inside, safe_label, save_array, write_atomic
from ..render.heatmaps import enlarge, heatmap_rgb, png_bytes
from .choices import Failure, resolve_device, resolve_dtype
from .shards import Shard, suffix


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

    def extend(self, channel: int, pairs: Sequence[tuple[float, str]]) -> None:
        """Offer (value, input) pairs for one channel (e.g. read back from a shard's file)."""
        self.best[channel] = self._top(self.best[channel] + list(pairs))

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


class Ranking:
    """A relevance maximisation under way: the two running top-K tables, each input's target and the inputs
    done; saved and loaded as JSON so that an interrupted run resumes where it stopped."""

    def __init__(self, k: int):
        self.k = k
        self.relevant: TopK | None = None
        self.active: TopK | None = None
        self.targets: dict[str, int] = {}

    def add(self, explainer: Explainer, names: Sequence[str], x: torch.Tensor, layer: str, target: Any = None, init: Any = "value") -> None:
        relevance, explained = channel_relevance(explainer, x, layer, target, init)
        activation = layer_activation(explainer, x, layer)
        if self.relevant is None:
            self.relevant, self.active = TopK(self.k, relevance.shape[1]), TopK(self.k, relevance.shape[1])
        self.relevant.add(relevance.double().cpu().numpy(), names)
        self.active.add(activation.double().cpu().numpy(), names)
        self.targets.update(zip(names, (int(t) for t in explained)))

    def to_json(self) -> bytes:
        tables = {kind: table.best for kind, table in (("relevant", self.relevant), ("active", self.active)) if table is not None}
        return json.dumps({"k": self.k, "targets": self.targets, **tables}).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Ranking":
        saved = json.loads(data)
        ranking = cls(int(saved["k"]))
        ranking.targets = {str(name): int(t) for name, t in saved["targets"].items()}
        for kind in ("relevant", "active"):
            if kind in saved:
                table = TopK(ranking.k, len(saved[kind]))
                table.best = [[(float(v), str(n)) for v, n in pairs] for pairs in saved[kind]]
                setattr(ranking, kind, table)
        return ranking


def crop_boxes(
    explainer: Explainer,
    pairs: Sequence[tuple[str, int]],
    fetch: Any,
    targets: dict[str, int],
    layer: str,
    count: int,
    init: Any = "value",
    batch_size: int = 32,
    share: float = 0.8,
) -> dict[tuple[str, int], tuple[int, int, int, int]]:
    """The crop (:func:`crop_box`) of each (input, channel) pair: the box holding ``share`` of the channel's
    positive conditional relevance in that input for its target. ``fetch(names)`` returns those inputs as one
    batch; pairs are walked ``batch_size`` at a time, so only that many inputs are held."""
    boxes: dict[tuple[str, int], tuple[int, int, int, int]] = {}
    pairs = sorted(set(pairs))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        names = sorted({name for name, _ in chunk})
        batch = fetch(names)
        x = batch[torch.tensor([names.index(name) for name, _ in chunk], device=batch.device)]
        conditions = torch.tensor([[channel] for _, channel in chunk])
        explained = torch.tensor([targets[name] for name, _ in chunk], device=batch.device)
        maps = conditional_maps(explainer, x, explained, layer, conditions, count, init, batch_size)
        for pair, heat in zip(chunk, maps[:, 0].double().cpu().numpy()):
            boxes[pair] = crop_box(heat, share)
    return boxes


@dataclass
class References:
    """What :func:`find_references` returns: per ranked channel the K inputs where it is most relevant and the K
    where it is most active (indices into the inputs, best first; -1 where fewer than K inputs were given), their
    values and crops ((top, left, bottom, right), end exclusive)."""

    layer: str
    names: list[str]  # the inputs' names, as given (or "0", "1", ...)
    channels: np.ndarray  # (C,) the channels ranked
    relevant: np.ndarray  # (C, K) input indices, most relevant first
    relevance: np.ndarray  # (C, K) the channel's relevance there (its summed relevance at the layer for the target)
    relevant_boxes: np.ndarray  # (C, K, 4)
    active: np.ndarray  # (C, K) input indices, most active first
    activation: np.ndarray  # (C, K) the channel's largest activation there
    active_boxes: np.ndarray  # (C, K, 4)
    targets: np.ndarray  # (N,) the output each input was explained for

    def table(self) -> list[dict[str, Any]]:
        """The rows of references.csv (without the crop pictures): layer, channel, kind, rank, input, value, top,
        left, bottom, right."""
        rows = []
        for kind, index, values, boxes in (
            ("relevance", self.relevant, self.relevance, self.relevant_boxes),
            ("activation", self.active, self.activation, self.active_boxes),
        ):
            for slot, channel in enumerate(self.channels):
                for rank, i in enumerate(index[slot]):
                    if i < 0:
                        break
                    top, left, bottom, right = (int(v) for v in boxes[slot, rank])
                    rows.append({"layer": self.layer, "channel": int(channel), "kind": kind, "rank": rank + 1, "input": self.names[i],
                                 "value": float(values[slot, rank]), "top": top, "left": left, "bottom": bottom, "right": right})
        return rows


def find_references(
    explainer: Explainer,
    x: torch.Tensor,
    layer: str,
    k: int,
    target: Any = None,
    *,
    names: Sequence[str] | None = None,
    channels: Sequence[int] | None = None,
    init: Any = "value",
    batch_size: int = 32,
    share: float = 0.8,
) -> References:
    """Relevance maximisation over the inputs ``x`` (N, ...), ranked ``batch_size`` at a time, as ``lrp concepts
    --reference K`` ranks a folder: per channel (all, or the named ``channels``) the ``k`` inputs where it is most
    relevant and the ``k`` where it is most active, each with its crop. Ties go to the name sorting first."""
    n = len(x)
    if names is None:
        names = [f"{i:0{len(str(max(n - 1, 0)))}d}" for i in range(n)]  # zero-padded: ties go to the lower index
    names = [str(name) for name in names]
    if len(names) != n:
        raise UsageError(f"{len(names)} names for {n} inputs", hint="give one name per input, or none")
    if len(set(names)) != n:
        raise UsageError("the inputs' names repeat", hint="give each input its own name")
    per_input = target is not None and not isinstance(target, int) and torch.as_tensor(target).ndim > 0
    if per_input and len(torch.as_tensor(target)) != n:
        raise UsageError(f"{len(torch.as_tensor(target))} targets for {n} inputs", hint="give one target per input, or one for all")
    ranking = Ranking(k)
    for start in range(0, n, batch_size):
        part = torch.as_tensor(target)[start : start + batch_size] if per_input else target
        ranking.add(explainer, names[start : start + batch_size], x[start : start + batch_size], layer, part, init)
    if ranking.relevant is None:
        raise UsageError("no inputs to rank", hint="give a batch of inputs (N, ...)")
    relevant, active = ranking.relevant, ranking.active
    ranked = list(channels) if channels is not None else list(range(relevant.channels))
    choose_channels(torch.zeros(1, relevant.channels), channels=ranked)  # out-of-range channels named
    index = {name: i for i, name in enumerate(names)}
    pairs = [(name, c) for table in (relevant, active) for c in ranked for name, _ in table.ranking(c)]
    boxes = crop_boxes(explainer, pairs, lambda chosen: x[[index[name] for name in chosen]], ranking.targets, layer, relevant.channels, init, batch_size, share)

    def arrays(table: TopK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        found = np.full((len(ranked), k), -1, dtype=np.int64)
        values = np.full((len(ranked), k), np.nan)
        where = np.zeros((len(ranked), k, 4), dtype=np.int64)
        for slot, c in enumerate(ranked):
            for rank, (name, value) in enumerate(table.ranking(c)):
                found[slot, rank], values[slot, rank], where[slot, rank] = index[name], value, boxes[name, c]
        return found, values, where

    (relevant_at, relevance, relevant_boxes), (active_at, activation, active_boxes) = arrays(relevant), arrays(active)
    return References(
        layer=layer, names=names, channels=np.asarray(ranked, dtype=np.int64),
        relevant=relevant_at, relevance=relevance, relevant_boxes=relevant_boxes,
        active=active_at, activation=activation, active_boxes=active_boxes,
        targets=np.array([ranking.targets[name] for name in names], dtype=np.int64),
    )


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
    ranking = Ranking(k)
    for names, x in batches:
        ranking.add(explainer, names, x, layer, target, init)
    if ranking.relevant is None:
        raise UsageError("no inputs to rank", hint="give a folder of images")
    return ranking.relevant, ranking.active


# --------------------------------------------------------------------------- the runs behind `lrp concepts`


@dataclass
class ConceptRun:
    """What ``lrp concepts`` writes into ``out``, and how."""

    out: Path
    layer: str
    target: Any = None  # None: the prediction; an int: that output
    init: Any = "value"
    top: int | None = 5
    channels: Sequence[int] | None = None
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "float32"
    cmap: str = "bwr"
    share: float = 0.8  # of the positive conditional relevance a reference crop holds
    resume: bool = False  # --reference: go on from the last checkpoint of an interrupted ranking
    on_error: str = "skip"  # "fail": stop at the first input that cannot be read
    shard: Shard | None = None  # --reference: rank this shard's inputs only (merged exactly by merge_references)
    failures: list[Failure] = field(default_factory=list)
    written: int = 0


def _load(items: Sequence[ImageInput], preprocessing: Preprocessing, run: ConceptRun) -> Iterator[tuple[list[ImageInput], torch.Tensor]]:
    """Batches of decoded images on the run's device; a file that cannot be read is a failure, not the end."""
    device, dtype = resolve_device(run.device), resolve_dtype(run.dtype)
    for start in range(0, len(items), run.batch_size):
        good, tensors = [], []
        for item in items[start : start + run.batch_size]:
            try:
                tensors.append(preprocessing.tensor(preprocessing.pixels(item.path)))
                good.append(item)
            except InputError as exc:
                if run.on_error == "fail":
                    raise
                run.failures.append(Failure(item.name, exc.message))
        if good:
            yield good, torch.stack(tensors).to(device=device, dtype=dtype)


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode("utf-8"))


CHECKPOINT_SECONDS = 10.0  # how often a ranking saves what it has (references.partial.json)
CONCEPT_COLUMNS = ("input", "layer", "channel", "target", "relevance", "activation", "heatmap")  # heatmap: the drawn map's PNG
REFERENCE_COLUMNS = ("layer", "channel", "kind", "rank", "input", "value", "top", "left", "bottom", "right", "crop")


def concept_paths(item: ImageInput, layer: str, channel: int) -> tuple[str, str]:
    """The conditional heatmap's array and picture, relative to OUT: concepts/<input>/<layer>/<channel>.npy/.png."""
    base = f"concepts/{item.output_name or item.name}/{safe_label(layer)}/{channel}"
    return base + ".npy", base + ".png"


def run_concepts(explainer: Explainer, items: Sequence[ImageInput], preprocessing: Preprocessing, run: ConceptRun, progress: Any = None) -> list[dict[str, Any]]:
    """``lrp concepts MODEL INPUTS``: OUT/concepts.csv (every channel of every input, streamed batch by batch and
    put in place at the end; a drawn channel's row names its picture in ``heatmap``) and the conditional heatmaps of each input's top (or named) channels as
    OUT/concepts/<input>/<layer>/<channel>.npy and .png. Returns the rows of the chosen channels, with their
    picture's path (for the page)."""
    shown: list[dict[str, Any]] = []
    with atomic_text(run.out / "concepts.csv") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CONCEPT_COLUMNS), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for good, x in _load(items, preprocessing, run):
            found = explain_concepts(explainer, x, run.layer, run.target, top=run.top, channels=run.channels, init=run.init, batch_size=run.batch_size)
            rows = found.table([item.name for item in good])
            for i, item in enumerate(good):
                for j, channel in enumerate(found.channels[i]):
                    array_path, picture_path = concept_paths(item, run.layer, int(channel))
                    heat = found.maps[i, j]
                    save_array(inside(run.out, array_path), heat)
                    write_atomic(inside(run.out, picture_path), png_bytes(enlarge(heatmap_rgb(heat, run.cmap))))
                    rows[i * found.relevance.shape[1] + int(channel)]["heatmap"] = picture_path
                    shown.append({"input": item.name, "channel": int(channel), "rank": j + 1, "relevance": float(found.relevance[i, channel]), "picture": picture_path})
            writer.writerows(rows)
            run.written += len(good)
            if progress:
                progress(len(good))
    return shown


def run_references(explainer: Explainer, items: Sequence[ImageInput], preprocessing: Preprocessing, run: ConceptRun, k: int, progress: Any = None) -> list[dict[str, Any]]:
    """``lrp concepts MODEL DATASET --reference K``: per channel (all, or the named ones) the K inputs where it is
    most relevant and the K where it is most active, each with the crop of the input holding ``run.share`` of the
    channel's positive conditional relevance there: OUT/references.csv and
    OUT/references/<layer>/<channel>/<kind>-<rank>.png. Returns the rows.

    With ``run.shard``: only that shard's inputs, written as references.shard-I-of-N.csv (with a .json saying K,
    the layer and its channel count) and <kind>-<rank>.shard-I-of-N.png; :func:`merge_references` joins them.
    A crop depends only on the input and the channel, so the merged top K takes its crops from the shards."""
    sfx = suffix(run.shard)
    if run.shard is not None:
        total, items = len(items), run.shard.select(items)
        if not items:
            raise InputError(f"shard {run.shard} holds none of the {total} input(s)", hint="use fewer shards")
    state = run.out / f"references{sfx}.partial.json"
    ranking = Ranking(k)
    if run.resume and state.exists():
        ranking = Ranking.from_json(state.read_bytes())
        if ranking.k != k:
            raise UsageError(f"--resume: the run in {run.out} ranks the top {ranking.k}, not {k}", hint=f"give --reference {ranking.k}, or drop --resume")
    todo = [item for item in items if item.name not in ranking.targets]
    if progress and len(todo) < len(items):
        progress(len(items) - len(todo))
    saved = time.monotonic()
    try:
        for good, x in _load(todo, preprocessing, run):
            ranking.add(explainer, [item.name for item in good], x, run.layer, run.target, run.init)
            if time.monotonic() - saved > CHECKPOINT_SECONDS:  # what an interrupted run resumes from (--resume)
                write_atomic(state, ranking.to_json())
                saved = time.monotonic()
            if progress:
                progress(len(good))
    except BaseException:  # Ctrl-C, a failed input with --on-error fail: keep what is done for --resume
        if ranking.targets:
            write_atomic(state, ranking.to_json())
        raise
    if ranking.relevant is None:
        raise InputError("no input could be ranked", hint="give a folder of readable images")
    relevant, active, targets = ranking.relevant, ranking.active, ranking.targets
    channels = list(run.channels) if run.channels is not None else list(range(relevant.channels))
    choose_channels(torch.zeros(1, relevant.channels), channels=channels)  # out-of-range channels named
    by_name = {item.name: item for item in items}
    wanted = [
        (kind, channel, rank, name, value)
        for kind, table in (("relevance", relevant), ("activation", active))
        for channel in channels
        for rank, (name, value) in enumerate(table.ranking(channel), 1)
    ]
    pairs = [(name, channel) for _, channel, _, name, _ in wanted]
    fetch = lambda names: next(_load([by_name[name] for name in names], preprocessing, run))[1]  # noqa: E731
    boxes = crop_boxes(explainer, pairs, fetch, targets, run.layer, relevant.channels, run.init, run.batch_size, run.share)
    pixels: dict[str, np.ndarray] = {}
    rows_out = []
    for kind, channel, rank, name, value in wanted:
        top, left, bottom, right = boxes[name, channel]
        picture = f"references/{safe_label(run.layer)}/{channel}/{kind}-{rank}{sfx}.png"
        if name not in pixels:
            pixels[name] = preprocessing.pixels(by_name[name].path)
        crop = pixels[name][top:bottom, left:right]
        crop = crop if crop.shape[2] == 3 else crop.repeat(3, axis=2)
        write_atomic(inside(run.out, picture), png_bytes(enlarge(np.ascontiguousarray(crop), 64)))
        rows_out.append(
            {"layer": run.layer, "channel": channel, "kind": kind, "rank": rank, "input": name, "value": value,
             "top": top, "left": left, "bottom": bottom, "right": right, "crop": picture}
        )
    _write_csv(run.out / f"references{sfx}.csv", rows_out, REFERENCE_COLUMNS)
    state.unlink(missing_ok=True)
    if run.shard is not None:
        about = {"layer": run.layer, "k": k, "channels": channels, "shard": str(run.shard)}
        write_atomic(run.out / f"references{sfx}.json", json.dumps(about).encode("utf-8"))
    return rows_out


def reference_shards(folder: Path) -> list[Path]:
    """The references.shard-I-of-N.json files a sharded ``--reference`` run left in ``folder``."""
    return sorted(Path(folder).glob("references.shard-*-of-*.json"))


def merge_references(sources: Sequence[Path], out: Path) -> dict[str, Any]:
    """Join the shards of a ``--reference`` run: per channel and kind the global top K (ties to the input name
    sorting first, as in one run), exactly, from the shards' own top K; each crop copied from its shard.
    Refuses missing or repeated shards and shards of different layers, K or channels."""
    abouts: dict[int, tuple[Path, dict[str, Any]]] = {}
    for source in sources:
        for path in reference_shards(source):
            about = json.loads(path.read_text(encoding="utf-8"))
            index, count = (int(v) for v in about["shard"].split("/"))
            if index in abouts:
                raise InputError(f"shard {about['shard']} is in both {abouts[index][0].parent} and {path.parent}")
            abouts[index] = (path, {**about, "count": count})
    if not abouts:
        raise InputError(f"no references.shard-*.json in {', '.join(map(str, sources))}", hint="run lrp concepts ... --reference K --shard I/N first")
    first = next(iter(abouts.values()))[1]
    for path, about in abouts.values():
        for key in ("layer", "k", "channels", "count"):
            if about[key] != first[key]:
                raise InputError(f"{path}: {key} {about[key]!r}, another shard has {first[key]!r}", hint="merge shards of one run")
    missing = sorted(set(range(1, first["count"] + 1)) - set(abouts))
    if missing:
        named = ", ".join(f"{i}/{first['count']}" for i in missing)
        raise InputError(f"shard(s) {named} missing", hint="run them, or give their folders")
    channels, k = first["channels"], first["k"]
    tables = {kind: TopK(k, len(channels)) for kind in ("relevance", "activation")}
    found: dict[tuple[str, int, str], tuple[Path, dict[str, str]]] = {}
    for path, _ in abouts.values():
        with path.with_suffix(".csv").open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                tables[row["kind"]].extend(channels.index(int(row["channel"])), [(float(row["value"]), row["input"])])
                found[row["kind"], int(row["channel"]), row["input"]] = (path.parent, row)
    rows_out = []
    out.mkdir(parents=True, exist_ok=True)
    for kind, table in tables.items():
        for slot, channel in enumerate(channels):
            for rank, (name, value) in enumerate(table.ranking(slot), 1):
                folder, row = found[kind, channel, name]
                picture = f"references/{safe_label(first['layer'])}/{channel}/{kind}-{rank}.png"
                write_atomic(inside(out, picture), (folder / row["crop"]).read_bytes())
                rows_out.append({**row, "rank": rank, "value": value, "crop": picture})
    _write_csv(out / "references.csv", rows_out, REFERENCE_COLUMNS)
    return {"rows": len(rows_out), "shards": len(abouts)}
