"""ONNX files (``.onnx``) as MODEL: converted by onnx2torch into an nn.Module that is captured like any eager model.

An ONNX file is a protobuf, data: reading it must run nothing from it. onnx2torch builds a ``torch.fx``
GraphModule whose Python source torch generates and executes, and it names the submodules after the file's
node names, which torch writes into that source inside quotes (``getattr(self, "NAME")``). So before the
conversion every node gets a name of safe characters (letters, digits, ``_ / : -``), unique, and no node may
use an op outside the standard ONNX domain or one of the file's own functions (refused, naming the op).
Opsets above onnx2torch's newest (17) are converted down with onnx's version converter (what
``torch.onnx.export`` writes today is opset 18 or newer), and a Reshape's ``allowzero=1`` is dropped where its
shape holds no 0 (it changes nothing there; onnx2torch refuses it).

The model's one input gives the input shape (a symbolic batch dim is fine): :func:`input_shape` reads it
back from the converted module. Needs the extra ``onnx`` (onnx, onnx2torch; onnx2torch imports torchvision,
which must be built for the installed torch).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError

INSTALL_HINT = "pip install 'lrpcli[onnx]' (onnx, onnx2torch and torchvision)"
#: the newest opset onnx2torch converts (its registry's versions)
OPSET = 17
#: the standard ONNX domain, as files spell it
_STANDARD_DOMAINS = ("", "ai.onnx")
#: characters a node name keeps; every other one becomes "_" (quotes, backslashes and newlines above all)
_UNSAFE = re.compile(r"[^A-Za-z0-9_/:\-]")
#: where the converted module keeps what the file's input declares
_INPUT_ATTRIBUTE = "lrp_onnx_input"


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def load(path: Path) -> Any:
    """The ``.onnx`` file at ``path`` as an nn.Module (an fx GraphModule, in eval mode); ModelError for a
    file lrp cannot read, naming the op or the input that stops it."""
    onnx, convert = _modules(path)
    try:
        model = onnx.load(str(path))  # external data is read from the file's folder; onnx refuses paths out of it
    except Exception as exc:  # DecodeError on a damaged file, ValidationError on bad external data, ...
        raise ModelError(f"{path}: not a readable ONNX file: {type(exc).__name__}: {_first_line(exc)}") from exc
    name, dims = _input(path, model)
    _refuse_custom(path, model)
    model = _down_convert(onnx, model)
    _rename_nodes(model.graph)
    _drop_needless_allowzero(onnx, model.graph)
    _refuse_unconvertible(path, model)
    try:
        module = convert(model)
    except Exception as exc:  # an attribute onnx2torch does not implement, a shape it cannot handle
        raise ModelError(
            f"{path}: onnx2torch cannot convert this model: {type(exc).__name__}: {_first_line(exc)}",
            hint="export the PyTorch model it came from with torch.export.save (.pt2) instead",
        ) from exc
    _static_reshapes(module)
    setattr(module, _INPUT_ATTRIBUTE, (name, dims))
    return module.eval()


def input_shape(model: Any) -> tuple[int, ...] | None:
    """One input's shape without the batch dim, as a converted ONNX model's file declares it; None for
    other models and for inputs with symbolic dims past the batch."""
    declared = getattr(model, _INPUT_ATTRIBUTE, None) if _is_module(model) else None
    if declared is None:
        return None
    dims = declared[1][1:]
    return tuple(dims) if dims and all(isinstance(d, int) for d in dims) else None


def _is_module(model: Any) -> bool:
    return isinstance(model, torch.nn.Module)


def _modules(path: Path) -> tuple[Any, Any]:
    """onnx and onnx2torch's convert; ModelError naming the extra, or the torch/torchvision pairing where
    torchvision is installed but does not import beside this torch."""
    message = f"{path} is an ONNX model: reading it needs the onnx extra"
    hint = f"{INSTALL_HINT}, or give the PyTorch model it was exported from: torch.export.save (.pt2), torch.jit.save, or a state dict with --arch"
    try:
        import onnx
    except ImportError as exc:
        raise ModelError(message, hint=hint) from exc
    try:
        import torchvision  # noqa: F401  onnx2torch imports it
    except ImportError as exc:
        if exc.name == "torchvision":
            raise ModelError(message + " (torchvision is missing: onnx2torch needs it)", hint=hint) from exc
        raise _pairing(exc) from exc
    except Exception as exc:  # a torchvision built for another torch: RuntimeError "operator torchvision::nms does not exist"
        raise _pairing(exc) from exc
    try:
        from onnx2torch import convert
    except ImportError as exc:
        raise ModelError(message + " (onnx2torch is missing)", hint=hint) from exc
    return onnx, convert


def _pairing(exc: BaseException) -> ModelError:
    import importlib.metadata

    try:
        vision = f"torchvision {importlib.metadata.version('torchvision')}"
    except importlib.metadata.PackageNotFoundError:
        vision = "torchvision"
    return ModelError(
        f"onnx2torch (which reads ONNX files) needs torchvision, and {vision} does not import beside "
        f"torch {torch.__version__}: {type(exc).__name__}: {_first_line(exc)}",
        hint=f"install the torchvision built for torch {torch.__version__.split('+')[0]} (torch 2.14.1 pairs with "
        f"torchvision 0.29.1), then {INSTALL_HINT}",
    )


def _input(path: Path, model: Any) -> tuple[str, tuple[int | str, ...]]:
    """The one input the graph takes (initializers listed as inputs by old exporters are weights) and its
    dims, ints or the names of symbolic ones."""
    if not model.graph.node:
        raise ModelError(f"{path}: holds no ONNX graph (an empty or truncated file, or not ONNX at all)", hint="export or copy the model again")
    weights = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    if len(inputs) != 1:
        names = ", ".join(repr(value.name) for value in inputs) or "none"
        raise ModelError(
            f"{path}: lrp explains models with one input tensor; this ONNX model takes {len(inputs)} ({names})",
            hint="export a wrapper that takes one tensor (fixing or deriving the others inside), or explain the PyTorch "
            "model with lrpcli.Explainer(model).explain(x, inputs={name: tensor})",
        )
    value = inputs[0]
    shape = value.type.tensor_type.shape
    dims = tuple(dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in shape.dim)
    return value.name, dims


def _refuse_custom(path: Path, model: Any) -> None:
    """No op outside the standard domain and no function of the file's own: lrp runs nothing the file defines."""
    if len(model.functions):
        names = ", ".join(sorted({f"{f.domain}::{f.name}" if f.domain else f.name for f in model.functions}))
        raise ModelError(
            f"{path}: the ONNX model defines its own functions ({_clip(names)}), which lrp does not run",
            hint="export it with standard ONNX ops only (torch.onnx.export without export_modules_as_functions)",
        )
    for node in model.graph.node:
        if node.domain not in _STANDARD_DOMAINS:
            raise ModelError(
                f"{path}: node '{_clip(node.name)}' uses the custom op '{_clip(node.domain)}::{_clip(node.op_type)}', which lrp does not run",
                hint="export the model with standard ONNX ops only (no custom or contrib ops)",
            )


