"""What a handed-over file may run: the consent rules of design.md section 9.

Two ways a model file or spec could run code without the user asking for it:

* a ``.pt2`` archive whose config asks ``torch.export.load`` to unpickle a payload
  (``use_pickle`` weights or constants, opaque or custom objects, legacy ``.pt`` weight
  files, a sample-inputs pickle that fails the safe loader, compiled AOTInductor code);
* a model spec whose ``arch`` names any callable at all (``os:system``).

:func:`load_exported` refuses the first unless ``allow_pickle``; :func:`spec_arch`
refuses the second unless ``allow_code``. Both say what the file asked for and which
flag gives consent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import ModelError

# Where a spec's ``arch`` may point without --allow-code: namespaces of model classes and model
# builders whose arguments cannot make them read a file. timm's create_model can (checkpoint_path), so a
# spec names a timm model only as ``timm:NAME``, which lrp builds with pretrained=False and no checkpoint
# (sources/zoo.py: TimmBuilder).
TRUSTED_ARCH_MODULES = ("lrpcli.architectures", "lrpcli.sources.architectures", "torchvision.models")
TIMM = "timm"
PICKLE_HINT = "if you trust the file's source, pass --allow-pickle (unpickling runs code from the file)"


class _Refused(Exception):
    """Raised inside torch.export.load when it reaches for an unsafe loader (not a RuntimeError,
    which torch.export.load would swallow)."""


# --------------------------------------------------------------------------- .pt2 archives


def pickled_payloads(path: Path) -> list[str]:
    """What in a ``.pt2`` archive ``torch.export.load`` would unpickle or execute (empty: nothing)."""
    found: list[str] = []
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            for name in names:
                inner = name.split("/", 1)[1] if "/" in name else name
                if inner.startswith(("data/aotinductor/", "data/executorch/")):
                    found.append(f"compiled code ({inner})")
                elif inner in ("data/weights/model.pt", "data/constants/model.pt") or (
                    inner.startswith(("data/weights/", "data/constants/")) and inner.endswith(".pt")
                ):
                    found.append(f"a legacy pickled payload ({inner})")
                elif inner.endswith(("_weights_config.json", "_constants_config.json")):
                    found.extend(_pickled_in_config(archive, name, inner))
                elif inner in ("serialized_state_dict.pt", "serialized_constants.pt"):
                    found.append(f"a pickled payload of the pre-2.8 format ({inner})")
    except (zipfile.BadZipFile, OSError, ValueError):
        return []  # not an archive: the loader reports that
    return found


def _pickled_in_config(archive: zipfile.ZipFile, name: str, inner: str) -> list[str]:
    try:
        config = json.loads(archive.read(name)).get("config", {})
    except (ValueError, AttributeError, KeyError):
        return [f"an unreadable payload config ({inner})"]
    found = []
    for fqn, meta in (config.items() if isinstance(config, dict) else []):
        if not isinstance(meta, dict):
            continue
        path_name = str(meta.get("path_name", ""))
        if meta.get("use_pickle"):
            found.append(f"a pickled payload '{fqn}' ({inner})")
        elif path_name.startswith(("custom_obj_", "opaque_obj_")):
            found.append(f"a pickled object '{fqn}' ({inner})")
    return found


def load_exported(path: Path, allow_pickle: bool = False) -> torch.export.ExportedProgram:
    """``torch.export.load`` that runs no code from the file unless ``allow_pickle``.

    The archive is read first and refused if its config asks for pickled payloads; the load
    itself then runs with the unsafe loaders replaced (a second guard for what the scan
    cannot see, such as a sample-inputs pickle that fails the safe loader and would be
    retried unsafely). torch's own warnings and tracebacks are collected into the error.
    """
    if not allow_pickle:
        asked = pickled_payloads(path)
        if asked:
            more = f" (and {len(asked) - 1} more)" if len(asked) > 1 else ""
            raise ModelError(f"{path}: the exported program asks to unpickle {asked[0]}{more}; that runs code from the file", hint=PICKLE_HINT)
    guard = contextlib.nullcontext() if allow_pickle else _no_unpickling()
    with _collect_torch_logs() as logged:
        try:
            with guard:
                return torch.export.load(str(path))
        except _Refused as exc:
            raise ModelError(f"{path}: loading the exported program would unpickle {exc}; that runs code from the file", hint=PICKLE_HINT) from None
        except Exception as exc:
            cause = logged[0] if logged else _first_line(exc)
            raise ModelError(f"{path}: not a loadable exported program: {cause}", hint="re-save it with torch.export.save on this torch version") from exc


@contextlib.contextmanager
def _no_unpickling() -> Iterator[None]:
    """Swap torch.load for a weights-only one and refuse the raw unpicklers, for one load.

    Not thread-safe (it patches module attributes): models are loaded before any worker starts.
    """
    real_load = torch.load

    def weights_only_load(f: Any, *args: Any, weights_only: Any = None, **kwargs: Any) -> Any:
        if weights_only is False:
            raise _Refused("a payload with the full pickle loader")
        return real_load(f, *args, weights_only=True, **kwargs)

    def refuse(*_: Any, **__: Any) -> Any:
        raise _Refused("a Python object")

    patches: list[tuple[Any, str, Any]] = [(torch, "load", weights_only_load), (torch._C, "_pickle_load_obj", refuse)]
    with contextlib.suppress(ImportError):
        import torch.export.pt2_archive._package as package

        patches.append((package, "pickle", _RefusingPickle(refuse)))
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches if hasattr(owner, name)]
    try:
        for owner, name, replacement in patches:
            if hasattr(owner, name):
                setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


class _RefusingPickle:
    """Stands in for the ``pickle`` module inside torch's archive loader."""

    def __init__(self, refuse: Any):
        self.loads = self.load = refuse


