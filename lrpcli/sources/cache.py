"""A disk cache of captured graphs, so that a second run on the same model skips the capture.

Capturing a model (torch.export, or converting a TorchScript file) takes seconds and loads torch's
compiler stack; the graph it yields depends only on the weights file (and the architecture that
builds it), the input's shape and dtype, and the versions of torch and of lrpcli's graph code. Those
make the key.

A cache entry is never trusted as code or as a result (issue 24):

- It is data only: a JSON description of the nodes and a safetensors file of their constants. Node
  targets come from a closed vocabulary: ATen/prims op overloads looked up in ``torch.ops`` by name,
  and the few Python functions of :data:`PYTHON_TARGETS` by their registered name. Nothing is
  imported, nothing is looked up in ``operator`` or any other module.
- Kinds are never read: they are derived again from the targets, the arguments and the dtypes the
  graph computes (:func:`derive_kinds`, the same decisions the capture makes). A graph whose derived
  kinds differ from its capture's is not written at all, so a loaded graph explains exactly as a
  fresh capture.
- Before an entry is used, its output on the first batch must equal the model's own output;
  otherwise it is a miss (said once) and the model is captured again.
- The folder is created private (0700); one that others can write, or that another user owns, is not
  used (said once). A cache that cannot be written is a warning, and the run goes on.

Where: ``$LRP_CACHE_DIR``, else ``~/.cache/lrpcli``; ``LRP_CACHE_DIR=off`` (or ``--no-cache``)
turns it off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import operator
import os
import stat
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from ..engine import ops
from ..errors import LrpWarning
from ..engine.builder import _ID_VIEWS, _unsupported_hint
from ..engine.graph import Graph, Node, Ref, channel_affine
from ..engine.passes.norms import normalize

FORMAT = 2
#: lrpcli's modules whose code decides what a captured graph looks like (part of the key)
_GRAPH_CODE = ("engine/graph.py", "engine/builder.py", "engine/capture.py", "engine/ops.py", "engine/passes/norms.py", "sources/safety.py", "sources/cache.py")
#: the op namespaces an entry may name
_NAMESPACES = ("aten", "prims")

#: every Python function a captured graph may call, by the name an entry gives it: tuple access, the
#: arithmetic of traced sizes, and lrpcli's own ops (batch-norm and the norms in one form each)
PYTHON_TARGETS: dict[str, Callable] = {
    "getitem": operator.getitem,
    **{f"operator.{name}": getattr(operator, name) for name in ("add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "eq", "ne", "lt", "le", "gt", "ge")},
    **{f"torch.{name}": getattr(torch, name) for name in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not")},
    "channel_affine": channel_affine,
    "normalize": normalize,
}
_NAME_OF_TARGET = {id(fn): name for name, fn in PYTHON_TARGETS.items()}
#: the kind of lrpcli's own ops (the op table knows ATen's)
_OWN_KINDS = {id(channel_affine): "batchnorm", id(normalize): "layernorm"}
#: Python functions whose arguments must be plain numbers or references (no strings to multiply, no
#: huge powers)
_ARITHMETIC = {id(fn) for name, fn in PYTHON_TARGETS.items() if name.startswith(("operator.", "torch."))}
_LARGEST_INT = 2**63  # (slices end at INT64_MAX)


class NotCacheable(Exception):
    """The graph holds a value the cache does not write (it is then simply not cached)."""


class Untrusted(Exception):
    """An entry that is damaged, foreign or does not reproduce the model: a miss."""


_said: set[str] = set()


def _say_once(message: str) -> None:
    """A warning the CLI shows (the library never prints); each said once per process."""
    if message not in _said:
        _said.add(message)
        warnings.warn(message, LrpWarning, stacklevel=3)


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is off."""
    value = os.environ.get("LRP_CACHE_DIR")
    if value is not None and value.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "lrpcli"


