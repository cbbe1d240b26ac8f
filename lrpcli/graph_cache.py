"""A disk cache of captured graphs, so that a second run on the same model skips the capture.

Capturing a model (torch.export, or converting a TorchScript file) takes seconds and loads
torch's compiler stack; the graph it yields depends only on the weights file (and the
architecture that builds it), the input's shape and dtype, and the versions of torch and of
lrpcli's graph code. Those make the key. An entry is data only: a JSON description of the
nodes and a safetensors file of their constants; op targets are written as names and resolved
on load to torch ops, ``operator`` functions or functions of lrpcli's own modules, nothing
else, so a planted cache file cannot make lrp run code. A damaged or foreign entry is a miss.

Where: ``$LRP_CACHE_DIR``, else ``~/.cache/lrpcli``; ``LRP_CACHE_DIR=off`` (or ``--no-cache``)
turns it off.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import operator
import os
from pathlib import Path
from typing import Any

import torch

from .graph import Graph, Node, Ref

FORMAT = 1
#: lrpcli's modules whose code decides what a captured graph looks like (part of the key)
_GRAPH_CODE = ("graph.py", "ops.py", "norms.py", "safety.py")


class NotCacheable(Exception):
    """The graph holds a value the cache does not write (it is then simply not cached)."""


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is off."""
    value = os.environ.get("LRP_CACHE_DIR")
    if value is not None and value.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "lrpcli"


def _code_hash() -> str:
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _GRAPH_CODE:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def entry_key(model_id: str, example: torch.Tensor, extras: dict[str, torch.Tensor] | None, exact_batch: bool) -> str:
    """The key of one captured graph: the model, the input's shape and dtype, the extra inputs, the versions."""
    from . import __version__

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
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
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
    if isinstance(target, torch._ops.OpOverload):
        return {"op": f"{target.namespace}::{target._opname}.{target._overloadname}"}
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__qualname__", "") or getattr(target, "__name__", "")
    if module in ("_operator", "operator") and hasattr(operator, name):
        return {"fn": f"operator.{name}"}
    if module == "torch" and name.startswith("sym_"):
        return {"fn": f"torch.{name}"}
    if module.startswith("lrpcli.") and "." not in name and "<" not in name:
        return {"fn": f"{module}.{name}"}
    raise NotCacheable(f"the op target {module}.{name}")


def save(graph: Graph, folder: Path, key: str) -> None:
    """Write ``graph`` as ``folder/key.json`` + ``key.safetensors`` (atomically; errors are the caller's to ignore)."""
    from safetensors.torch import save_file

    encoder = _Encoder()
    nodes = []
    for node in graph.nodes:
        nodes.append(
            {
                "name": node.name,
                "target": _target_name(node.target),
                "kind": node.kind,
                "args": encoder.value(node.args),
                "kwargs": encoder.value(node.kwargs),
                "module": node.module,
                "module_type": node.module_type,
                "op": node.op,
                "hint": node.hint,
                "held": list(node.held),
                "gates": list(node.gates),
                "gate_op": node.gate_op,
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
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    tensors_tmp, meta_tmp = folder / f".{key}.{pid}.safetensors", folder / f".{key}.{pid}.json"
    save_file(encoder.tensors, str(tensors_tmp))
    meta_tmp.write_text(json.dumps(meta), encoding="utf-8")
    os.replace(tensors_tmp, folder / f"{key}.safetensors")
    os.replace(meta_tmp, folder / f"{key}.json")  # the JSON last: an entry is complete once it exists


# --------------------------------------------------------------------------- reading


def _resolve_target(entry: dict[str, str]) -> Any:
    if "op" in entry:
        namespace, _, rest = entry["op"].partition("::")
        name, _, overload = rest.rpartition(".")
        target = getattr(getattr(getattr(torch.ops, namespace), name), overload)
        if not isinstance(target, torch._ops.OpOverload):
            raise ValueError(entry)
        return target
    module_name, _, name = entry["fn"].rpartition(".")
    if module_name == "operator":
        return getattr(operator, name)
    if module_name == "torch" and name.startswith("sym_"):
        return getattr(torch, name)
    if module_name.startswith("lrpcli.") and not name.startswith("__"):
        module = importlib.import_module(module_name)
        target = getattr(module, name)
        if getattr(target, "__module__", None) != module_name or not callable(target):
            raise ValueError(entry)
        return target
    raise ValueError(f"a cached op target outside torch.ops, operator and lrpcli: {entry}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(item, tensors) for item in obj]
    if not isinstance(obj, dict):
        return obj
    (tag, value), = obj.items()
    if tag == "ref":
        return Ref(value)
    if tag == "tensor":
        return tensors[value]
    if tag == "float":
        return float(value)
    if tag == "size":
        return torch.Size(value)
    if tag == "tuple":
        return tuple(_decode(item, tensors) for item in value)
    if tag == "dict":
        return {k: _decode(v, tensors) for k, v in value.items()}
    if tag == "dtype":
        found = getattr(torch, value)
        if not isinstance(found, torch.dtype):
            raise ValueError(value)
        return found
    if tag == "device":
        return torch.device(value)
    if tag == "torch":
        found = getattr(torch, value)
        if not isinstance(found, (torch.layout, torch.memory_format)):
            raise ValueError(value)
        return found
    if tag == "slice":
        return slice(*(_decode(item, tensors) for item in value))
    if tag == "ellipsis":
        return Ellipsis
    raise ValueError(f"unknown tag {tag!r}")


def load(folder: Path, key: str) -> Graph | None:
    """The cached graph of ``key``, or None (missing, damaged, or from another format)."""
    from safetensors.torch import load_file

    meta_path, tensors_path = folder / f"{key}.json", folder / f"{key}.safetensors"
    if not meta_path.is_file() or not tensors_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            return None
        tensors = load_file(str(tensors_path))
        nodes = [
            Node(
                name=entry["name"],
                target=_resolve_target(entry["target"]),
                kind=entry["kind"],
                args=_decode(entry["args"], tensors),
                kwargs=_decode(entry["kwargs"], tensors),
                module=entry["module"],
                module_type=entry["module_type"],
                op=entry["op"],
                hint=entry["hint"],
                held=tuple(entry["held"]),
                gates=tuple(entry["gates"]),
                gate_op=entry["gate_op"],
                batch_dim=entry["batch_dim"],
            )
            for entry in meta["nodes"]
        ]
        return Graph(
            input=meta["input"],
            nodes=nodes,
            output=meta["output"],
            source=meta["source"],
            input_shape=tuple(meta["input_shape"]),
            dynamic_batch=bool(meta["dynamic_batch"]),
            notes=list(meta["notes"]),
            extra_inputs=tuple(meta["extra_inputs"]),
        )
    except Exception:  # a damaged, truncated or foreign entry: capture again
        return None
