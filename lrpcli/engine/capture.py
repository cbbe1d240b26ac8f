"""Model -> graph: torch.export for nn.Modules, TorchScript conversion, ``.pt2`` programs as they are.

One function, :func:`capture`, whatever the model; the private TorchScript converter is wrapped in
:func:`torchscript_conversion`, the one place to fix if torch moves it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any

import torch

from ..errors import ModelError
from .builder import from_graph_module
from .experts import dense_experts
from .graph import Graph
from .held_gates import held_gates, note as gates_note
from .held_kernels import held_kernels, note as kernel_note
from .patterns import rewritten, writes_live_values
from .state_space import held_selection


def capture(
    model: Any, example: torch.Tensor | tuple[torch.Tensor, ...], exact_batch: bool = False, extras: dict[str, torch.Tensor] | None = None
) -> Graph:
    """Capture ``model`` (nn.Module, ScriptModule or ExportedProgram) as a Graph.

    ``example`` is one input batch; its shape fixes everything but the batch size,
    unless the model itself fixes the batch size (then ``exact_batch`` captures for
    exactly ``example``'s batch). A tuple of batches: the model's first positional inputs, each explained.
    """
    graph = _captured(model, example, exact_batch, extras)
    return checked_against_model(graph, model, example, extras)


def _captured(model: Any, example: Any, exact_batch: bool, extras: dict[str, torch.Tensor] | None) -> Graph:
    """The graph of ``model``, each source its own way (see :func:`capture`)."""
    explained = len(example) if isinstance(example, tuple) else 1
    if isinstance(model, torch.export.ExportedProgram):
        program = model.run_decompositions({}) if writes_live_values(model) else model  # see _without_vmap
        return from_graph_module(program.module(), "exported_program", extras=bool(extras), explained=explained)
    if explained > 1 and isinstance(model, torch.jit.ScriptModule):
        raise ModelError(
            "several explained inputs are supported for nn.Modules and exported programs, not yet for TorchScript files",
            hint="save the model with torch.export.save (.pt2), or pass the architecture and its state dict",
        )
    if extras and isinstance(model, torch.jit.ScriptModule):
        raise ModelError(
            "extra inputs are supported for nn.Modules and exported programs, not yet for TorchScript files",
            hint="save the model with torch.export.save (.pt2), or wrap it so that forward takes one tensor",
        )
    if isinstance(model, torch.jit.ScriptModule):
        program, note = torchscript_conversion(model, example, exact_batch)
        graph = from_graph_module(program.module(), "torchscript")
        return graph.replace(notes=graph.notes + [note]) if note else graph
    if isinstance(model, torch.nn.Module):
        # mixture-of-experts blocks: every expert on every token; selective SSMs: their Δ, A, B, C held
        with held_gates(model) as gated, held_kernels(model) as kernels, dense_experts(model) as swapped, held_selection(model) as held, rewritten(model, example, extras) as rewrites:
            program = export_module(model, example, exact_batch, extras).module()
        graph = from_graph_module(program, "export", extras=bool(extras), explained=explained)
        graph = rewrites.checked(graph, model, example, extras)  # patterns.py: code torch.export cannot capture
        graph = held.applied(graph, model, example, extras)  # state_space.py: Mamba-2's Δ, B, C held; checks
        if gated:  # held_gates.py: Qwen3-Next's delta rule g, beta and Gemma3n's top-k cutoff held
            graph = graph.replace(notes=graph.notes + [gates_note(gated)])
        if kernels:  # held_kernels.py: attention weights made without a softmax held
            graph = graph.replace(notes=graph.notes + [kernel_note(kernels)])
        if swapped:
            _check_dense(graph, model, example, extras, swapped)
            graph = graph.replace(notes=graph.notes + [f"mixture-of-experts blocks computed densely, the router's weights held constant: {', '.join(swapped)}"])
        return graph
    raise ModelError(
        f"cannot explain an object of type {type(model).__name__}",
        hint="pass an nn.Module, a ScriptModule, an ExportedProgram or a path to a saved model",
    )


#: how far a captured graph's outputs may be from the model's own: this times the largest |output| (at least 1).
#: Folded constants round differently from the model's ops (batch-norm as one scale and shift, an LSTM written
#: out as cells). Measured (issue 27): float32 graphs within 1.4e-7 on every sample model and every model the
#: capture, zoo and HF tests capture, 3.9e-7 on the 255 architectures of benchmarks/hf_zoo.py; float64 within
#: 6e-16 where every op runs in float64, but transformers computes parts of a float64 model in float32 (RMSNorm,
#: softmax, MoE routers: DeepSeek-V2's dense capture 4.7e-8 off), so float64 gets float32's rounding and some.
#: A capture that computed something else was off by 1e-2 (ProphetNet's n-gram mask).
_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}
_LOW_PRECISION_TOLERANCE = 1e-2  # float16, bfloat16


def checked_against_model(graph: Graph, model: Any, example: Any, extras: dict | None) -> Graph:
    """``graph``, once its outputs on (the first two samples of) ``example`` equal the model's own forward's:
    a graph that computes something else would be explained silently wrong, so it is refused with a ModelError
    naming the largest difference. One forward of the model per capture; a graph from the disk cache is held
    to the same test when it is loaded (sources/cache.py). Where the model's own forward fails on the example,
    nothing can be compared: the graph says so in a note."""
    x, more = _first_samples(graph, example, extras)
    try:
        own = _own_output(model, x, more)
    except Exception as exc:  # e.g. a model that refuses a batch the export took: no reference to compare with
        return graph.replace(notes=graph.notes + [f"the captured graph was not checked against the model: its own forward fails ({_first_line(exc)})"])
    try:
        with torch.inference_mode():
            got = graph(x, more)
    except Exception:  # an op that cannot run (one without a rule): the explainer names it when it runs the graph
        return graph
    if not isinstance(got, torch.Tensor) or own is None or got.shape != own.shape:
        return graph  # another kind of output: the explainer refuses it
    gap, tolerance, at = _largest_gap(got, own)
    if gap > tolerance:
        index = ", ".join(map(str, at))
        raise ModelError(
            f"the captured graph computes something else than the model: its output [{index}] is {float(got[at]):.6g}, the "
            f"model's own {float(own[at]):.6g} (largest difference {gap:.3g}, allowed {tolerance:.3g}, on the first "
            f"{x[0].shape[0] if isinstance(x, tuple) else x.shape[0]} sample(s) of the input); its relevance would explain another function",
            hint="this is a bug in lrpcli's capture (or torch.export's): please report it with the model's class and this message. "
            "If the graph came from the cache, run again with --no-cache (or LRP_CACHE_DIR=off); "
            "else save the model yourself with torch.export.save and explain the .pt2",
        )
    return graph


def _first_samples(graph: Graph, example: Any, extras: dict | None) -> tuple[Any, dict | None]:
    """Two samples are enough to compare a graph with its model (all of them for a fixed batch size)."""
    lead = example[0] if isinstance(example, tuple) else example
    if not graph.dynamic_batch or lead.shape[0] <= 2:
        return example, extras
    first = tuple(t[:2] for t in example) if isinstance(example, tuple) else example[:2]
    return first, ({name: t[:2] for name, t in extras.items()} if extras else extras)


def _own_output(model: Any, x: Any, extras: dict | None) -> torch.Tensor | None:
    """The model's own output for ``x``, in eval mode as captured (each module's mode put back); None where it is
    not one tensor (or a sequence whose first item is)."""
    examples, extras = (x if isinstance(x, tuple) else (x,)), dict(extras or {})
    if isinstance(model, torch.export.ExportedProgram):  # (its module has no train/eval modes to set)
        with torch.inference_mode():
            own = model.module()(*examples, **extras)
    else:
        modes = {module: module.training for module in model.modules()}
        model.eval()
        try:
            names = None if isinstance(model, torch.jit.ScriptModule) else _explained_names(model, extras, len(examples))
            with torch.inference_mode():
                if names is not None and _held_before(model, extras, names):  # called by name, as export_module does
                    own = model(**dict(zip(names, examples)), **extras)
                else:
                    own = model(*examples, **extras)
        finally:
            for module, training in modes.items():
                module.training = training
    if isinstance(own, (tuple, list)) and own:
        own = own[0]
    return own if isinstance(own, torch.Tensor) else None


def _largest_gap(got: torch.Tensor, own: torch.Tensor) -> tuple[float, float, tuple[int, ...]]:
    """The largest |got - own| (NaN where only one of them is NaN, or an infinity the other lacks, counts as
    infinite; equal infinities and NaN against NaN agree), the tolerance for
    ``own``'s dtype and scale, and where the largest difference is."""
    got, expected = got.detach().double(), own.detach().double()
    agree = (got.isnan() & expected.isnan()) | (got == expected)  # equal infinities too (an inf in the input row)
    difference = (got - expected).abs().nan_to_num(float("inf"), float("inf")).masked_fill(agree, 0.0)
    finite = expected.abs().nan_to_num(0.0, 0.0, 0.0)
    scale = max(float(finite.max()) if finite.numel() else 0.0, 1.0)
    tolerance = _TOLERANCE.get(own.dtype, _LOW_PRECISION_TOLERANCE) * scale
    if difference.numel() == 0:
        return 0.0, tolerance, ()
    flat = int(difference.argmax())
    at = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), difference.shape))
    return float(difference.reshape(-1)[flat]), tolerance, at


