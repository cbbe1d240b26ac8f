"""The public API's doors that take a path as well as a model object: ``explain``, ``Explainer`` and
``explain_texts``.

The engine works on loaded models (it imports nothing that reads files); these load a path first with
:func:`lrpcli.sources.files.load_model` (a TorchScript file, a ``.pt2``, a spec) and hand the engine the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .engine import explainer as _engine
from .engine.explainer import Explanation
from .sources.files import is_spec, load_model, load_spec, load_spec_model


class Explainer(_engine.Explainer):
    __doc__ = _engine.Explainer.__doc__

    def __init__(self, model: Any, composite: Any = "epsilon_plus_flat", *, params: dict[str, Any] | None = None):
        super().__init__(load_model(model), composite, params=params)


def explain(model: Any, x: Any, composite: Any = "epsilon_plus_flat", target: Any = None, **options: Any) -> Explanation:
    return _engine.explain(load_model(model), x, composite, target, **options)


explain.__doc__ = _engine.explain.__doc__


def explain_texts(
    model: Any,
    texts: str | list[str],
    *,
    tokenizer: str | None = None,
    composite: Any = None,
    target: Any = None,
    classes: list[str] | None = None,
    max_length: int | None = None,
    top_k: int | None = None,
    params: dict[str, Any] | None = None,
    batch_size: int = 32,
    init: str = "value",
    device: str = "auto",
    dtype: str = "float32",
    allow_pickle: bool = False,
    allow_code: bool = False,
) -> Any:
    """Explain texts as ``lrp explain MODEL TEXTS`` does, by the same code: a ``TextExplanation`` whose
    ``rows`` are the JSON lines the CLI writes (tokens, words, prediction and target with class names).

    ``model``: a text model's spec (.yaml), a Hugging Face folder, or any model with ``tokenizer``
    (a ``tokenizer.json``), which then overrides the spec's. ``composite``: default the spec's, else
    ``epsilon``. ``target``: None (the prediction), an index, a class name or "all". ``top_k`` adds each
    row's K words most for and against the target. ``classes`` overrides the spec's class names.
    """
    from .runs.choices import TargetSpec
    from .runs.texts import TEXT_COMPOSITE, explain_text_list, text_tokenizer

    spec = load_spec(model) if isinstance(model, (str, Path)) and is_spec(model) else None
    loaded = (
        load_spec_model(spec, allow_pickle=allow_pickle, allow_code=allow_code)
        if spec is not None
        else load_model(model, allow_pickle=allow_pickle, allow_code=allow_code)
    )
    spec_input = spec.input if spec is not None else {}
    words = text_tokenizer(spec_input, tokenizer, max_length)
    classes = classes or (spec.classes if spec is not None else None)
    explainer = _engine.Explainer(loaded, composite or (spec.composite if spec is not None else None) or TEXT_COMPOSITE, params=params)
    return explain_text_list(
        explainer,
        [texts] if isinstance(texts, str) else list(texts),
        words,
        targets=TargetSpec.parse(target, None, classes),
        classes=classes,
        top_k=top_k,
        batch_size=batch_size,
        init=init,
        device=device,
        dtype=dtype,
        mask=spec_input.get("mask"),
    )


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


def concepts(
    model: Any,
    x: Any,
    layer: str,
    composite: Any = "epsilon_plus_flat",
    target: Any = None,
    *,
    top: int | None = 5,
    channels: Any = None,
    init: Any = "value",
    batch_size: int = 32,
    params: dict[str, Any] | None = None,
) -> Any:
    """Concept Relevance Propagation, as ``lrp concepts`` runs it: a ``Concepts`` with every channel's relevance at
    ``layer`` (``relevance``, (N, C)) and largest activation (``activation``), and the conditional heatmaps
    (``maps``, (N, K, *x.shape[1:])) of each input's ``top`` channels by relevance, or of the named ``channels``
    (``channels``, (N, K)); ``table()`` gives the rows of concepts.csv. The K conditions of an input are walked as
    K rows of one batch (``batch_size`` rows at a time)."""
    from .runs.concepts import explain_concepts

    return explain_concepts(
        Explainer(model, composite, params=params), x, layer, target, top=top, channels=channels, init=init, batch_size=batch_size
    )


def references(
    model: Any,
    x: Any,
    layer: str,
    k: int = 8,
    composite: Any = "epsilon_plus_flat",
    target: Any = None,
    *,
    names: Any = None,
    channels: Any = None,
    init: Any = "value",
    batch_size: int = 32,
    share: float = 0.8,
    params: dict[str, Any] | None = None,
) -> Any:
    """Relevance maximisation, as ``lrp concepts --reference K`` runs it on a folder: a ``References`` with, per
    channel of ``layer`` (or per named ``channels``), the ``k`` inputs of ``x`` (N, ...) where the channel is most
    relevant for the target (``relevant``: indices, best first; ``relevance``: the values) and the ``k`` where it
    is most active (``active``, ``activation``), each with the crop holding ``share`` of the channel's positive
    conditional relevance (``relevant_boxes``, ``active_boxes``: top, left, bottom, right). ``names`` label the
    inputs (ties go to the name sorting first); ``table()`` gives the rows of references.csv."""
    import torch

    from .runs.concepts import find_references

    return find_references(
        Explainer(model, composite, params=params), torch.as_tensor(x), layer, k, target,
        names=names, channels=channels, init=init, batch_size=batch_size, share=share,
    )