def _down_convert(onnx: Any, model: Any) -> Any:
    """The model at onnx2torch's opset where the file's is newer; the file as it is where onnx cannot convert it
    (then :func:`_refuse_unconvertible` names the op that stops it)."""
    if _opset(model) <= OPSET:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, OPSET)
    except Exception:  # noqa: BLE001 - an op without a down-converter: keep the file's opset
        return model


def _opset(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), OPSET)


def _rename_nodes(graph: Any) -> None:
    """Every node a unique name of safe characters, as onnx2torch will spell it (dots become slashes, no
    leading slash), that is no attribute of a GraphModule: the names go into the Python source torch.fx runs."""
    taken = {"initializers"} | set(dir(torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph())))
    for node in graph.node:
        base = _UNSAFE.sub("_", node.name.replace(".", "/")).lstrip("/") or _UNSAFE.sub("_", node.op_type) or "node"
        name, count = base, 0
        while name in taken:
            count += 1
            name = f"{base}_{count}"
        taken.add(name)
        node.name = name


def _drop_needless_allowzero(onnx: Any, graph: Any) -> None:
    """``allowzero=1`` on a Reshape whose shape is a constant without 0 means the same as 0; onnx2torch
    implements only 0 (torch.onnx.export writes 1)."""
    from onnx import numpy_helper

    constants = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = value
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        for attribute in node.attribute:
            if attribute.name == "allowzero" and attribute.i == 1 and (numpy_helper.to_array(constants[node.input[1]]) != 0).all():
                attribute.i = 0


def _refuse_unconvertible(path: Path, model: Any) -> None:
    """An op onnx2torch has no converter for, named with its node and opset (before the conversion starts)."""
    from onnx2torch.node_converters import get_converter

    version = _opset(model)
    for node in model.graph.node:  # all in the standard domain (_refuse_custom)
        try:
            get_converter(operation_type=node.op_type, version=version, domain="")
        except NotImplementedError as exc:
            import onnx2torch

            raise ModelError(
                f"{path}: the ONNX op '{_clip(node.op_type)}' (opset {version}, node '{node.name}') has no converter in onnx2torch "
                f"{getattr(onnx2torch, '__version__', '')}".rstrip(),
                hint="export the PyTorch model it came from with torch.export.save (.pt2) instead, or re-export the ONNX "
                f"file at opset {OPSET} or lower",
            ) from exc


class ConstantReshape(torch.nn.Module):
    """ONNX's Reshape with a constant shape, held as ints: onnx2torch reads the shape from a tensor at run
    time, which torch.export cannot trace (its values are data). A 0 copies the input's dim (allowzero=0)."""

    def __init__(self, shape: list[int]):
        super().__init__()
        self.shape = [int(d) for d in shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.reshape(x, [x.shape[i] if d == 0 else d for i, d in enumerate(self.shape)])

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def _static_reshapes(module: Any) -> None:
    """Every Reshape whose shape is one of the file's constants (an initializer or a Constant node) becomes a
    :class:`ConstantReshape`."""
    from onnx2torch.node_converters.constant import OnnxConstant
    from onnx2torch.node_converters.reshape import OnnxReshape

    changed = False
    for node in list(module.graph.nodes):
        if node.op != "call_module" or not isinstance(module.get_submodule(node.target), OnnxReshape) or len(node.args) < 2:
            continue
        shape = node.args[1]
        if getattr(shape, "op", None) == "get_attr":
            value = module.get_buffer(shape.target)
        elif getattr(shape, "op", None) == "call_module" and isinstance(module.get_submodule(shape.target), OnnxConstant):
            value = module.get_submodule(shape.target).value
        else:
            continue
        setattr(module, node.target, ConstantReshape(value.tolist()))
        node.args = (node.args[0],)
        changed = True
    if changed:
        module.graph.eliminate_dead_code()
        module.recompile()


def _clip(text: str, limit: int = 80) -> str:
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


def _first_line(exc: BaseException, limit: int = 200) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."