def _check_dense(graph: Graph, model: torch.nn.Module, example: Any, extras: dict | None, swapped: list[str]) -> None:
    """The graph captured with dense expert blocks must compute what the model computes with its own sparse
    ones (a block whose routing differs from its family's dense form is refused, not explained wrongly)."""
    with torch.inference_mode():
        captured = graph.run(example, extras)[graph.output]
        try:
            own = model(*(example if isinstance(example, tuple) else (example,)), **(extras or {}))
        except Exception as exc:  # the model's own (sparse) forward: nothing to check the dense capture against
            raise ModelError(
                f"the model's own forward fails, so its mixture-of-experts blocks ({', '.join(swapped)}) cannot be checked: {type(exc).__name__}: {exc}",
                hint="run the model in a dtype it supports (DeepSeek-V3, dots1, GLM4-MoE and ERNIE route in float32, and their own forward fails in float64)",
            ) from exc
    own = own if isinstance(own, torch.Tensor) else next((v for v in (own.values() if isinstance(own, dict) else own) if isinstance(v, torch.Tensor)), None)
    if not isinstance(captured, torch.Tensor) or own is None or captured.shape != own.shape:
        return  # a model with several outputs: the explainer checks the one it explains
    scale = float(own.abs().max()) or 1.0
    if not torch.allclose(captured.to(own.dtype), own, rtol=1e-4, atol=1e-5 * scale):
        raise ModelError(
            f"the mixture-of-experts block(s) {', '.join(swapped)} route differently from their family's dense form: computed densely they "
            f"give other outputs (largest difference {float((captured.to(own.dtype) - own).abs().max()):.3g})",
            hint="lrpcli computes transformers' MoE blocks as their families route (lrpcli.engine.experts.FAMILIES); a block changed since, or configured otherwise, is not covered: export the model yourself with a dense expert loop",
        )


