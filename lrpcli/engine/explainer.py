"""The LRP engine: run the graph forward once, then walk it backward applying rules.

``explain(model, x, composite)`` is the whole public contract; :class:`Explainer`
keeps the captured and prepared graph between batches (what the CLI uses).
"""

from __future__ import annotations

import dataclasses
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from .passes.canonizers import canonize, keep_pool_indices, prune_dead
from .composite import Assigned, Composite
from .composite_yaml import load_composite
from ..errors import InputError, ModelError, UsageError
from .weights import loaded_model, model_tensors
from .capture import capture
from .graph import Graph
from ..registry import suggest
from .propagate import LayerRelevance, propagate, record
from . import ids

INITS = ("value", "one-hot")


@dataclass(frozen=True)
class Contrast:
    """A contrastive start: "the target rather than ``against``". The walk starts from the target's seed and the
    negative seed of ``against`` (``z_t`` and ``-z_c`` with ``base="value"``, +1 and -1 with "one-hot"), so the
    relevance sums to the logit difference ``z_t - z_c``: what a head returning that difference gives under the
    epsilon rule at its last layer. Where a sample's target is ``against`` itself, its start is all zeros."""

    against: Any  # an int, or one int per sample
    base: str = "value"

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        flat = outputs if outputs.ndim == 2 else outputs[:, None]
        against = _targets(flat, self.against)
        start = _initial_relevance(flat, targets, self.base)
        rows = torch.arange(flat.shape[0], device=flat.device)
        start[rows, against] -= flat[rows, against] if self.base == "value" else 1.0
        return start.reshape(outputs.shape)


@dataclass
class Explanation:
    """What ``explain`` returns."""

    #: shaped like the input; a tuple with one relevance per input where ``explain`` was given a tuple of inputs
    relevance: torch.Tensor | tuple[torch.Tensor, ...]
    outputs: torch.Tensor  # the model's outputs (logits)
    targets: torch.Tensor  # (batch,) the explained output unit per sample
    initial: torch.Tensor  # the relevance the walk started from, shaped like outputs
    layers: dict[str, LayerRelevance] | None = None  # with layer_relevance=True, in graph order
    notes: list[str] = field(default_factory=list)  # what canonizers did, e.g. a stripped softmax
    #: with embedding_relevance=True, for token ids: the relevance of the token embeddings (batch, tokens,
    #: hidden) before it is summed over the hidden dim into ``relevance``
    embedding: torch.Tensor | None = None
    #: with layers=[...]: the relevance at the output of each named layer (module path or node name)
    layer_maps: dict[str, torch.Tensor] = field(default_factory=dict)

    def of_input(self, input: int = 0) -> torch.Tensor:
        """The relevance of one input: ``relevance`` itself for one input, else its ``input``-th part."""
        if isinstance(self.relevance, tuple):
            return self.relevance[input]
        if input != 0:
            raise UsageError(f"this explanation has one input; input {input} does not exist")
        return self.relevance

    def heatmap(self, index: int = 0, cmap: str = "bwr", path: str | Path | None = None, input: int = 0) -> "np.ndarray":
        """Sample ``index``'s relevance as an RGB image (H, W, 3, uint8; channels summed, red for and blue
        against the target, scaled to its own largest |R|), the picture `lrp explain` writes; saved as a PNG
        too where ``path`` is given. ``input``: which input's relevance, where several were explained."""
        import numpy as np

        from ..render.heatmaps import heatmap_rgb, png_bytes

        relevance = self.of_input(input)[index].detach().double().cpu().numpy()
        if relevance.ndim not in (2, 3):
            raise UsageError(f"a heatmap needs an image's relevance (C, H, W), got shape {relevance.shape}")
        image = np.ascontiguousarray(heatmap_rgb(relevance, cmap))
        if path is not None:
            from ..outputs import write_output

            write_output(Path(path), png_bytes(image))
        return image

    def plot(self, index: int = 0, cmap: str = "bwr", ax: Any = None, input: int = 0) -> Any:
        """Sample ``index``'s relevance drawn with matplotlib: an image with a colour bar (0 at the colour
        map's centre), or a bar per feature or token; into ``ax`` where given. Returns the figure.
        ``input``: which input's relevance, where several were explained."""
        from ..render.notebook import relevance_figure

        relevance = self.of_input(input)[index].detach().double().cpu().numpy()
        return relevance_figure(relevance, cmap, title=f"sample {index}: target {int(self.targets[index])}", ax=ax)

    def _repr_html_(self) -> str:
        """What a notebook shows: the heatmaps of images, or each row's most relevant features (of the first
        input, where several were explained)."""
        from ..render.notebook import explanation_html

        def array(t: torch.Tensor):
            return t.detach().double().cpu().numpy()

        return explanation_html(array(self.of_input(0)), array(self.outputs), array(self.targets))


