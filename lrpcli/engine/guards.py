"""Capture rewrites for transformers' code that branches on values where the math does not need it.

torch.export stops at control flow on a tensor's values ("Could not guard on data-dependent expression") and at
ops whose output size comes from values (``nonzero``, ``.tolist()``). Some families do that only to find out
what is fixed for a whole call; while the model is captured, each such piece is computed another way with the
same result, the captured graph is checked against the model's own outputs (:meth:`patterns.Rewrites.checked`),
and the model's code is put back afterwards, whatever happens:

- Longformer / LED (:func:`fixed_global_attention`): the number of global-attention tokens per row, read with
  ``nonzero()`` and ``.item()``. It is the same in every row (the classifier puts global attention on the first
  token; LED's on none) and known from the example, so the indices are computed for that fixed count; a row with
  another count gets NaN logits (named by the run) instead of a wrong answer. Longformer also pads the token ids
  to its attention window before looking them up: :func:`padded_lookups` looks up the ids themselves and the
  padding apart, so relevance reaches the tokens (a lookup of computed ids counts as a constant).
- X-MOD (:func:`single_language_adapters`): the batch is split per language (``unique_consecutive`` and
  ``.tolist()``); called without ``lang_ids``, every row is in ``config.default_language``, one adapter.
- Qwen3-Next (:func:`kept_linear_masks`): the linear-attention layers get the mask unless
  ``cache_position[0] > 0 or torch.all(attention_mask == 1)``; without a cache the first is False, and masking by
  an all-ones mask changes nothing, so they always get it.
- TAPAS (:func:`cell_positions`): positions restart in every table cell, found by segment reductions whose shapes
  pass through ``.tolist()``; the same first position per cell is computed densely from the token types.
- Gemma3n (:func:`clamped_weights`): AltUp clamps its coefficient weights in place in every forward, a write
  into a parameter's ``.data`` that export cannot trace ("a fake tensor in the exported program constant's list");
  the clamp is done once before capture and skipped while tracing.
- SigLIP2 (:func:`fixed_spatial_shapes`): the position grid is interpolated per row to a size read from
  ``spatial_shapes``' values. A batch of same-size images has one grid, known from the example: it is resized
  once at that size; a batch with several grids is refused by name, a row with another grid later gets NaN.
- Gemma3 / ShieldGemma2 (:func:`unchecked_placeholders`): ``get_placeholder_mask`` checks that the image tokens
  count as many values as the image features, a consistency assertion the math does not need (the features go
  where the prompt's image-token ids are); the mask is computed from the ids without it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Iterator

import torch

from ..errors import ModelError


def _source_has(function: Any, *texts: str) -> bool:
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return all(text in source for text in texts)


def _parameters(module: torch.nn.Module) -> list[str]:
    try:
        return list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return []


def _bound(module: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    try:
        return dict(inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments)
    except TypeError:
        return {}


def _pre_hook(module: torch.nn.Module, hook: Any) -> Any:
    return module.register_forward_pre_hook(hook, with_kwargs=True)


# ----------------------------------------------------------------------------------------------- Longformer, LED


def _global_attention(module: torch.nn.Module) -> bool:
    """A Longformer-style self-attention: global indices by ``nonzero`` and an ``is_global_attn`` flag."""
    method = getattr(type(module), "_get_global_attn_indices", None)
    return method is not None and "is_global_attn" in _parameters(module) and _source_has(method, "nonzero(")


def _global_counts(model: torch.nn.Module, modules: list[torch.nn.Module], example: Any, extras: dict | None) -> set[int] | None:
    """How many global tokens each row of ``example`` has, over every such attention (one eager forward)."""
    counts: set[int] = set()

    def record(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        flags = _bound(_module, args, kwargs).get("is_index_global_attn")
        if isinstance(flags, torch.Tensor):
            counts.update(int(c) for c in flags.sum(dim=1).tolist())

    handles = [_pre_hook(module, record) for module in modules]
    try:
        with torch.inference_mode():
            model(*(example if isinstance(example, tuple) else (example,)), **(extras or {}))
    except Exception:  # the model's own forward fails: nothing to rewrite (export says why)
        return None
    finally:
        for handle in handles:
            handle.remove()
    return counts


def _fixed_indices(count: int) -> Any:
    """``_get_global_attn_indices`` for rows that all hold ``count`` global tokens: the same indices, in the same
    (row-major) order as ``nonzero`` gives them, with sizes known at capture."""

    def indices(is_index_global_attn: torch.Tensor) -> tuple:
        batch = is_index_global_attn.shape[0]
        device = is_index_global_attn.device
        # the positions of the global tokens, ascending: a stable sort puts the True flags first, in order
        positions = torch.sort((~is_index_global_attn).to(torch.uint8), dim=1, stable=True).indices[:, :count]
        rows = torch.arange(batch, device=device).repeat_interleave(count)
        slots = torch.arange(count, device=device).repeat(batch)
        none = rows[:0]
        return count, (rows, positions.reshape(-1)), (rows, slots), (none, none)

    return indices


def _fixed_global(own: Any, count: int) -> Any:
    signature = inspect.signature(own)

    @functools.wraps(own)
    def forward(*args: Any, **kwargs: Any) -> Any:
        given = signature.bind(*args, **kwargs).arguments
        given["is_global_attn"] = count > 0
        outputs = own(**given)
        flags = given.get("is_index_global_attn")
        if not isinstance(flags, torch.Tensor):
            return outputs
        # a row with another number of global tokens than the example's: NaN, not a wrong answer
        kept = torch.where(flags.sum(dim=1) == count, 1.0, float("nan")).to(outputs[0].dtype)
        return (outputs[0] * kept[:, None, None],) + tuple(outputs[1:])

    return forward


@contextlib.contextmanager
def fixed_global_attention(model: Any, example: Any, extras: dict | None) -> Iterator[list[str]]:
    """While open, every Longformer-style self-attention (Longformer, LED's encoder) of ``model`` takes its global
    tokens as ``count`` per row, the count every row of ``example`` has, so export sees fixed sizes; yields their
    paths. Rows of the example with different counts: a ModelError (one graph cannot hold both)."""
    found = [(path, module) for path, module in (model.named_modules() if isinstance(model, torch.nn.Module) else []) if _global_attention(module)]
    counts = _global_counts(model, [module for _, module in found], example, extras) if found else None
    if not counts:
        yield []
        return
    if len(counts) > 1:
        raise ModelError(
            f"the rows of this input hold different numbers of global-attention tokens ({', '.join(map(str, sorted(counts)))}); "
            "lrpcli captures Longformer's global attention for one count per row",
            hint="give every row the same global tokens (the classifier's default: the first token only), or explain the rows in separate calls",
        )
    (count,) = counts
    try:
        for _, module in found:
            module.forward = _fixed_global(module.forward, count)
            module._get_global_attn_indices = _fixed_indices(count)
        yield [f"{path} ({count} global token{'s' if count != 1 else ''} per row)" for path, _ in found]
    finally:
        for _, module in found:
            vars(module).pop("forward", None)
            vars(module).pop("_get_global_attn_indices", None)


def _pads_ids(cls: type) -> bool:
    method = getattr(cls, "_pad_to_window_size", None)
    return method is not None and _source_has(method, "nn.functional.pad(input_ids")


@contextlib.contextmanager
def padded_lookups(model: Any) -> Iterator[list[str]]:
    """While open, a Longformer that pads its token ids to the attention window before its lookup has the ids'
    own rows looked up from the ids it was given and the padding's apart (the same values); yields their paths."""
    hooks: list[Any] = []
    found: list[str] = []
    for path, module in (model.named_modules() if isinstance(model, torch.nn.Module) else []):
        embedding = getattr(getattr(module, "embeddings", None), "word_embeddings", None)
        if not (_pads_ids(type(module)) and isinstance(embedding, torch.nn.Embedding)):
            continue
        given: list[Any] = [None]

        def remember(_module: torch.nn.Module, args: tuple, kwargs: dict, given: list = given) -> None:
            given[0] = _bound(_module, args, kwargs).get("input_ids")

        def forget(*_: Any, given: list = given) -> None:
            given[0] = None

        def lookup(_module: torch.nn.Module, inputs: tuple, output: torch.Tensor, given: list = given) -> Any:
            ids, own = (inputs[0] if inputs else None), given[0]
            if not isinstance(ids, torch.Tensor) or not isinstance(own, torch.Tensor) or ids.ndim != 2 or ids.shape[1] <= own.shape[1]:
                return None
            return torch.cat([_module(own), output[:, own.shape[1]:]], dim=1)  # (the ids come first, then the pads)

        hooks += [_pre_hook(module, remember), module.register_forward_hook(forget), embedding.register_forward_hook(lookup)]
        found.append(path or type(module).__name__)
    try:
        yield found
    finally:
        for handle in hooks:
            handle.remove()


# ------------------------------------------------------------------------------------------------------- X-MOD


def _splits_languages(module: torch.nn.Module) -> bool:
    method = getattr(type(module), "lang_adapter", None)
    return isinstance(getattr(module, "adapter_modules", None), torch.nn.ModuleDict) and _source_has(method, "unique_consecutive(lang_ids")


def _one_adapter(module: torch.nn.Module, own: Any, language: list) -> Any:
    """X-MOD's ``lang_adapter`` with every row in ``language[0]`` (None: the model's own)."""

    @functools.wraps(own)
    def lang_adapter(lang_ids: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        if language[0] not in module.adapter_modules:
            return own(lang_ids, hidden_states)
        residual = hidden_states
        if module.adapter_layer_norm is not None:
            hidden_states = module.adapter_layer_norm(hidden_states)
        elif module.adapter_reuse_layer_norm:
            hidden_states = module.LayerNorm(hidden_states)
        if module.ln_before_adapter:
            residual = hidden_states
        hidden_states = module.dropout(module.adapter_modules[language[0]](hidden_states))
        return hidden_states + residual

    return lang_adapter


@contextlib.contextmanager
def single_language_adapters(model: Any) -> Iterator[list[str]]:
    """While open, X-MOD's per-language adapters run as the one adapter of ``config.default_language`` where the
    model is called without ``lang_ids`` (it then makes every row that language); yields their paths."""
    modules = list(model.named_modules()) if isinstance(model, torch.nn.Module) else []
    adapters = [(path, module) for path, module in modules if _splits_languages(module)]
    tops = [  # the models that make lang_ids from the default language (not the layers they pass them to)
        module for _, module in modules
        if hasattr(module, "set_default_language") and "lang_ids" in _parameters(module) and getattr(module.config, "default_language", None)
    ]
    if not adapters or not tops:
        yield []
        return
    language: list[Any] = [None]

    def choose(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        given = _bound(_module, args, kwargs)
        language[0] = _module.config.default_language if given.get("lang_ids") is None else None

    hooks = [_pre_hook(module, choose) for module in tops]
    try:
        for _, module in adapters:
            module.lang_adapter = _one_adapter(module, module.lang_adapter, language)
        yield [f"{path} ({tops[0].config.default_language})" for path, _ in adapters]
    finally:
        for handle in hooks:
            handle.remove()
        for _, module in adapters:
            vars(module).pop("lang_adapter", None)


# -------------------------------------------------------------------------------------------------- Qwen3-Next


def _drops_full_masks(cls: type) -> bool:
    method = getattr(cls, "_update_linear_attn_mask", None)
    return _source_has(method, "cache_position[0] > 0", "torch.all(attention_mask == 1)")


@contextlib.contextmanager
def kept_linear_masks(model: Any) -> Iterator[list[str]]:
    """While open, Qwen3-Next's linear-attention layers get the attention mask as given (an all-ones one too)
    where the model is called without a filled cache; yields their paths."""
    found = [(path, module) for path, module in (model.named_modules() if isinstance(model, torch.nn.Module) else []) if _drops_full_masks(type(module))]
    hooks = []
    try:
        for _, module in found:
            fresh = [False]

            def note(_module: torch.nn.Module, args: tuple, kwargs: dict, fresh: list = fresh) -> None:
                past = _bound(_module, args, kwargs).get("past_key_values")
                fresh[0] = past is None or past.get_seq_length() == 0

            def update(attention_mask: Any, cache_position: Any, own: Any = module._update_linear_attn_mask, fresh: list = fresh) -> Any:
                return attention_mask if fresh[0] else own(attention_mask, cache_position)

            hooks.append(_pre_hook(module, note))
            module._update_linear_attn_mask = update
        yield [path or type(module).__name__ for path, module in found]
    finally:
        for handle in hooks:
            handle.remove()
        for _, module in found:
            vars(module).pop("_update_linear_attn_mask", None)


# ------------------------------------------------------------------------------------------------------- TAPAS


def _resets_per_cell(module: torch.nn.Module) -> bool:
    config = getattr(module, "config", None)
    return (
        bool(getattr(config, "reset_position_index_per_cell", False))
        and isinstance(getattr(module, "position_embeddings", None), torch.nn.Embedding)
        and _source_has(type(module).forward, "reset_position_index_per_cell", "reduce_min(position_ids")
    )


def first_cell_positions(token_type_ids: torch.Tensor, max_positions: int) -> torch.Tensor:
    """TAPAS's position ids with ``reset_position_index_per_cell``: each token's position minus the first position
    of its cell (the tokens with its column and row ids, ``token_type_ids[..., 1]`` and ``[..., 2]``), at most
    ``max_positions - 1``. What ``reduce_min`` over the product index and ``gather`` compute, densely."""
    column, row = token_type_ids[:, :, 1], token_type_ids[:, :, 2]
    same = (column[:, :, None] == column[:, None, :]) & (row[:, :, None] == row[:, None, :])  # (batch, token, token)
    position = torch.arange(token_type_ids.shape[1], device=token_type_ids.device)
    first = torch.where(same, position, token_type_ids.shape[1]).amin(dim=2)
    return (position - first).clamp(max=max_positions - 1)


@contextlib.contextmanager
def cell_positions(model: Any) -> Iterator[list[str]]:
    """While open, TAPAS's embeddings are given the per-cell position ids they compute themselves
    (:func:`first_cell_positions`) where they are called without position ids; yields their paths."""
    hooks = []
    found = []
    for path, module in (model.named_modules() if isinstance(model, torch.nn.Module) else []):
        if not _resets_per_cell(module):
            continue

        def give(_module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            given = _bound(_module, args, kwargs)
            types = given.get("token_type_ids")
            if given.get("position_ids") is not None or not isinstance(types, torch.Tensor) or types.ndim != 3:
                return None
            given["position_ids"] = first_cell_positions(types, _module.config.max_position_embeddings)
            return (), given

        hooks.append(_pre_hook(module, give))
        found.append(path or type(module).__name__)
    try:
        yield found
    finally:
        for handle in hooks:
            handle.remove()


# ----------------------------------------------------------------------------------------------------- Gemma3n


def _clips_in_forward(module: torch.nn.Module) -> bool:
    """Gemma3n's AltUp: ``correct`` clamps its coefficient weights in place (``weight.data.clamp_``) on every call."""
    config = getattr(module, "config", None)
    return (
        getattr(config, "altup_coef_clip", None) is not None
        and isinstance(getattr(module, "correction_coefs", None), torch.nn.Linear)
        and _source_has(getattr(type(module), "correct", None), "correction_coefs.weight.data.clamp_(")
    )


@contextlib.contextmanager
def clamped_weights(model: Any) -> Iterator[list[str]]:
    """While open, Gemma3n's AltUp coefficients are clamped once, before capture, as every forward of the model
    clamps them (in place, idempotent: the same weights), and ``config.altup_coef_clip`` is None, so the trace
    does not write into a parameter's ``.data`` (torch.export cannot trace that write and leaves a fake tensor
    among the program's constants); yields their paths. The clip is put back afterwards."""
    found = [(path, module) for path, module in (model.named_modules() if isinstance(model, torch.nn.Module) else []) if _clips_in_forward(module)]
    configs = {id(module.config): (module.config, module.config.altup_coef_clip) for _, module in found}
    try:
        with torch.no_grad():
            for _, module in found:
                clip = module.config.altup_coef_clip
                module.correction_coefs.weight.data.clamp_(-clip, clip)  # what the model's own correct() does first
        for config, _ in configs.values():
            config.altup_coef_clip = None
        yield [path or type(module).__name__ for path, module in found]
    finally:
        for config, clip in configs.values():
            config.altup_coef_clip = clip


# ----------------------------------------------------------------------------------------------------- SigLIP2


def _resizes_per_row(module: torch.nn.Module) -> bool:
    """SigLIP2's vision embeddings: the position grid interpolated per row to a size read from ``spatial_shapes``."""
    return isinstance(getattr(module, "position_embedding", None), torch.nn.Embedding) and _source_has(
        getattr(type(module), "resize_positional_embeddings", None), "spatial_shapes[i]", "F.interpolate("
    )


def _fixed_resize(height: int, width: int) -> Any:
    """``resize_positional_embeddings`` for rows whose grids are all ``height`` x ``width``: one interpolation at
    sizes known at capture (the same float32 detour on CPU), the row's first position repeated over the padding;
    a row with another grid gets NaN (named by the run) instead of a wrong answer."""

    def resize(positional_embeddings: torch.Tensor, spatial_shapes: torch.Tensor, max_length: int) -> torch.Tensor:
        dtype, dim = positional_embeddings.dtype, positional_embeddings.shape[-1]
        grid = positional_embeddings.permute(2, 0, 1).unsqueeze(0)
        if grid.device.type == "cpu":
            grid = grid.to(torch.float32)
        resized = torch.nn.functional.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        resized = resized.reshape(dim, height * width).transpose(0, 1).to(dtype)
        padded = torch.cat([resized, resized[:1].expand(max_length - height * width, dim)])
        same = (spatial_shapes == torch.tensor([height, width], device=spatial_shapes.device)).all(dim=-1)
        kept = torch.where(same, 1.0, float("nan")).to(dtype)
        return padded[None] * kept[:, None, None]

    return resize


def _spatial_shapes(model: torch.nn.Module, modules: list[torch.nn.Module], example: Any, extras: dict | None) -> set[tuple[int, int]] | None:
    """The (height, width) patch grids of ``example``'s rows, as the embeddings get them (one eager forward)."""
    shapes: set[tuple[int, int]] = set()

    def record(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        given = _bound(_module, args, kwargs).get("spatial_shapes")
        if isinstance(given, torch.Tensor):
            shapes.update((int(h), int(w)) for h, w in given.tolist())

    handles = [_pre_hook(module, record) for module in modules]
    try:
        with torch.inference_mode():
            model(*(example if isinstance(example, tuple) else (example,)), **(extras or {}))
    except Exception:  # the model's own forward fails: nothing to rewrite (export says why)
        return None
    finally:
        for handle in handles:
            handle.remove()
    return shapes


@contextlib.contextmanager
def fixed_spatial_shapes(model: Any, example: Any, extras: dict | None) -> Iterator[list[str]]:
    """While open, SigLIP2's vision embeddings resize their position grid to the one patch grid every row of
    ``example`` has, with sizes known at capture (the model reads them from ``spatial_shapes``' values); yields
    their paths. Rows of the example with different grids: a ModelError (one graph cannot hold both)."""
    found = [(path, module) for path, module in (model.named_modules() if isinstance(model, torch.nn.Module) else []) if _resizes_per_row(module)]
    shapes = _spatial_shapes(model, [module for _, module in found], example, extras) if found else None
    if not shapes:
        yield []
        return
    if len(shapes) > 1:
        raise ModelError(
            f"the images of this batch have different patch grids ({', '.join(f'{h}x{w}' for h, w in sorted(shapes))}); "
            "lrpcli captures SigLIP2's position embeddings for one grid per batch",
            hint="resize the images to one size before explaining them, or explain each size in a separate call",
        )
    ((height, width),) = shapes
    try:
        for _, module in found:
            module.resize_positional_embeddings = _fixed_resize(height, width)
        yield [f"{path} ({height}x{width} patches)" for path, _ in found]
    finally:
        for _, module in found:
            vars(module).pop("resize_positional_embeddings", None)


# ------------------------------------------------------------------------------------------ Gemma3, ShieldGemma2


def _checks_placeholders(module: torch.nn.Module) -> bool:
    """Gemma3's ``get_placeholder_mask``: the image tokens' mask, and a check that it counts as many values as the
    image features (a consistency assertion, read from the mask's values)."""
    method = getattr(type(module), "get_placeholder_mask", None)
    if not callable(method) or getattr(getattr(module, "config", None), "image_token_id", None) is None:
        return False
    return list(inspect.signature(method).parameters)[1:] == ["input_ids", "inputs_embeds", "image_features"] and _source_has(
        method, "inputs_embeds[special_image_mask].numel() != image_features.numel()"
    )


def _unchecked_mask(module: torch.nn.Module, own: Any) -> Any:
    """``get_placeholder_mask`` from the ids, without the count check (the model's own where no ids are given)."""

    @functools.wraps(own)
    def get_placeholder_mask(input_ids: Any, inputs_embeds: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        if input_ids is None:
            return own(input_ids, inputs_embeds, image_features)
        mask = input_ids == module.config.image_token_id
        return mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device)

    return get_placeholder_mask


@contextlib.contextmanager
def unchecked_placeholders(model: Any) -> Iterator[list[str]]:
    """While open, Gemma3-style models (ShieldGemma2) place the image features where the prompt's image-token ids
    are without checking their count against the features' (``Ne(u0, 256)`` in export); the captured graph is
    checked against the model's own forward, which still checks it. Yields their paths."""
    found = [(path, module) for path, module in (model.named_modules() if isinstance(model, torch.nn.Module) else []) if _checks_placeholders(module)]
    try:
        for _, module in found:
            module.get_placeholder_mask = _unchecked_mask(module, module.get_placeholder_mask)
        yield [path or type(module).__name__ for path, module in found]
    finally:
        for _, module in found:
            vars(module).pop("get_placeholder_mask", None)
