"""A disk cache of captured graphs, so that a second run on the same model skips the capture.

Capturing a model (torch.export, or converting a TorchScript file) takes seconds and loads torch's
compiler stack; the graph it yields depends only on the weights file (and the architecture that
builds it), the input's shape and dtype, and the versions of torch and of lrpcli's graph code. Those
make the key.

A cache entry is never trusted as code or as a result (issue 24):

- It is data only: a JSON description of the nodes and a safetensors file of their constants. Node
  targets come from a closed vocabulary: ATen/prims op overloads looked up in ``torch.ops`` by name,
  and the few Python functions of ``cache_entry.PYTHON_TARGETS`` by their registered name. Nothing
  is imported, nothing is looked up in ``operator`` or any other module (cache_entry.py).
- Kinds are never read: they are derived again from the targets, the arguments and the dtypes the
  graph computes (engine/kinds.py, the same decisions the capture makes). A graph whose derived
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

import hashlib
import json
import os
import stat
import warnings
from pathlib import Path
from typing import Any

import torch

from ..engine.graph import Graph
from ..engine.kinds import derive_kinds
from ..errors import LrpWarning
from .cache_entry import FORMAT, NotCacheable, Untrusted, _encode, _parse

#: lrpcli's modules whose code decides what a captured graph looks like (part of the key)
_GRAPH_CODE = ("engine/graph.py", "engine/builder.py", "engine/capture.py", "engine/patterns.py", "engine/guards.py", "engine/experts.py", "engine/state_space.py", "engine/fourier.py", "engine/held_kernels.py", "engine/held_gates.py", "engine/softmaxes.py", "engine/casts.py", "engine/ids.py", "engine/kinds.py", "engine/ops.py", "engine/passes/norms.py", "sources/safety.py", "sources/cache.py", "sources/cache_entry.py")


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