@contextlib.contextmanager
def _collect_torch_logs() -> Iterator[list[str]]:
    """Keep torch.export's warnings (with their tracebacks) off stderr; hand back their first lines."""
    logger = logging.getLogger("torch.export")
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and record.exc_info[1] is not None:
                messages.append(_first_line(record.exc_info[1]))

    handler = Collect(level=logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _first_line(exc: BaseException, limit: int = 300) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------- model specs


def spec_arch(arch: Any, spec_path: Path | None, allow_code: bool = False) -> str:
    """The ``arch`` of a model spec, checked against what a spec may construct.

    A spec is data that teams hand over, so without ``allow_code`` its ``arch`` may only name
    a model class or factory of :data:`TRUSTED_ARCH_MODULES`; a Python file (resolved against
    the spec's folder) or any other module needs consent, because importing it runs its code.
    """
    source = f"{spec_path}: " if spec_path else ""
    text = str(arch)
    where, _, name = text.rpartition(":")
    is_file = where.endswith(".py") or "/" in where or "\\" in where
    if is_file and spec_path is not None and not Path(where).is_absolute():
        where = str(spec_path.parent / where)
        text = f"{where}:{name}"
    if allow_code:
        return text
    if is_file:
        raise ModelError(
            f"{source}the spec's arch '{arch}' is a Python file; importing it runs its code",
            hint="if you trust the spec and its folder, pass --allow-code (or name the file yourself with --arch)",
        )
    private = any(part.startswith("_") for part in (*where.split("."), *name.split(".")))
    if where == TIMM and name and not private:
        return text  # a timm model name (checked against timm's registry when it is built)
    if not where or private or not any(where == m or where.startswith(m + ".") for m in TRUSTED_ARCH_MODULES):
        raise ModelError(
            f"{source}the spec's arch '{arch}' is outside the model libraries a spec may name "
            f"({', '.join(TRUSTED_ARCH_MODULES)}, timm:NAME); importing and calling it could run any code",
            hint="if you trust the spec, pass --allow-code (or name the architecture yourself with --arch)",
        )
    return text


def check_trusted_callable(arch: str, factory: Any) -> None:
    """For a spec's arch without consent: the callable must be a model class or a function
    defined in the trusted namespace itself (not something it imports, like torch.hub's)."""
    from .zoo import TimmBuilder

    if isinstance(factory, TimmBuilder):
        return
    module = getattr(factory, "__module__", "") or ""
    defined_here = any(module == m or module.startswith(m + ".") for m in TRUSTED_ARCH_MODULES)
    is_class = isinstance(factory, type)
    if not defined_here or (is_class and not issubclass(factory, torch.nn.Module)):
        raise ModelError(
            f"the spec's arch '{arch}' is not a model class or model builder of {', '.join(TRUSTED_ARCH_MODULES)}",
            hint="if you trust the spec, pass --allow-code (or name the architecture yourself with --arch)",
        )
