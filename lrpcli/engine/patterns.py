"""Capture rewrites: model code that torch.export cannot capture, computed another way with the same result.

transformers' encoder-decoder classifiers (T5, mT5, UMT5, BART, mBART, PLBart, LED, MVP, BigBird-Pegasus) pool the
decoder's hidden state at the last ``<eos>`` of each row by counting: ``len(torch.unique_consecutive(
eos_mask.sum(1))) > 1`` (every row must hold as many ``<eos>`` as the others) and ``hidden[eos_mask, :]`` (a
boolean selection, whose size is only known at run time). torch.export stops at both. The math does not need
them: the pooled vector is the hidden state at each row's last ``<eos>``, a gather at an index computed from the
token ids. While the model is captured, such a classifier's ``forward`` is swapped for :func:`_eos_pooled`,
which computes exactly that (each row on its own, so rows may hold different numbers of ``<eos>``); the captured
graph's outputs are checked against the model's own (:func:`check_rewrite`), and the forward is put back.

The gather's index is computed from the ids only, so it carries no relevance (a held index, like a mask); the
pooled vector takes the relevance of the classification head as it arrives. A row without ``<eos>`` has nothing
to pool (the model itself raises there): its logits come out NaN, so a run names it instead of explaining the
last position silently. The decoder reads the ids shifted right; its lookup is computed as the lookup of the ids,
shifted (:func:`_shifted_lookups`), so the tokens get what the decoder reads of them.

Two more capture fixes live here: :func:`default_masks` gives text stacks the all-ones mask their eager forward
makes (under export they keep none, and BART's decoder then builds its causal mask one key too wide), and
:func:`writes_live_values` says when a program writes in place into computed values (capture.py then
functionalises it, as lrpcli's out-of-place graph would lose the writes). :func:`fixed_width_masks` tells export
that a hybrid's causal mask (Jamba, Zamba2: its width read from ``cache_position``) is as wide as the text, and
:func:`premasked_mixers` masks a Zamba2 mixer's input without its check of the mask's values.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Iterator

import torch

from ..errors import ModelError
from . import guards

#: forward arguments the rewrite computes with; any other argument given a value keeps the model's own forward
_POOLED_ARGS = ("input_ids", "attention_mask")
#: arguments that do not change the logits (the output_* ones only when False)
_INERT = ("return_dict", "use_cache", "output_attentions", "output_hidden_states")


def is_eos_classifier(module: torch.nn.Module) -> bool:
    """A transformers encoder-decoder sequence classifier that pools at ``<eos>`` by counting (see the module
    docstring): a ``classification_head`` over the hidden states of its base model (``transformer`` for the T5
    family, ``model`` for the BART family, ``led`` for LED), and that counting in its forward."""
    if not (type(module).__name__.endswith("ForSequenceClassification") and hasattr(module, "classification_head")):
        return False
    if _base(module) is None or not isinstance(getattr(getattr(module, "config", None), "eos_token_id", None), int):
        return False
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return False
    return "unique_consecutive(eos_mask" in source


def _base(module: torch.nn.Module) -> torch.nn.Module | None:
    for name in ("transformer", "model", "led"):
        base = getattr(module, name, None)
        if isinstance(base, torch.nn.Module):
            return base
    return None


def last_eos(hidden: torch.Tensor, input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Each row's hidden state (batch, length, width) at its last ``<eos>``: (batch, width); NaN where a row has
    none. What ``hidden[eos_mask, :].view(batch, -1, width)[:, -1, :]`` computes, without the boolean selection."""
    eos = input_ids.eq(eos_token_id)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = torch.where(eos, positions, -1).amax(dim=1)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    pooled = hidden[rows, last.clamp(min=0)]
    missing = torch.where(eos.any(dim=1), 1.0, float("nan")).to(hidden.dtype)
    return pooled * missing[:, None]