@contextlib.contextmanager
def _quiet_torch():
    """torch.export logs pages of internals when tracing fails; our error says what matters."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _example_batch(example: torch.Tensor) -> torch.Tensor:
    """A batch of two samples: export treats a batch of 1 as a constant size."""
    example = example.detach()
    if example.ndim == 0:
        raise ModelError("the example input is a scalar; give a batch with a leading batch dimension")
    if example.shape[0] >= 2:
        return example[:2]
    return example.expand(2, *example.shape[1:]).clone()


def export_module(
    model: torch.nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    exact_batch: bool = False,
    extras: dict[str, torch.Tensor] | None = None,
) -> torch.export.ExportedProgram:
    """torch.export an eager module in eval mode with a dynamic batch dimension; ``extras`` are further
    keyword inputs (an attention mask), batch first like the example. A tuple ``example``: the first
    positional inputs, their batch dims one shared dim (the samples of every input are the same samples)."""
    modes = {module: module.training for module in model.modules()}  # each put back as it was, not all as the top
    model.eval()
    extras = dict(extras or {})
    examples = example if isinstance(example, tuple) else (example,)
    names = _explained_names(model, extras, len(examples))
    by_name = names is not None and _held_before(model, extras, names)

    def export(args: tuple, kwargs: dict, dims: Any) -> torch.export.ExportedProgram:
        if by_name:  # an input held with inputs= comes before an explained one: all by name, the explained first
            kwargs, args = {**dict(zip(names, args)), **kwargs}, ()
        return _without_vmap(torch.export.export(model, args, kwargs=kwargs or None, dynamic_shapes=dims))

    try:
        with _quiet_torch(), _plain_buffers(model):
            if not exact_batch:
                try:
                    batch = {name: _example_batch(value) for name, value in extras.items()}
                    first = {0: torch.export.Dim("batch")} if len(examples) > 1 else {0: torch.export.Dim.AUTO}
                    dims = tuple(first for _ in examples) + tuple({0: torch.export.Dim.AUTO} for _ in batch)
                    if batch:
                        dims = {**dict(zip(names or [], dims)), **dict(zip(batch, dims[len(examples):]))}
                    return export(tuple(_example_batch(value) for value in examples), batch, dims)
                except Exception:  # e.g. code that bakes the batch size in: capture for exactly this batch
                    pass
            fixed = {name: value.detach() for name, value in extras.items()}
            return export(tuple(value.detach() for value in examples), fixed, None)
    except Exception as exc:  # torch raises many kinds here; all mean "cannot capture"
        shapes = " and ".join(str(tuple(value.shape)) for value in examples)
        hint = (
            "the model's forward must be traceable by torch.export for inputs shaped "
            f"{shapes}; check the input shape (it holds a batch: (N, C, H, W) images, (N, F) rows, "
            "x[None] for one input), or save the model with torch.jit.script"
        )
        if isinstance(exc, TypeError) and "too many positional" in str(exc) and len(examples) > 1:
            hint = f"x holds {len(examples)} inputs; give as many as forward takes, in its order (held ones with inputs=)"
        elif isinstance(exc, TypeError) and "argument" in str(exc):
            hint = "give the model's other inputs (e.g. an attention mask) with inputs={name: tensor}, or wrap it so that forward takes one tensor"
        raise ModelError(f"torch.export could not capture {type(model).__name__}: {_first_line(exc)}", hint=hint) from exc
    finally:
        for module, training in modes.items():
            module.training = training


@contextlib.contextmanager
def _plain_buffers(model: torch.nn.Module):
    """Buffers registered as Parameters (FalconMamba's ``register_buffer("b_c_rms", nn.Parameter(...))``) held
    as plain tensors while exporting: torch.export lifts such a tensor twice and its program's ``module()`` then
    fails ("attribute 'b_c_rms' already exists"). Same storage, so the values are the model's; put back after."""
    swapped = []
    for module in model.modules():
        for name, buffer in list(module._buffers.items()):
            if isinstance(buffer, torch.nn.Parameter):
                swapped.append((module, name, buffer))
                module._buffers[name] = buffer.detach()
    try:
        yield
    finally:
        for module, name, buffer in swapped:
            module._buffers[name] = buffer


def _parameters(model: torch.nn.Module) -> list[str]:
    """The names of forward's parameters that take one value each (not ``*args``/``**kwargs``)."""
    import inspect

    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _explained_names(model: torch.nn.Module, extras: dict, count: int) -> list[str] | None:
    """The parameters the explained inputs fill: forward's first ``count`` parameters that ``extras`` (the
    inputs held constant) do not name; None where forward's signature does not say."""
    free = [name for name in _parameters(model) if name not in extras]
    return free[:count] if len(free) >= count else None


def _held_before(model: torch.nn.Module, extras: dict, names: list[str]) -> bool:
    """Whether a held input comes before an explained one in forward's signature (then positions do not fit)."""
    parameters = _parameters(model)
    last = max(parameters.index(name) for name in names)
    return any(name in extras for name in parameters[:last])


def _without_vmap(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Code that uses torch.vmap (Hugging Face transformers 4.5x builds attention masks so) exports as
    functorch nesting ops, which only run in order as one region; lowering to ATen inlines them."""
    functorch = any(
        node.op == "call_function" and str(getattr(node.target, "__module__", "")).startswith("torch._functorch")
        for node in program.graph.nodes
    )
    recurrent = {node.target for node in program.graph.nodes if node.op == "call_function" and node.target in _RECURRENT}
    if recurrent:  # nn.LSTM / nn.GRU run as one fused op: written out as their cells (linear, sigmoid gates, tanh)
        from torch._decomp import decomposition_table

        return program.run_decompositions({op: decomposition_table[op] for op in recurrent})
    # in-place writes into computed values (a slice of a mask, shifted ids): functional ops, or the graph loses them
    return program.run_decompositions({}) if functorch or writes_live_values(program) else program


_RECURRENT = tuple(
    getattr(getattr(torch.ops.aten, name), overload)
    for name in ("lstm", "gru", "rnn_tanh", "rnn_relu")
    for overload in ("input", "data")
)


def torchscript_to_exported(
    scripted: torch.jit.ScriptModule, example: torch.Tensor, exact_batch: bool = False
) -> torch.export.ExportedProgram:
    """Convert a TorchScript module to an ExportedProgram (see :func:`torchscript_conversion`)."""
    return torchscript_conversion(scripted, example, exact_batch)[0]


#: TorchScript conversions, most general first: every dim dynamic (torch's default), only the batch dim,
#: nothing (exactly the example's shape). Shape arithmetic such as Swin's window padding defeats the first.
_CONVERSIONS = ("dynamic", "batch", "static")


def torchscript_conversion(
    scripted: torch.jit.ScriptModule, example: torch.Tensor, exact_batch: bool = False
) -> tuple[torch.export.ExportedProgram, str | None]:
    """Convert a TorchScript module to an ExportedProgram, and say how if not in the general way.

    Wraps torch's private ``TS2EPConverter`` (checked on torch 2.13: traced and scripted
    models convert, parameter names kept); if torch moves it, this is the one place to fix.
    Where the conversion with dynamic shapes fails (data-dependent guards on the model's
    shape arithmetic), it is retried with only the batch dim dynamic, then for exactly the
    example's shape; the note says which.
    """
    try:
        from torch._export.converter import TS2EPConverter
    except ImportError as exc:  # pragma: no cover - depends on the torch version
        raise ModelError(
            f"this torch ({torch.__version__}) has no TorchScript converter",
            hint="save the model with torch.export.save (.pt2) or as a state dict with its architecture",
        ) from exc
    scripted.eval()
    first_error: Exception | None = None
    for mode in _CONVERSIONS[2:] if exact_batch else _CONVERSIONS:
        sample = example.detach() if mode == "static" else _example_batch(example)
        try:
            with _quiet_torch(), _dynamic_dims(mode):
                program = TS2EPConverter(scripted, (sample,)).convert()
        except Exception as exc:  # torch raises many kinds here; all mean "cannot convert this way"
            first_error = first_error or exc
            continue
        note = {
            "dynamic": None,
            "batch": "the TorchScript model was converted with only its batch size free (its shape arithmetic fixes the rest)",
            "static": f"the TorchScript model was converted for exactly inputs shaped {tuple(example.shape)} "
            "(its shape arithmetic defeats a dynamic conversion); save it with torch.export for other batch sizes",
        }[mode]
        return program, (None if exact_batch else note)
    raise ModelError(
        f"could not convert the TorchScript model to a graph: {_first_line(first_error)}",
        hint="check the input shape; or save the model with torch.export.save (.pt2)",
    ) from first_error


@contextlib.contextmanager
def _dynamic_dims(mode: str):
    """Make TS2EPConverter's retrace treat every dim as dynamic (its default), only the batch dim, or none.

    The converter passes ``Dim.AUTO`` for every dim to ``torch.export._trace._export``; this swaps that
    argument for one call (the converter has no option for it)."""
    if mode == "dynamic":
        yield
        return
    import torch.export._trace as trace

    real = trace._export

    def export(*args, **kwargs):
        if "dynamic_shapes" in kwargs:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim.AUTO},) if mode == "batch" else None
            kwargs["prefer_deferred_runtime_asserts_over_guards"] = True  # sizes computed with .item(): checked when run
        return real(*args, **kwargs)

    trace._export = export
    try:
        yield
    finally:
        trace._export = real


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