def private_dir() -> Path | None:
    """The cache folder, created private, or None when caching is off or the folder is not safe to use:
    a folder that others can write or another user owns could hold planted entries (said once)."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as exc:
        _say_once(f"the graph cache folder {folder} cannot be used ({exc.strerror or exc}); models are captured on every run")
        return None
    if not stat.S_ISDIR(info.st_mode):
        _say_once(f"the graph cache folder {folder} is not a folder; models are captured on every run")
        return None
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        _say_once(f"the graph cache folder {folder} belongs to another user and is not used (set LRP_CACHE_DIR to a folder of your own)")
        return None
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        _say_once(f"the graph cache folder {folder} is writable by others and is not used (chmod 700 {folder}, or set LRP_CACHE_DIR)")
        return None
    return folder


def _code_hash() -> str:
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent.parent  # lrpcli/
    for name in _GRAPH_CODE:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def entry_key(model_id: str, example: torch.Tensor, extras: dict[str, torch.Tensor] | None, exact_batch: bool) -> str:
    """The key of one captured graph: the model, the input's shape and dtype, the extra inputs, the versions."""
    from .. import __version__

    parts = {
        "format": FORMAT,
        "model": model_id,
        "shape": list(example.shape[1:]) if not exact_batch else list(example.shape),
        "dtype": str(example.dtype),
        "extras": sorted((name, list(t.shape[1:]), str(t.dtype)) for name, t in (extras or {}).items()),
        "exact_batch": exact_batch,
        "torch": torch.__version__,
        "lrpcli": __version__,
        "code": _code_hash(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- kinds, derived as the capture does


def _base_kind(target: Any) -> str | None:
    return _OWN_KINDS.get(id(target)) or ops.kind_of(target)


def _op_fits(node: Node) -> bool:
    """Is the node's op name (shown in messages, read by some rules) one the capture gives its target?"""
    target, op = node.target, node.op
    if id(target) in _OWN_KINDS:
        return ops.kind_of_name(op) == _OWN_KINDS[id(target)]
    if target is torch.ops.aten.linear.default:
        return op in ("linear", "addmm", "mm", "matmul")
    if target is torch.ops.aten.reshape.default:
        return op in ("reshape", "view")
    name = ops.op_name(target)
    return op in (name, name + "_") if isinstance(target, torch._ops.OpOverload) else op == name


def _structural_kind(node: Node, kind: str, meta: set[str], id_views: set[str]) -> str | None:
    """The capture's checks of a weighted, scale, norm or embedding node, on the form it leaves them in
    (graph._Builder._normalise_weighted, _check_scale, _normalise_norm, _check_embedding)."""
    args = node.args
    if kind == "linear":
        if node.target is torch.ops.aten.linear.default:
            x, weight, bias = (tuple(args) + (None, None))[:3]
            fits = isinstance(x, Ref) and isinstance(weight, torch.Tensor) and not isinstance(bias, Ref) and not node.kwargs
            return "linear" if fits else None
        if node.op in ("mm", "matmul") and len(args) >= 2 and isinstance(args[0], Ref) and isinstance(args[1], Ref):
            return "product"
        return None
    if kind == "conv":
        padded = tuple(args) + (None,) * max(0, 3 - len(args))
        return "conv" if isinstance(padded[0], Ref) and not isinstance(padded[1], Ref) and not isinstance(padded[2], Ref) else None
    if kind == "batchnorm":
        fits = node.target is channel_affine and len(args) == 3 and isinstance(args[0], Ref)
        return "batchnorm" if fits and all(isinstance(a, torch.Tensor) or a is None for a in args[1:]) else None
    if kind == "scale":
        refs = [a for a in args if isinstance(a, Ref) and a.name not in meta]
        if len(refs) > 1 and node.op in ("mul", "div"):
            return "product"
        if len(refs) > 1 or (len(refs) == 1 and not isinstance(args[0], Ref) and node.op == "div"):
            return None
        return "scale"
    if kind == "layernorm":
        fits = node.target is normalize and args and isinstance(args[0], Ref)
        return "layernorm" if fits and not any(isinstance(a, Ref) for a in args[1:]) else None
    if kind == "embedding":
        weight, ids = (tuple(args) + (None, None))[:2]
        if isinstance(weight, Ref) or not isinstance(ids, Ref):
            return None
        if ids.name not in id_views:
            meta.add(node.name)
            return "meta"
        return "embedding"
    return kind


def derive_kinds(graph: Graph, integral: dict[str, bool]) -> Graph:
    """``graph`` with every node's kind, held inputs and hint decided again, from its targets, arguments
    and the dtypes it computes (``integral``: node or input name -> holds integers or booleans): the
    decisions graph._Builder makes during capture, never read from a file."""
    meta: set[str] = set(graph.extra_inputs)
    id_views = {graph.input}
    derived = []
    for node in graph.nodes:
        deps = node.refs
        kind = _base_kind(node.target)
        if all(dep in meta for dep in deps):
            kind = "meta"  # arithmetic on sizes only
        elif kind != "embedding" and not (node.op in _ID_VIEWS and deps[0] in id_views) and all(
            dep in meta or integral.get(dep, False) for dep in deps
        ):
            kind = "meta"  # computed from token ids or masks only
        if kind == "meta":
            meta.add(node.name)
        elif kind is not None:
            kind = _structural_kind(node, kind, meta, id_views)
        if kind == "route" and node.op in _ID_VIEWS and deps[0] in id_views:
            id_views.add(node.name)
        held: tuple[str, ...] = ()
        if kind != "embedding" and not integral.get(node.name):
            held = tuple(dict.fromkeys(ref for ref in deps if integral.get(ref)))
        hint = (node.hint or _unsupported_hint(node.op)) if kind is None else None
        derived.append(dataclasses.replace(node, kind=kind, held=held, hint=hint, gates=(), gate_op=""))
    return graph.replace(nodes=derived)


# --------------------------------------------------------------------------- the model's own output


def _first_samples(graph: Graph, example: torch.Tensor, extras: dict | None) -> tuple[torch.Tensor, dict | None]:
    """Two samples are enough to compare a graph with its model (all of them for a fixed batch size)."""
    if not graph.dynamic_batch or example.shape[0] <= 2:
        return example, extras
    return example[:2], ({name: t[:2] for name, t in extras.items()} if extras else extras)


def _model_output(model: Any, x: torch.Tensor, extras: dict | None) -> torch.Tensor:
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        output = model(x, **(extras or {}))
    finally:
        model.train(was_training)
    if isinstance(output, (tuple, list)) and len(output) == 1:
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise Untrusted(f"the model returns a {type(output).__name__}, not one tensor")
    return output


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-7, torch.float32: 1e-4}.get(dtype, 1e-2)


def checked_against_model(graph: Graph, model: Any, example: torch.Tensor, extras: dict | None) -> Graph:
    """``graph`` with its kinds derived (:func:`derive_kinds`), once its output on the first samples equals
    ``model``'s own output; raises Untrusted otherwise."""
    x, more = _first_samples(graph, example, extras)
    with torch.no_grad():
        try:
            values = graph.run(x, more)
        except Exception as exc:  # a planted op that cannot run on this input is a miss, not a crash
            raise Untrusted(f"it does not run ({type(exc).__name__})") from exc
        try:
            expected = _model_output(model, x, more)
        except Untrusted:
            raise
        except Exception as exc:
            raise Untrusted(f"the model itself could not be run to check it ({type(exc).__name__})") from exc
    got = values.get(graph.output)
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or got.dtype != expected.dtype:
        raise Untrusted("its output is not shaped like the model's")
    tol = _tolerance(expected.dtype)
    scale = float(expected.detach().abs().nan_to_num(0, 0, 0).max()) if expected.numel() else 0.0
    if not torch.allclose(got, expected, rtol=tol, atol=tol * max(1.0, scale), equal_nan=True):
        raise Untrusted("its output differs from the model's own output")
    for node in graph.nodes:
        value = values.get(node.name)
        if node.batch_dim is not None and isinstance(value, torch.Tensor) and not 0 <= node.batch_dim < max(value.ndim, 1):
            raise Untrusted(f"node {node.name!r} names a batch dim its output does not have")
    integral = {name: not (v.is_floating_point() or v.is_complex()) for name, v in values.items() if isinstance(v, torch.Tensor)}
    return derive_kinds(graph, integral)


# --------------------------------------------------------------------------- writing


class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._seen: dict[int, str] = {}

    def value(self, obj: Any) -> Any:
        if isinstance(obj, Ref):
            return {"ref": obj.name}
        if isinstance(obj, torch.Tensor):
            key = self._seen.get(id(obj))
            if key is None:
                key = self._seen[id(obj)] = f"t{len(self.tensors)}"
                self.tensors[key] = obj.detach().contiguous()
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


def save(graph: Graph, folder: Path, key: str, model: Any, example: torch.Tensor, extras: dict | None = None) -> None:
    """Write ``graph`` as ``folder/key.json`` + ``key.safetensors`` (atomically), if it reads back as the same
    graph: its kinds derived again equal the capture's (else NotCacheable). Errors are the caller's."""
    from safetensors.torch import save_file

    meta, tensors = _encode(graph)
    try:
        again = checked_against_model(_parse(json.loads(json.dumps(meta)), tensors), model, example, extras)
    except Untrusted as exc:
        raise NotCacheable(str(exc)) from exc
    if [(n.kind, n.held) for n in again.nodes] != [(n.kind, n.held) for n in graph.nodes]:
        raise NotCacheable("its kinds cannot be derived again from the entry")
    pid = os.getpid()
    tensors_tmp, meta_tmp = folder / f".{key}.{pid}.safetensors", folder / f".{key}.{pid}.json"
    try:
        save_file(tensors, str(tensors_tmp))
        meta_tmp.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tensors_tmp, folder / f"{key}.safetensors")
        os.replace(meta_tmp, folder / f"{key}.json")  # the JSON last: an entry is complete once it exists
    finally:
        for leftover in (tensors_tmp, meta_tmp):
            leftover.unlink(missing_ok=True)