def explain(
    model: Any,
    x: torch.Tensor | tuple[torch.Tensor, ...],
    composite: Any = "epsilon_plus_flat",
    target: Any = None,
    *,
    init: Any = "value",
    contrast: Any = None,
    layer_relevance: bool = False,
    params: dict[str, Any] | None = None,
    inputs: dict[str, torch.Tensor] | None = None,
    embedding_relevance: bool = False,
    layers: Sequence[str] = (),
    condition: dict[str, Any] | None = None,
) -> Explanation:
    """Explain ``model``'s output for the batch ``x`` with LRP.

    ``model``: nn.Module, ScriptModule, ExportedProgram or a path to a saved model.
    ``x``: a batch, or a tuple (or list) of batches, the model's first positional inputs (an image and a table
    row, an image and token ids), each batch first with the same samples: every one gets relevance, from one
    walk, and ``Explanation.relevance`` is then a tuple shaped like ``x`` (captum's convention). Only
    ``inputs=`` are held constant. (Such graphs are not kept in the CLI's disk cache.)
    ``composite``: a built-in name, a YAML path, a dict of the YAML's shape or a Composite.
    ``target``: None (the argmax), an int, or a tensor/list of ints (one per sample).
    ``init``: where the walk starts. "value": the target logit's value; "one-hot": 1 (zennit's seed); a tensor
    shaped like the outputs (the relevance of each output unit; ``target`` then only names what is reported, and
    without it the unit each start weighs most); or a function ``init(outputs, targets)`` returning such a tensor
    (``targets`` None where no target is given). Outputs of any shape take a custom start: a language model's
    (batch, positions, vocabulary) logits seeded at chosen positions.
    ``contrast``: an int (or one per sample): explain "the target rather than this class", the relevance of the
    logit difference (see :class:`Contrast`); with init "value" or "one-hot".
    ``params``: composite-wide parameter overrides (epsilon, gamma, low, high, stabilizer).
    ``inputs``: further keyword inputs of the model (an ``attention_mask``), one row per sample: held
    constant, never explained (nn.Modules and exported programs). To hold an input constant, pass it here
    by its parameter name rather than in ``x``.
    ``embedding_relevance``: for token ids, also return the token embeddings' relevance (batch, tokens,
    hidden) as ``Explanation.embedding``.
    ``layers``: module paths (``features.3``, see ``lrp inspect``) or graph node names whose output's
    relevance is returned in ``Explanation.layer_maps``, shaped like that output.
    ``condition``: ``{layer: mask}``, Concept Relevance Propagation: the relevance reaching each named layer's
    output is multiplied by its mask before the walk goes on below it (``layer_maps`` still show what arrived).
    A mask is a list of channel indices (kept in every row), a (batch, channels) tensor (per row, along dim 1),
    or a tensor shaped like the layer's output. Below the layer only relevance that went through it counts (a
    residual's path around it gives none). LRP is linear in the relevance at a layer, so the conditional heatmaps
    of all channels sum to the relevance through it, the full heatmap where everything passes through it (a
    block's output): K conditions of one input are K rows of ``x.repeat``.
    """
    return Explainer(model, composite, params=params).explain(
        x, target, init=init, contrast=contrast, layer_relevance=layer_relevance, inputs=inputs, embedding_relevance=embedding_relevance, layers=layers,
        condition=condition,
    )


# A captured graph is reused while the model's parameters are the same tensors at the same version.
_CAPTURED: "weakref.WeakKeyDictionary[Any, dict[Any, Graph]]" = weakref.WeakKeyDictionary()
# A prepared graph (canonized, rules assigned) per captured graph and composite is shared by Explainers, so
# that explain() called in a loop does not canonize again each time: kept on the captured graph object itself
# (its attribute _PREPARED, not a field: derived graphs made by dataclasses.replace do not carry it), so it
# lives as long as that graph.
_PREPARED = "_lrpcli_prepared"


