"""Loading models from files: TorchScript, ExportedProgram (.pt2).

State dicts with an architecture, safetensors and model spec files come with the
image issue; this module is where they belong.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError


def load_model(model: Any) -> Any:
    """Return something ``graph.capture`` takes: an nn.Module, ScriptModule or ExportedProgram.

    ``model`` may already be one of those, or a path to a ``.pt2`` ExportedProgram or a
    TorchScript file (``torch.jit.save``).
    """
    if isinstance(model, (torch.nn.Module, torch.export.ExportedProgram)):
        return model
    if not isinstance(model, (str, Path)):
        raise ModelError(
            f"cannot use an object of type {type(model).__name__} as a model",
            hint="pass an nn.Module, a ScriptModule, an ExportedProgram or a path to a saved model",
        )
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if path.suffix == ".pt2":
        return _load_exported(path)
    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelError(f"{path}: not a loadable TorchScript file: {exc}") from exc
    if zipfile.is_zipfile(path) and _zip_has(path, "archive_format"):
        return _load_exported(path)
    raise ModelError(
        f"{path}: not a TorchScript file or an exported program (.pt2)",
        hint="save with torch.jit.save(torch.jit.script(model), path) or torch.export.save(ep, 'model.pt2'); "
        "state dicts need the model's architecture (--arch)",
    )


def _zip_has(path: Path, name: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(entry.endswith(name) for entry in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold a ``code/`` folder and ``constants.pkl``; state dicts do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any("/code/" in name for name in names) and any(name.endswith("constants.pkl") for name in names)


def _load_exported(path: Path) -> torch.export.ExportedProgram:
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        raise ModelError(f"{path}: not a loadable exported program: {exc}") from exc