def _eos_pooled(module: torch.nn.Module, own: Any) -> Any:
    """``module``'s forward with the pooling of :func:`last_eos`: the base model on the ids (and mask), the
    decoder fed the shifted ids as the model feeds them, the classification head on the pooled vector. Calls
    that give other arguments (labels, embeddings, decoder inputs) go to the model's own forward."""
    signature = inspect.signature(own)
    base = _base(module)

    @functools.wraps(own)
    def forward(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        given = {name: value for name, value in bound.arguments.items() if value is not None}
        others = [n for n, v in given.items() if n not in _POOLED_ARGS and not (n in _INERT and (v is False or n in _INERT[:2]))]
        input_ids = given.get("input_ids")
        if others or not isinstance(input_ids, torch.Tensor):
            return own(*args, **kwargs)
        feed: dict[str, Any] = {"attention_mask": given.get("attention_mask"), "use_cache": False, "return_dict": False}
        decoder = getattr(base, "decoder", None)
        if decoder is not None and hasattr(module, "_shift_right"):
            feed["decoder_input_ids"] = module._shift_right(input_ids)  # T5's classifiers shift; BART's base does
        with _shifted_lookups(decoder, input_ids):
            hidden = base(input_ids, **feed)[0]
        logits = module.classification_head(last_eos(hidden, input_ids, module.config.eos_token_id))
        return_dict = given.get("return_dict", getattr(module.config, "use_return_dict", True))
        if not return_dict:
            return (logits,)
        from transformers.modeling_outputs import Seq2SeqSequenceClassifierOutput

        return Seq2SeqSequenceClassifierOutput(logits=logits)

    return forward


@contextlib.contextmanager
def _shifted_lookups(decoder: Any, input_ids: torch.Tensor) -> Iterator[None]:
    """While open, the decoder's lookup of its shifted ids (``[start, ids[:, :-1]]``) is computed as the start
    token's lookup followed by the lookup of the ids themselves, shifted: the same values (every shift of these
    families copies ``ids[:, :-1]`` into ``[:, 1:]``), but the decoder's token embeddings are then lookups of the
    explained ids, so the relevance the decoder's tokens get reaches the tokens (one position back) instead of
    staying with a lookup of computed indices, which counts as a constant."""
    embedding = getattr(decoder, "embed_tokens", None)
    if not isinstance(decoder, torch.nn.Module) or not isinstance(embedding, torch.nn.Embedding):
        yield
        return
    inside = [False]  # only the decoder's own lookup (T5's encoder shares the table)

    def enter(*_: Any) -> None:
        inside[0] = True

    def leave(*_: Any) -> None:
        inside[0] = False

    def shifted(_module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> Any:
        ids = inputs[0] if inputs else None
        if not inside[0] or not isinstance(ids, torch.Tensor) or ids.shape != input_ids.shape:
            return None
        inside[0] = False  # (the lookup below runs this hook again)
        try:
            return torch.cat([output[:, :1], embedding(input_ids)[:, :-1]], dim=1)
        finally:
            inside[0] = True

    handles = [decoder.register_forward_pre_hook(enter), decoder.register_forward_hook(leave), embedding.register_forward_hook(shifted)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def eos_pooling(model: Any) -> Iterator[list[str]]:
    """Swap the forward of every ``<eos>``-counting classifier in ``model`` (itself included) for
    :func:`_eos_pooled` while the block is open; yields their paths (the class name for the model itself). The
    model is as it was afterwards, whatever happens."""
    found: list[tuple[torch.nn.Module, str]] = []
    if isinstance(model, torch.nn.Module):
        found = [(module, path) for path, module in model.named_modules() if is_eos_classifier(module)]
    try:
        for module, _ in found:
            module.forward = _eos_pooled(module, module.forward)
        yield [path or type(module).__name__ for module, path in found]
    finally:
        for module, _ in found:
            vars(module).pop("forward", None)


#: what transformers' text stacks (BART, mBART, Marian, Pegasus, Blenderbot, PLBart, M2M-100, the T5 family, ...)
#: say where they make the all-ones mask themselves, except under torch.export
_MASK_MADE_OUTSIDE_EXPORT = "attention_mask is None and not is_torchdynamo_compiling()"


@functools.lru_cache(maxsize=None)
def _makes_mask_outside_export(cls: type) -> bool:
    try:
        return _MASK_MADE_OUTSIDE_EXPORT in inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False


def _all_ones_mask(module: torch.nn.Module) -> Any:
    """A forward pre-hook giving ``module`` the mask it makes itself when run eagerly: ``torch.ones(batch,
    length)``, where it is called without one (and without a cache)."""
    signature = inspect.signature(module.forward)
    names = list(signature.parameters)

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        try:
            given = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            return None
        past = given.get("past_key_values")
        if given.get("attention_mask") is not None or (past is not None and past.get_seq_length() != 0):
            return None
        ids, embeds = given.get("input_ids"), given.get("inputs_embeds")
        source = ids if isinstance(ids, torch.Tensor) else embeds
        if not isinstance(source, torch.Tensor) or source.ndim < 2:
            return None
        mask = torch.ones(source.shape[0], source.shape[1], device=source.device)  # as the eager forward makes it
        position = names.index("attention_mask")
        if position < len(args):
            return args[:position] + (mask,) + args[position + 1 :], kwargs
        return args, {**kwargs, "attention_mask": mask}

    return hook


@contextlib.contextmanager
def default_masks(model: Any) -> Iterator[list[str]]:
    """While the block is open, every text stack of ``model`` that makes its all-ones attention mask only outside
    torch.export is given that mask where it is called without one; yields their paths.

    Under export, such a stack keeps ``attention_mask=None``; BART's decoder then builds its causal mask for
    ``length + 1`` keys (the width meant for a static cache: ``past_seen_tokens + sequence_length + 1``), and
    eager attention adds that (length, length + 1) mask to (length, length) scores: "Attempting to broadcast a
    dimension of length 8" (SDPA slices the mask to the keys and hides it). LongT5's local attention fails on the
    missing mask outright. With the mask the eager forward makes, the captured graph computes what the model
    computes (checked by :meth:`Rewrites.checked`)."""
    hooked: list[tuple[str, Any]] = []
    if isinstance(model, torch.nn.Module):
        for path, module in model.named_modules():
            if "attention_mask" in inspect.signature(module.forward).parameters and _makes_mask_outside_export(type(module)):
                hooked.append((path, module.register_forward_pre_hook(_all_ones_mask(module), with_kwargs=True)))
    try:
        yield [path or type(model).__name__ for path, _ in hooked]
    finally:
        for _, handle in hooked:
            handle.remove()


#: the causal mask's width read from a value: ``target_length = cache_position[-1] + 1`` (Jamba, Zamba, Zamba2)
_WIDTH_FROM_CACHE_POSITION = "cache_position[-1] + 1"


@contextlib.contextmanager
def fixed_width_masks(model: Any) -> Iterator[list[str]]:
    """While the block is open, every module of ``model`` whose ``_update_causal_mask`` reads the mask's width from
    ``cache_position[-1] + 1`` (Jamba, Zamba, Zamba2) has that width checked equal to the sequence length, where
    the mask is made; yields their paths.

    torch.export cannot know a width read from a tensor's value (an unbacked size ``u0``), and stops where
    attention slices the mask to the keys (``Eq(Min(length, u0), length)``). In one forward without a cache,
    ``cache_position`` is ``arange(length)``, so the width is the length: ``torch._check`` tells export so (and puts
    a runtime assert in the program). The mask itself is the model's own code; the captured graph is checked
    against the model's outputs (:meth:`Rewrites.checked`); a call with a cache fails the check and is refused."""
    patched: list[tuple[str, torch.nn.Module]] = []
    if isinstance(model, torch.nn.Module):
        for path, module in model.named_modules():
            method = getattr(type(module), "_update_causal_mask", None)
            if callable(method) and "_update_causal_mask" not in vars(module) and _width_from_values(method):
                module._update_causal_mask = _fixed_width(module._update_causal_mask)
                patched.append((path or type(model).__name__, module))
    try:
        yield [path for path, _ in patched]
    finally:
        for _, module in patched:
            del module._update_causal_mask


def _width_from_values(method: Any) -> bool:
    try:
        return _WIDTH_FROM_CACHE_POSITION in inspect.getsource(method)
    except (OSError, TypeError):
        return False


def _fixed_width(original: Any) -> Any:
    @functools.wraps(original)
    def update_causal_mask(attention_mask: Any, input_tensor: torch.Tensor, cache_position: Any, *args: Any, **kwargs: Any) -> Any:
        mask = original(attention_mask, input_tensor, cache_position, *args, **kwargs)
        if isinstance(mask, torch.Tensor):
            torch._check(mask.shape[-1] == input_tensor.shape[1])  # no cache: cache_position is arange(length)
        return mask

    return update_causal_mask


#: a mixer that masks its input's padding only where the mask is not all ones, a check on values (Zamba2)
_MASKS_IF_PADDED = "not torch.all(attention_mask==1)"


@contextlib.contextmanager
def premasked_mixers(model: Any) -> Iterator[list[str]]:
    """While the block is open, every state-space mixer of ``model`` that masks padding only ``if not
    torch.all(attention_mask==1)`` (Zamba2's; torch.export cannot pass a check on values) gets its input times the
    mask and no mask, where it is called without a cache; yields their paths.

    Without a cache that product is the mixer's only use of the mask (transformers 4.57's ``torch_forward``), and
    by an all-ones mask it changes nothing: the graph computes what the model computes (checked by
    :meth:`Rewrites.checked`)."""
    hooked: list[tuple[str, Any]] = []
    if isinstance(model, torch.nn.Module):
        for path, module in model.named_modules():
            if _masks_if_padded(type(module)):
                hooked.append((path, module.register_forward_pre_hook(_premask(module), with_kwargs=True)))
    try:
        yield [path or type(model).__name__ for path, _ in hooked]
    finally:
        for _, handle in hooked:
            handle.remove()


def _masks_if_padded(cls: type) -> bool:
    try:
        source = inspect.getsource(cls.torch_forward)
        names = list(inspect.signature(cls.forward).parameters)
    except (AttributeError, OSError, TypeError):
        return False
    return _MASKS_IF_PADDED in source and names[1:4] == ["hidden_states", "cache_params", "attention_mask"]


def _premask(module: torch.nn.Module) -> Any:
    signature = inspect.signature(module.forward)

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        given = signature.bind(*args, **kwargs).arguments
        mask, states = given.get("attention_mask"), given.get("hidden_states")
        if given.get("cache_params") is not None or not isinstance(mask, torch.Tensor) or mask.ndim != 2:
            return None
        given["hidden_states"] = (states * mask[:, :, None]).to(states.dtype)
        given["attention_mask"] = None
        return (), dict(given)

    return hook


#: ops whose output is a view of their first argument: a write into it writes into that argument
_VIEWS = {
    "slice", "select", "view", "_unsafe_view", "reshape", "unsqueeze", "squeeze", "expand", "transpose", "t", "permute",
    "narrow", "diagonal", "as_strided", "unflatten", "flatten", "alias", "detach", "view_as", "unfold", "split", "chunk",
    "unbind", "getitem",
}


def writes_live_values(program: torch.export.ExportedProgram) -> bool:
    """Does the exported graph write in place into a value computed from the inputs, where the write is read
    back (a write through a view, ``mask[:, :n] = ...``; or a tensor read again after ``x.masked_fill_(...)``)?

    lrpcli's graph computes every op out of place (it keeps each node's output for the walk), which loses such
    writes: transformers' ``shift_tokens_right`` / ``_shift_right`` (the decoder of every BART- and T5-family
    model then reads ``[0, 0, ...]`` instead of the shifted ids) and the 2D-to-4D padding mask of their causal
    decoders (``causal_mask[..., :n] = causal_mask[..., :n].masked_fill(...)``: the padding left out) are such
    writes. Where this says True, the program is functionalised (``run_decompositions({})``: the writes become
    ``slice_scatter`` / ``copy`` values). Constants written into constants the model builds itself (Swin's shift
    mask) are folded at capture (builder._fold) and do not count; a live value written into such a constant (T5's
    ``_shift_right`` into ``input_ids.new_zeros(shape)`` of a fixed shape) does."""
    from . import ops

    live: set[str] = set(program.graph_signature.user_inputs)
    order = {node: index for index, node in enumerate(program.graph.nodes)}
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        inputs = [arg for arg in node.all_input_nodes if arg.name in live]
        if not inputs:
            continue
        if not (ops.op_name(node.target) in ops.FACTORY_OPS and inputs == [node.args[0]]):
            live.add(node.name)  # (x.new_zeros(fixed size) is a fresh constant; a live value written into it is not)
        if not (ops.is_inplace(node.target) and isinstance(node.args[0], torch.fx.Node)):
            continue
        target = node.args[0]
        if target.op == "call_function" and ops.op_name(target.target) in _VIEWS:
            return True  # a write through a view reaches the view's base
        if any(order[user] > order[node] for user in target.users):
            return True  # the written tensor is read again under its old name
    return False


class Rewrites:
    """What :func:`rewritten` changed while a model was captured; :meth:`checked` holds the graph to the model."""

    def __init__(self) -> None:
        self.pooled: list[str] = []
        self.masked: list[str] = []
        self.widths: list[str] = []
        self.premasked: list[str] = []
        self.guarded: list[str] = []  # guards.py: value checks computed another way

    def checked(self, graph: Any, model: torch.nn.Module, example: Any, extras: dict | None) -> Any:
        """``graph``, checked against the model's own outputs and noted, where a rewrite was made."""
        if self.pooled:
            check_rewrite(
                graph, model, example, extras, f"the <eos> pooling of {', '.join(self.pooled)} computed as a gather",
                hint="lrpcli pools at each row's last <eos> as transformers' classifiers do; end every row with the eos token, "
                "or export the model yourself (torch.export) with a pooling it can capture",
            )
            note = f"pooled at each row's last <eos> by a gather (the model's counting cannot be captured): {', '.join(self.pooled)}"
            graph = graph.replace(notes=graph.notes + [note])
        elif self.masked:
            check_rewrite(
                graph, model, example, extras, f"the all-ones attention mask given to {', '.join(self.masked)}",
                hint="give the attention mask yourself (inputs={'attention_mask': mask}), or export the model yourself (torch.export)",
            )
        if self.widths or self.premasked:
            what = [f"the causal mask of {', '.join(self.widths)} as wide as the text"] if self.widths else []
            what += [f"the mixers {', '.join(self.premasked)} given their input masked"] if self.premasked else []
            check_rewrite(
                graph, model, example, extras, "; ".join(what),
                hint="call the model without a cache (past_key_values=None, use_cache=False) when explaining it",
            )
            graph = graph.replace(notes=graph.notes + [f"{part} (checked equal)" for part in what])
        if self.guarded:
            check_rewrite(
                graph, model, example, extras, "; ".join(self.guarded),
                hint="call the model without a cache and with its default inputs (no lang_ids, no position ids), or export it yourself (torch.export)",
            )
            graph = graph.replace(notes=graph.notes + [f"{part} (checked equal)" for part in self.guarded])
        return graph


@contextlib.contextmanager
def rewritten(model: Any, example: Any = None, extras: dict | None = None) -> Iterator[Rewrites]:
    """Every capture rewrite of this module and of guards.py applied to ``model`` while the block is open
    (``example``: the input, which fixes Longformer's global-token count)."""
    rewrites = Rewrites()
    with eos_pooling(model) as pooled, default_masks(model) as masked, fixed_width_masks(model) as widths, \
            premasked_mixers(model) as premasked, _guards(model, example, extras) as guarded:
        rewrites.pooled, rewrites.masked, rewrites.widths, rewrites.premasked = pooled, masked, widths, premasked
        rewrites.guarded = guarded
        yield rewrites


@contextlib.contextmanager
def _guards(model: Any, example: Any, extras: dict | None) -> Iterator[list[str]]:
    """guards.py's rewrites; yields what each changed, in words."""
    with contextlib.ExitStack() as stack:
        done: list[str] = []
        if example is not None:
            done += [f"Longformer global attention of {path}" for path in stack.enter_context(guards.fixed_global_attention(model, example, extras))]
        done += [f"the padded ids of {path} looked up as the ids and the padding" for path in stack.enter_context(guards.padded_lookups(model))]
        done += [f"the language adapters of {path} as one" for path in stack.enter_context(guards.single_language_adapters(model))]
        done += [f"the linear-attention mask of {path} kept" for path in stack.enter_context(guards.kept_linear_masks(model))]
        done += [f"the per-cell positions of {path} computed densely" for path in stack.enter_context(guards.cell_positions(model))]
        done += [f"the AltUp coefficients of {path} clamped before capture" for path in stack.enter_context(guards.clamped_weights(model))]
        if example is not None:
            done += [f"the position grid of {path} resized once" for path in stack.enter_context(guards.fixed_spatial_shapes(model, example, extras))]
        done += [f"the image tokens of {path} placed without their count check" for path in stack.enter_context(guards.unchecked_placeholders(model))]
        yield done


def own_outputs(model: torch.nn.Module, example: Any, extras: dict | None) -> torch.Tensor | None:
    """The model's own output tensor for ``example`` (its first tensor where it returns several), or None."""
    with torch.inference_mode():
        own = model(*(example if isinstance(example, tuple) else (example,)), **(extras or {}))
    if isinstance(own, torch.Tensor):
        return own
    values = own.values() if isinstance(own, dict) else own
    return next((v for v in values if isinstance(v, torch.Tensor)), None)


def _row_by_row(model: torch.nn.Module, example: Any, extras: dict | None, hint: str) -> torch.Tensor | None:
    """The model's own outputs for each sample of ``example`` alone, stacked; a ModelError where it refuses one."""
    lead = example[0] if isinstance(example, tuple) else example
    rows = []
    for index in range(lead.shape[0]):
        pick = (lambda t: t[index : index + 1])
        sample = tuple(pick(t) for t in example) if isinstance(example, tuple) else pick(example)
        try:
            row = own_outputs(model, sample, {name: pick(t) for name, t in (extras or {}).items()})
        except Exception as exc:  # the model refuses this input (a row without <eos>): no reference to check against
            raise ModelError(f"the model's own forward fails on sample {index} of this input ({type(exc).__name__}: {str(exc).strip()[:200]})", hint=hint) from exc
        if row is None:
            return None
        rows.append(row)
    return torch.cat(rows)


def check_rewrite(graph: Any, model: torch.nn.Module, example: Any, extras: dict | None, what: str, hint: str) -> None:
    """The graph captured with a rewrite must compute what the model computes with its own code, on the example:
    else a ModelError naming ``what`` was rewritten (a model whose code differs from the pattern is refused, not
    explained wrongly)."""
    lead = example[0] if isinstance(example, tuple) else example
    if not graph.dynamic_batch and tuple(graph.input_shape[:1]) != tuple(lead.shape[:1]):
        return  # the model's code fixed another batch size (Longformer's len(indices)): captured again for this one, checked then
    try:
        own = own_outputs(model, example, extras)
    except Exception:  # e.g. rows with different numbers of <eos>: each row on its own, as the rewrite takes them
        own = _row_by_row(model, example, extras, hint)
    with torch.inference_mode():
        captured = graph.run(example, extras)[graph.output]
    if not isinstance(captured, torch.Tensor) or own is None or captured.shape != own.shape:
        return  # a model with several outputs: the explainer checks the one it explains
    scale = float(own.abs().max()) or 1.0
    if not torch.allclose(captured.to(own.dtype), own, rtol=1e-4, atol=1e-5 * scale, equal_nan=True):
        raise ModelError(
            f"{what}: the captured graph gives other outputs than the model (largest difference "
            f"{float((captured.to(own.dtype) - own).abs().max()):.3g})",
            hint=hint,
        )