class GraphStore(Protocol):
    """Keeps captured graphs between processes (sources/cache.py's DiskCache): ``load`` gives a graph checked
    against the model or None, ``store`` never fails the run."""

    def load(self, model: Any, example: torch.Tensor, extras: dict | None, exact_batch: bool) -> Graph | None: ...

    def store(self, graph: Graph, model: Any, example: torch.Tensor, extras: dict | None, exact_batch: bool) -> None: ...


def _fingerprint(model: Any) -> tuple:
    """The model's tensors as they are now: identity and version, and dtype and device, which ``model.to(...)``
    changes in place without a new tensor or a new version (its graph must then be captured again)."""
    return tuple((id(t), getattr(t, "_version", 0), t.dtype, t.device) for t in model_tensors(model))


class Explainer:
    """A model and a composite, ready to explain batch after batch.

    The graph is captured on the first batch (per input shape) and prepared once per
    device and dtype: canonizers run, rules are assigned.
    """

    def __init__(self, model: Any, composite: Any = "epsilon_plus_flat", *, params: dict[str, Any] | None = None):
        self.model = loaded_model(model)
        self.composite: Composite = load_composite(composite, **(params or {}))
        self._prepared: dict[tuple, tuple[Graph, Graph, dict[str, Assigned]]] = {}
        #: the float dtype to compute in when the input is integral (token ids); None: the weights' dtype
        self.float_dtype: torch.dtype | None = None
        #: where captured graphs are kept between runs (sources/cache.py's DiskCache, keyed by the weights'
        #: hash): a later run skips the capture; None: captured in every process
        self.graph_store: GraphStore | None = None
        #: called with what the explainer is doing while it has no batch to show ("capturing the model"),
        #: then with None; the CLI shows it on the progress bar
        self.stages: Callable[[str | None], None] | None = None

    # -- graph preparation

    def captured(self, x: torch.Tensor | tuple[torch.Tensor, ...], inputs: dict[str, torch.Tensor] | None = None) -> Graph:
        """The raw captured graph for inputs shaped like ``x`` (a tensor or a tuple of them; and the extra ``inputs``)."""
        several = isinstance(x, tuple)
        if several:
            key: tuple = ("explained",) + tuple((tuple(t.shape[1:]), t.dtype) for t in x)
            exact_key: tuple = ("explained",) + tuple(tuple(t.shape) for t in x)
        else:
            key, exact_key = tuple(x.shape[1:]), tuple(x.shape)
        key += tuple((name, tuple(t.shape[1:]), t.dtype) for name, t in sorted((inputs or {}).items()))
        try:
            cache = _CAPTURED.setdefault(self.model, {})
        except TypeError:  # not weak-referenceable
            cache = {}
        fingerprint = _fingerprint(self.model)
        for graph_key in (key, exact_key):
            hit = cache.get(graph_key)
            if hit is not None and hit[0] == fingerprint:
                return hit[1]
        example = tuple(self._example(t) for t in x) if several else self._example(x)
        lead = _lead(example)
        extras = {name: t.detach().to(lead.device) for name, t in (inputs or {}).items()} or None
        graph = None if several else self._cached_on_disk(example, extras)  # the disk cache keeps one-input graphs
        if graph is None:
            if self.stages:
                self.stages("capturing the model")
            graph = capture(self.model, example, extras=extras)
            exact = False
            if not graph.dynamic_batch and graph.input_shape[:1] != _lead(x).shape[:1] and not isinstance(
                self.model, torch.export.ExportedProgram
            ):
                graph = capture(self.model, example, exact_batch=True, extras=extras)  # the model's code fixes the batch size
                exact = True
            if not several:
                self._keep_on_disk(graph, example, extras, exact or not graph.dynamic_batch)
            if self.stages:
                self.stages(None)
        cache[key if graph.dynamic_batch else (exact_key if several else tuple(graph.input_shape))] = (fingerprint, graph)
        return graph

    def _example(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the capture's example: on the weights' device, in their dtype (token ids stay integers)."""
        example = x.detach().to("cpu") if _on_cpu(self.model) else x.detach()
        if example.is_floating_point():
            example = example.to(_model_dtype(self.model) or example.dtype)
        return example

    def _cached_on_disk(self, example: torch.Tensor, extras: dict | None) -> Graph | None:
        if self.graph_store is None:
            return None
        for exact in (False, True):
            graph = self.graph_store.load(self.model, example, extras, exact)
            if graph is not None and (graph.dynamic_batch or tuple(graph.input_shape[:1]) == tuple(example.shape[:1])):
                return graph
        return None

    def _keep_on_disk(self, graph: Graph, example: torch.Tensor, extras: dict | None, exact: bool) -> None:
        if self.graph_store is not None:
            self.graph_store.store(graph, self.model, example, extras, exact)

    def prepare(self, x: torch.Tensor | tuple[torch.Tensor, ...], inputs: dict[str, torch.Tensor] | None = None) -> tuple[Graph, dict[str, Assigned]]:
        """The canonized graph on x's device/dtype (the first floating input's, for several) and the rule of every node."""
        raw = self.captured(x, inputs)
        floating = next((t for t in (x if isinstance(x, tuple) else (x,)) if t.is_floating_point()), None)
        x = floating if floating is not None else _lead(x)
        if not raw.dynamic_batch and raw.input_shape and raw.input_shape[0] != x.shape[0]:
            raise InputError(
                f"this model was saved for batches of exactly {raw.input_shape[0]}, got {x.shape[0]}",
                hint="export it with a dynamic batch dimension (dynamic_shapes={'x': {0: Dim.AUTO}}), "
                f"or pass batches of {raw.input_shape[0]}",
            )
        key = (id(raw), x.device, x.dtype, self.float_dtype)
        hit = self._prepared.get(key)
        if hit is None or hit[0] is not raw:  # (an id can be reused once a recaptured graph replaced its raw graph)
            # constants follow float inputs; with token ids, the weights' dtype unless float_dtype says otherwise
            dtype = x.dtype if x.is_floating_point() else (self.float_dtype or _model_dtype(self.model))
            shared_key = (json.dumps(self.composite.to_dict(), sort_keys=True, default=str), str(x.device), str(dtype))
            shared = vars(raw).setdefault(_PREPARED, {})
            prepared = shared.get(shared_key)
            if prepared is None:
                graph = prune_dead(canonize(raw, self.composite.canonizers))
                _check_supported(graph)
                graph = keep_pool_indices(graph).to(x.device, dtype)
                prepared = shared[shared_key] = (graph, self.composite.assign(graph))
            hit = self._prepared[key] = (raw, *prepared)
        return hit[1], hit[2]

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, ...], inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The model's outputs for ``x`` (through the prepared graph), e.g. to choose targets."""
        x = _check_input(x)
        graph, _ = self.prepare(x, inputs)
        with torch.inference_mode():
            outputs = graph(x, inputs)
        return _usable(outputs)

    # -- the explanation

    def explain(
        self,
        x: torch.Tensor | tuple[torch.Tensor, ...],
        target: Any = None,
        *,
        init: Any = "value",
        contrast: Any = None,
        layer_relevance: bool = False,
        inputs: dict[str, torch.Tensor] | None = None,
        embedding_relevance: bool = False,
        layers: Sequence[str] = (),
        condition: dict[str, Any] | None = None,
    ) -> Explanation:
        """See :func:`explain`."""
        x = _check_input(x)
        batch = _lead(x).shape[0]
        init = _start(init, contrast)
        graph, assigned = self.prepare(x, inputs)
        with torch.inference_mode():
            try:
                values = record(graph, x, inputs)
            except RuntimeError as exc:  # a shape torch rejects inside the model (often: no batch dimension)
                raise ModelError(
                    f"the model failed on an input shaped {_shapes(x)}: {str(exc).splitlines()[0][:200]}",
                    hint="x holds a batch: (N, C, H, W) images, (N, F) rows, (N, T) token ids; x[None] for one input",
                ) from exc
            outputs = values[graph.output]
            if not isinstance(outputs, torch.Tensor):
                raise ModelError("the model's output is not a tensor")
            if outputs.ndim == 0 or outputs.shape[0] != batch:
                raise ModelError(
                    f"the model returns {tuple(outputs.shape)} for a batch of {batch} input(s): lrpcli explains "
                    "models whose output has one row per input",
                    hint="a model that mixes the samples of a batch (a mean over dim 0, a reshape across it) cannot be "
                    "explained per input; wrap it so that each input gets its own output row",
                )
            if isinstance(init, str):
                targets = _targets(outputs, target)
                initial = _initial_relevance(outputs, targets, init)
            else:  # a custom start, on any outputs (a language model's (batch, positions, vocabulary) logits too)
                flat = outputs if outputs.ndim <= 2 else outputs.reshape(outputs.shape[0], -1)
                targets = _targets(flat, target) if target is not None else None
                initial = _custom_start(init, outputs, targets)
                if targets is None:  # reported: the unit each sample's start weighs most
                    targets = initial.abs().reshape(outputs.shape[0], -1).argmax(1)
            watched = layer_outputs(graph, layers)
            kept: dict[str, torch.Tensor] | None = {} if embedding_relevance or watched else None
            masks = _condition_masks(graph, values, condition, batch) if condition else None
            relevance, totals = propagate(graph, assigned, values, initial, layer_relevance, kept, watched, masks)
        if totals is not None:
            totals = {name: _usable(layer) for name, layer in totals.items()}
        if isinstance(x, tuple):  # one relevance per input; zeros where none reached it
            parts = relevance if isinstance(relevance, tuple) else (relevance,)
            relevance = tuple(_usable(r) if r is not None else _no_relevance(t, outputs) for r, t in zip(parts, x))
        elif relevance is None:
            relevance = _no_relevance(x, outputs) if x.is_floating_point() else _ids_unreached(graph)
        return Explanation(
            relevance=_usable(relevance),
            outputs=_usable(outputs),
            targets=_usable(targets),
            initial=_usable(initial),
            layers=totals,
            notes=list(graph.notes),
            embedding=_usable(kept.get("embedding")) if kept else None,
            layer_maps={name: _usable(kept[f"layer:{name}"]) for name in layers if f"layer:{name}" in (kept or {})},
        )

    def explain_starts(self, x: torch.Tensor, starts: Sequence[Any], *, inputs: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One recorded forward of ``x``, then one walk per start (each a tensor shaped like the outputs, or a
        function ``start(outputs)``): the outputs and each walk's input relevance. For many seeds on one input
        (a generation's tokens): the forward is not repeated, and the walks read the recorded values without
        copying them (a read-only walk: what a rule would overwrite is copied one value at a time)."""
        x = _check_input(x)
        graph, assigned = self.prepare(x, inputs)
        results: list[torch.Tensor] = []
        with torch.inference_mode():
            values = record(graph, x, inputs)
            outputs = values[graph.output]
            for start in starts:
                initial = _custom_start((lambda o, t, f=start: f(o)) if callable(start) and not isinstance(start, torch.Tensor) else start, outputs, None)
                relevance, _ = propagate(graph, assigned, values.read_only(), initial)
                if relevance is None and not x.is_floating_point():
                    _ids_unreached(graph)
                results.append(_usable(relevance) if relevance is not None else _no_relevance(x, outputs))
        return _usable(outputs), results


def layer_outputs(graph: Graph, layers: Sequence[str]) -> dict[str, str]:
    """Node name -> the layer asked for: a module path's last node (its output), or a node of that name."""
    found: dict[str, str] = {}
    for layer in layers:
        inside = [node for node in graph.nodes if node.module == layer or node.module.startswith(layer + ".")]
        node = inside[-1] if inside else next((n for n in graph.nodes if n.name == layer), None)
        if node is None:
            modules = list(dict.fromkeys(n.module for n in graph.nodes if n.module))
            raise UsageError(
                f"no layer '{layer}' in the model (layers: {', '.join(modules[:12])}{', ...' if len(modules) > 12 else ''})",
                hint=suggest(layer, modules) or "lrp inspect lists every layer's path",
            )
        found[node.name] = layer
    return found


def _condition_masks(graph: Graph, values: Any, condition: dict[str, Any], batch: int) -> dict[str, torch.Tensor]:
    """``condition`` ({layer: mask}, see :func:`explain`) as node name -> a mask that broadcasts to that node's output."""
    if not isinstance(condition, dict):
        raise UsageError(f"condition must be a mapping {{layer: channels}}, got {type(condition).__name__}", hint="e.g. condition={'features.3': [5, 17]}")
    masks: dict[str, torch.Tensor] = {}
    for node_name, layer in layer_outputs(graph, list(condition)).items():
        output = values.stand_in(node_name)
        if not isinstance(output, torch.Tensor) or output.ndim < 2:
            raise UsageError(f"condition: layer '{layer}' has no (batch, channels, ...) output to mask")
        shape, given = tuple(output.shape), condition[layer]
        if isinstance(given, torch.Tensor) and (given.is_floating_point() or given.dtype == torch.bool):  # weights per row / element
            mask = given.detach().to(device=output.device, dtype=output.dtype)
            if tuple(mask.shape) == (batch, shape[1]):
                mask = mask.reshape(batch, shape[1], *([1] * (len(shape) - 2)))
            elif tuple(mask.shape) != shape:
                raise UsageError(
                    f"condition: the mask for '{layer}' is shaped {tuple(mask.shape)}; give (batch, channels) = {(batch, shape[1])} "
                    f"or the layer's output shape {shape}",
                    hint="or a list of channel indices, kept in every row",
                )
        else:
            try:
                channels = torch.as_tensor(given, dtype=torch.long).reshape(-1)
            except (TypeError, ValueError, RuntimeError):
                raise UsageError(f"condition: '{layer}' needs channel indices or a mask tensor, got {given!r}") from None
            bad = (channels < 0) | (channels >= shape[1])
            if bool(bad.any()):
                raise UsageError(f"condition: channel {int(channels[bad][0])} is out of range: '{layer}' has {shape[1]} channels (0..{shape[1] - 1})")
            mask = torch.zeros((1, shape[1]) + (1,) * (len(shape) - 2), dtype=output.dtype, device=output.device)
            mask[0, channels.to(output.device)] = 1
        masks[node_name] = mask
    return masks


def _usable(value: Any) -> Any:
    """A normal copy of a tensor made in inference mode (so callers may use it with autograd), field by field."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, LayerRelevance):
        return dataclasses.replace(
            value, **{f.name: _usable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "node"}
        )
    return value


def _model_dtype(model: Any) -> torch.dtype | None:
    """The floating dtype of the model's weights: the one most of its floating elements have (a float32 buffer of
    rotary frequencies beside float64 weights does not decide it); None if it has none."""
    counts: dict[torch.dtype, int] = {}
    for t in model_tensors(model):
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.get) if counts else None


def _on_cpu(model: Any) -> bool:
    return all(t.device.type == "cpu" for t in model_tensors(model))


def _lead(x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The first input: its batch size is every input's."""
    return x[0] if isinstance(x, tuple) else x


def _shapes(x: torch.Tensor | tuple[torch.Tensor, ...]) -> str:
    return " and ".join(str(tuple(t.shape)) for t in x) if isinstance(x, tuple) else str(tuple(x.shape))


def _ids_unreached(graph: Graph) -> None:
    """Token ids no relevance reached: an error naming where they were lost, never a silent zero (issue 27)."""
    raise ids.unreached(graph)


def _no_relevance(x: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape, dtype=outputs.dtype, device=x.device)


def _check_input(x: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """A batch checked; a tuple or list of batches checked one by one, with the same number of samples."""
    if isinstance(x, (tuple, list)):
        if len(x) == 0:
            raise InputError("got an empty tuple of inputs", hint="give a tensor, or a tuple of tensors (one per model input)")
        xs = []
        for index, item in enumerate(x):
            try:
                if not isinstance(item, torch.Tensor):
                    raise InputError(f"the input must be a torch.Tensor, got {type(item).__name__}", hint="convert it with torch.as_tensor")
                xs.append(_check_input(item))
            except InputError as exc:
                raise InputError(f"input {index}: {exc.message}", hint=exc.hint) from None
        sizes = [t.shape[0] for t in xs]
        if len(set(sizes)) > 1:
            raise InputError(
                f"the inputs hold different numbers of samples ({', '.join(map(str, sizes))}): each is a batch of the same samples",
                hint="give every input batch first with one row per sample",
            )
        return tuple(xs)
    if not isinstance(x, torch.Tensor):
        raise InputError(f"the input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() and x.dtype not in (torch.int64, torch.int32):
        raise InputError(
            f"the input must be a floating-point tensor (or int64 token ids), got {x.dtype}", hint="convert it, e.g. x.float() / 255"
        )
    if x.ndim < 1 or x.shape[0] == 0:
        raise InputError(f"the input must be a non-empty batch (first dimension), got shape {tuple(x.shape)}")
    return x.detach()


def _check_supported(graph: Graph) -> None:
    graph.check_supported()


def _targets(outputs: torch.Tensor, target: Any) -> torch.Tensor:
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    if outputs.ndim != 2:
        raise ModelError(
            f"the model's output has shape {tuple(outputs.shape)}; lrpcli explains (batch, classes) outputs",
            hint="wrap the model so that it returns one score per class (or one value for regression)",
        )
    batch, classes = outputs.shape
    if target is None:
        return outputs.argmax(dim=1)
    if isinstance(target, str) or (isinstance(target, (list, tuple)) and any(isinstance(t, str) for t in target)):
        raise UsageError(
            f"target {target!r}: the API takes class indices, not names",
            hint="give an int, one int per sample, or None for the prediction (e.g. target=classes.index('cat'))",
        )
    try:
        targets = torch.as_tensor(target, device=outputs.device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UsageError(f"target {target!r} is not an int, a list or tensor of ints, or None ({exc})") from None
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise UsageError(f"targets must be integers, got {targets.dtype}")
    targets = targets.long()
    if targets.ndim == 0:
        targets = targets.expand(batch)
    if targets.shape != (batch,):
        raise UsageError(f"got {targets.numel()} targets for a batch of {batch}; give one int or one per sample")
    bad = (targets < 0) | (targets >= classes)
    if bool(bad.any()):
        raise UsageError(f"target {int(targets[bad][0])} is out of range: the model has {classes} outputs (0..{classes - 1})")
    return targets.clone()


def _start(init: Any, contrast: Any) -> Any:
    """``init`` checked, and turned into a :class:`Contrast` where ``contrast`` is given."""
    if isinstance(init, str) and init not in INITS:
        raise UsageError(f"unknown init '{init}' (known: {', '.join(INITS)})", hint=suggest(init, list(INITS)))
    if not isinstance(init, (str, torch.Tensor)) and not callable(init):
        raise UsageError(
            f"init must be 'value', 'one-hot', a tensor shaped like the outputs or a function of (outputs, targets), "
            f"got {type(init).__name__}"
        )
    if contrast is None:
        return init
    if not isinstance(init, str):
        raise UsageError("contrast= takes init 'value' or 'one-hot'; a custom init already says where the walk starts")
    return Contrast(contrast, init)


def _custom_start(init: Any, outputs: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """A user's start (a tensor, or what their function returns), checked against the outputs."""
    start = init(outputs.clone(), None if targets is None else targets.clone()) if callable(init) and not isinstance(init, torch.Tensor) else init
    if not isinstance(start, torch.Tensor):
        raise UsageError(f"init returned {type(start).__name__}, not a tensor shaped like the outputs {tuple(outputs.shape)}")
    if tuple(start.shape) != tuple(outputs.shape):
        raise UsageError(
            f"init is shaped {tuple(start.shape)}, the model's outputs {tuple(outputs.shape)}: give one start value per output",
            hint="e.g. torch.zeros_like(outputs) with the units to explain set",
        )
    if not start.is_floating_point() and start.dtype != torch.bool:
        start = start.to(outputs.dtype)
    start = start.detach().to(device=outputs.device, dtype=outputs.dtype)
    if not bool(torch.isfinite(start.abs().amax())):  # NaN and inf reach the largest |value| (a sixth of isfinite().all()'s time)
        raise UsageError("init holds NaN or infinite values")
    return start.clone()


def _initial_relevance(outputs: torch.Tensor, targets: torch.Tensor, init: str) -> torch.Tensor:
    flat = outputs if outputs.ndim == 2 else outputs[:, None]
    initial = torch.zeros_like(flat)
    rows = torch.arange(flat.shape[0], device=flat.device)
    initial[rows, targets] = flat[rows, targets] if init == "value" else 1.0
    return initial.reshape(outputs.shape)