def store(graph: Graph, folder: Path, key: str, model: Any, example: torch.Tensor, extras: dict | None = None) -> None:
    """:func:`save`, never failing the run: a graph the cache cannot hold is not cached, and a cache that
    cannot be written (a full or read-only disk) is said once."""
    try:
        save(graph, folder, key, model, example, extras)
    except NotCacheable:
        pass
    except Exception as exc:  # OSError, safetensors' SafetensorError, ...: the run goes on without the cache
        _say_once(f"the graph cache in {folder} cannot be written ({type(exc).__name__}: {exc}); the run goes on without it")


# --------------------------------------------------------------------------- reading


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


def _ours(path: Path) -> bool:
    info = path.lstat()
    owned = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return stat.S_ISREG(info.st_mode) and owned and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def load(folder: Path, key: str, model: Any, example: torch.Tensor, extras: dict | None = None) -> Graph | None:
    """The cached graph of ``key``, checked against ``model`` on ``example``, or None: missing, damaged,
    foreign, or not reproducing the model (said once; the caller captures again)."""
    from safetensors.torch import load_file

    meta_path, tensors_path = folder / f"{key}.json", folder / f"{key}.safetensors"
    if not os.path.lexists(meta_path):
        return None
    try:
        if not (_ours(meta_path) and _ours(tensors_path)):
            raise Untrusted("its files are not private files of this user")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tensors = load_file(str(tensors_path))
            graph = _parse(meta, tensors)
        except Untrusted:
            raise
        except Exception as exc:  # truncated, not JSON, missing keys, wrong types
            raise Untrusted(f"it is damaged ({type(exc).__name__})") from exc
        return checked_against_model(graph, model, example, extras)
    except (Untrusted, OSError) as exc:
        _say_once(f"the cached graph {meta_path} is not used: {exc}; the model is captured again")
        return None


class DiskCache:
    """The engine's graph store (``Explainer.graph_store``) for one model: ``model_id`` is what identifies
    it on disk (the weights' hash and the architecture that builds them)."""

    def __init__(self, model_id: str):
        self.model_id = model_id

    def load(self, model: Any, example: torch.Tensor, extras: dict | None, exact_batch: bool) -> Graph | None:
        folder = None if isinstance(model, torch.export.ExportedProgram) else private_dir()
        if folder is None:  # (an exported program is read as it is: no capture to skip)
            return None
        return load(folder, entry_key(self.model_id, example, extras, exact_batch), model, example, extras)

    def store(self, graph: Graph, model: Any, example: torch.Tensor, extras: dict | None, exact_batch: bool) -> None:
        folder = None if isinstance(model, torch.export.ExportedProgram) else private_dir()
        if folder is not None:
            store(graph, folder, entry_key(self.model_id, example, extras, exact_batch), model, example, extras)
