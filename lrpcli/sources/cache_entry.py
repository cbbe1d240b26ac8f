"""The format of a graph-cache entry: a JSON description of the nodes and a safetensors file of their
constants, written from a Graph and read back into one with every name and value checked. Node targets
come from a closed vocabulary: ATen/prims op overloads looked up in ``torch.ops`` by name, and the few
Python functions of :data:`PYTHON_TARGETS` by their registered name; nothing is imported."""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch

from ..engine.graph import Graph, Node, Ref, channel_affine, complex_mul
from ..engine.kinds import _op_fits
from ..engine.experts import held
from ..engine.passes.norms import normalize


FORMAT = 2


#: the op namespaces an entry may name
_NAMESPACES = ("aten", "prims")


#: every Python function a captured graph may call, by the name an entry gives it: tuple access, the
#: arithmetic of traced sizes, and lrpcli's own ops (batch-norm and the norms in one form each)
PYTHON_TARGETS: dict[str, Callable] = {
    "getitem": operator.getitem,
    **{f"operator.{name}": getattr(operator, name) for name in ("add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "eq", "ne", "lt", "le", "gt", "ge")},
    **{f"torch.{name}": getattr(torch, name) for name in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not")},
    "channel_affine": channel_affine,
    "complex_mul": complex_mul,
    "normalize": normalize,
    "held": held,
}


_NAME_OF_TARGET = {id(fn): name for name, fn in PYTHON_TARGETS.items()}


#: Python functions whose arguments must be plain numbers or references (no strings to multiply, no
#: huge powers)
_ARITHMETIC = {id(fn) for name, fn in PYTHON_TARGETS.items() if name.startswith(("operator.", "torch."))}


_LARGEST_INT = 2**63  # (slices end at INT64_MAX)


class NotCacheable(Exception):
    """The graph holds a value the cache does not write (it is then simply not cached)."""


class Untrusted(Exception):
    """An entry that is damaged, foreign or does not reproduce the model: a miss."""


class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._seen: dict[int, str] = {}
        self._storages: set[int] = set()

    def value(self, obj: Any) -> Any:
        if isinstance(obj, Ref):
            return {"ref": obj.name}
        if isinstance(obj, torch.Tensor):
            key = self._seen.get(id(obj))
            if key is None:
                key = self._seen[id(obj)] = f"t{len(self.tensors)}"
                tensor = obj.detach().contiguous()
                storage = tensor.untyped_storage().data_ptr()
                if storage in self._storages:  # a view of a tensor already stored (safetensors refuses shared memory)
                    tensor = tensor.clone()
                self._storages.add(tensor.untyped_storage().data_ptr())
                self.tensors[key] = tensor
            return {"tensor": key}
        if obj is None or isinstance(obj, (bool, str, int)):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"float": repr(obj)}
        if isinstance(obj, torch.Size):
            return {"size": list(obj)}
        if isinstance(obj, tuple):
            return {"tuple": [self.value(item) for item in obj]}
        if isinstance(obj, list):
            return [self.value(item) for item in obj]
        if isinstance(obj, dict):
            if not all(isinstance(k, str) for k in obj):
                raise NotCacheable("a dict with non-string keys")
            return {"dict": {k: self.value(v) for k, v in obj.items()}}
        if isinstance(obj, torch.dtype):
            return {"dtype": str(obj).replace("torch.", "")}
        if isinstance(obj, torch.device):
            return {"device": str(obj)}
        if isinstance(obj, (torch.layout, torch.memory_format)):
            return {"torch": str(obj).replace("torch.", "")}
        if isinstance(obj, slice):
            return {"slice": [self.value(obj.start), self.value(obj.stop), self.value(obj.step)]}
        if obj is Ellipsis:
            return {"ellipsis": True}
        raise NotCacheable(f"a value of type {type(obj).__name__}")


def _target_name(target: Any) -> dict[str, str]:
    if isinstance(target, torch._ops.OpOverload) and target.namespace in _NAMESPACES:
        return {"op": f"{target.namespace}::{target._opname}.{target._overloadname}"}
    name = _NAME_OF_TARGET.get(id(target))
    if name is None:
        raise NotCacheable(f"the op target {getattr(target, '__module__', '')}.{getattr(target, '__name__', target)}")
    return {"fn": name}


def _encode(graph: Graph) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    encoder = _Encoder()
    nodes = []
    for node in graph.nodes:
        if node.gates or node.gate_op:
            raise NotCacheable("a graph already rewritten by canonizers")
        nodes.append(
            {
                "name": node.name,
                "target": _target_name(node.target),
                "args": encoder.value(node.args),
                "kwargs": encoder.value(node.kwargs),
                "module": node.module,
                "module_type": node.module_type,
                "op": node.op,
                "hint": node.hint,
                "batch_dim": node.batch_dim,
            }
        )
    meta = {
        "format": FORMAT,
        "input": graph.input,
        "output": graph.output,
        "source": graph.source,
        "input_shape": list(graph.input_shape),
        "dynamic_batch": graph.dynamic_batch,
        "notes": list(graph.notes),
        "extra_inputs": list(graph.extra_inputs),
        "nodes": nodes,
    }
    return meta, encoder.tensors


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Untrusted(f"{what} is not plain text")
    return value


def _resolve_target(entry: Any) -> Any:
    if not isinstance(entry, dict) or len(entry) != 1:
        raise Untrusted("a node target is not an op name")
    (tag, name), = entry.items()
    if tag == "fn" and isinstance(name, str) and name in PYTHON_TARGETS:
        return PYTHON_TARGETS[name]
    if tag == "op" and isinstance(name, str):
        namespace, _, rest = name.partition("::")
        packet_name, _, overload = rest.rpartition(".")
        if namespace in _NAMESPACES and packet_name and not packet_name.startswith("__"):
            packet = getattr(getattr(torch.ops, namespace), packet_name, None)
            if isinstance(packet, torch._ops.OpOverloadPacket) and overload in packet.overloads():
                return getattr(packet, overload)
    raise Untrusted(f"the node target {name!r} is outside lrpcli's vocabulary (ATen ops and {', '.join(PYTHON_TARGETS)})")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if obj is None or isinstance(obj, (bool, str, float)):
        return obj
    if isinstance(obj, int):
        if abs(obj) > _LARGEST_INT:
            raise Untrusted("an integer too large")
        return obj
    if isinstance(obj, list):
        return [_decode(item, tensors) for item in obj]
    if not isinstance(obj, dict) or len(obj) != 1:
        raise Untrusted("a value of unknown form")
    (tag, value), = obj.items()
    if tag == "ref" and isinstance(value, str):
        return Ref(value)
    if tag == "tensor" and value in tensors:
        return tensors[value]
    if tag == "float" and value in ("nan", "inf", "-inf"):
        return float(value)
    if tag == "size" and isinstance(value, list) and all(isinstance(v, int) and 0 <= v <= _LARGEST_INT for v in value):
        return torch.Size(value)
    if tag in ("tuple", "slice") and isinstance(value, list):
        items = tuple(_decode(item, tensors) for item in value)
        if tag == "tuple":
            return items
        if len(items) == 3:
            return slice(*items)
    if tag == "dict" and isinstance(value, dict):
        return {k: _decode(v, tensors) for k, v in value.items()}
    if tag in ("dtype", "torch") and isinstance(value, str) and not value.startswith("_"):
        found = getattr(torch, value, None)
        if isinstance(found, torch.dtype if tag == "dtype" else (torch.layout, torch.memory_format)):
            return found
    if tag == "device" and isinstance(value, str) and value.split(":")[0] in ("cpu", "cuda", "mps", "meta"):
        return torch.device(value)
    if tag == "ellipsis" and value is True:
        return Ellipsis
    raise Untrusted(f"a value tagged {tag!r} that lrpcli does not write")


def _parse(meta: Any, tensors: dict[str, torch.Tensor]) -> Graph:
    """The graph an entry describes, every name and value checked; kinds are left for derive_kinds."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise Untrusted("another format")
    graph_input = _text(meta["input"], "the input name")
    extra_inputs = tuple(_text(name, "an extra input name") for name in meta["extra_inputs"])
    known = {graph_input, *extra_inputs}
    nodes = []
    for entry in meta["nodes"]:
        name = _text(entry["name"], "a node name")
        if name in known:
            raise Untrusted(f"the node name {name!r} is used twice")
        batch_dim = entry["batch_dim"]
        if batch_dim is not None and (isinstance(batch_dim, bool) or not isinstance(batch_dim, int)):
            raise Untrusted("a batch dim is not a number")
        node = Node(
            name=name,
            target=_resolve_target(entry["target"]),
            kind=None,
            args=_decode(entry["args"], tensors),
            kwargs=_decode(entry["kwargs"], tensors),
            module=_text(entry["module"], "a module path"),
            module_type=_text(entry["module_type"], "a module type"),
            op=_text(entry["op"], "an op name"),
            hint=None if entry["hint"] is None else _text(entry["hint"], "a hint"),
            batch_dim=batch_dim,
        )
        if not isinstance(node.args, tuple) or not isinstance(node.kwargs, dict):
            raise Untrusted("a node's arguments are not a tuple and a dict")
        if not node.refs or any(ref not in known for ref in node.refs):
            raise Untrusted(f"node {name!r} reads a value defined nowhere before it")
        if not _op_fits(node):
            raise Untrusted(f"node {name!r} names the op {node.op!r} for {node.target}")
        if id(node.target) in _ARITHMETIC and any(
            not isinstance(leaf, (Ref, bool, int, float)) for leaf in (*node.args, *node.kwargs.values())
        ):
            raise Untrusted(f"node {name!r} does arithmetic on something other than numbers")
        known.add(name)
        nodes.append(node)
    output = _text(meta["output"], "the output name")
    if output not in {node.name for node in nodes}:
        raise Untrusted("the output is no node of the graph")
    source = meta["source"]
    if source not in ("export", "torchscript", "exported_program"):
        raise Untrusted("an unknown source")
    input_shape = meta["input_shape"]
    if not isinstance(input_shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in input_shape):
        raise Untrusted("the input shape is not a list of numbers")
    if not isinstance(meta["dynamic_batch"], bool):
        raise Untrusted("dynamic_batch is not true or false")
    return Graph(
        input=graph_input,
        nodes=nodes,
        output=output,
        source=source,
        input_shape=tuple(input_shape),
        dynamic_batch=meta["dynamic_batch"],
        notes=[_text(note, "a note") for note in meta["notes"]],
        extra_inputs=extra_inputs,
    )
