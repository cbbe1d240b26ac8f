"""Bounds on what a config may ask for, so a small hostile file is refused at once (exit 3).

A model spec or composite is data someone handed over. Without bounds a 700-byte YAML alias bomb
expands to gigabytes, ``classes: /dev/zero`` reads forever and ``size: 100000`` asks for a 10^10-pixel
image. Everything here raises :class:`ConfigError` naming the file and the limit.

Model archives and input lists are bounded here too: a 3 MB TorchScript whose weight entry inflates to
2 GiB is refused before torch reads it (:func:`check_archive`, a :class:`ModelError`), and a list of
input paths (``--inputs-from``) is read line by line within :data:`MAX_LIST_LINE_BYTES` per line and
:data:`MAX_LISTED_INPUTS` lines (an :class:`InputError` naming the line).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, ModelError

MAX_CONFIG_BYTES = 1 << 20  # a composite or model spec (an inline ImageNet class list is ~30 kB)
MAX_CLASSES_BYTES = 8 << 20  # a class-names file (21k ImageNet names are ~0.5 MB)
MAX_YAML_ALIASES = 100  # `*name` references in one document
MAX_YAML_NODES = 100_000  # scalars, lists and mappings, counted with every alias expanded

# A model archive (TorchScript, .pt2 and torch.save files are zips) may declare unpacked at most
# MAX_ARCHIVE_RATIO times its size on disk, or ARCHIVE_ALLOWANCE bytes, whichever is more. torch writes
# weights uncompressed (ratio ~1) and deflates only the code (~3x), so anything far past this is a zip bomb.
MAX_ARCHIVE_RATIO = 10
ARCHIVE_ALLOWANCE = 64 << 20
#: environment variable that replaces the bound with a size in bytes (``4G``, ``500M``) for a trusted archive
ARCHIVE_LIMIT_ENV = "LRP_MAX_UNPACKED"

# --inputs-from: one path per line, a line at most PATH_MAX (4096 bytes on Linux); at most this many
# lines and bytes in all (ImageNet's training set is 1.3 million paths, ~100 MB)
MAX_LIST_LINE_BYTES = 4096
MAX_LISTED_INPUTS = 5_000_000
MAX_LIST_BYTES = 512 << 20


def read_text(path: str | Path, what: str, limit: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes.

    Devices, FIFOs and folders are refused before they are opened for reading (``/dev/zero``
    never ends); the size is checked on what is read too, for files that grow meanwhile."""
    path = Path(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} is not a regular file", source=str(path), hint="give the path of a text file")
        if info.st_size > limit:
            raise ConfigError(f"{what} is {info.st_size:,} bytes, more than the limit of {limit:,}", source=str(path))
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", source=str(path)) from exc
    except ValueError as exc:  # a NUL character in the name: os.stat refuses it before the OS sees it
        raise ConfigError(f"cannot read {what}: {exc}", source=repr(str(path)), hint="give the path of a file") from exc
    if len(data) > limit:
        raise ConfigError(f"{what} is more than the limit of {limit:,} bytes", source=str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{what} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})", source=str(path), line=line, hint="save it as UTF-8") from exc


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses documents with too many aliases or too many nodes once aliases are
    expanded, after composing the node graph and before any Python object is built."""

    source: str | None = None
    aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark
                raise ConfigError(f"more than {MAX_YAML_ALIASES} YAML aliases (*name)", source=self.source, line=mark.line + 1, hint="write the values out")
        return super().compose_node(parent, index)

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set(), self.source)
        return self.construct_document(node)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int], source: str | None) -> int:
    """Nodes under ``node`` with every alias expanded (each shared node counted once per use, computed once)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise ConfigError("a YAML alias refers to the collection that contains it", source=source, line=node.start_mark.line + 1)
    open_.add(key)
    children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
    size = 1
    for child in children:
        size += _expanded_size(child, sizes, open_, source)
        if size > MAX_YAML_NODES:
            raise ConfigError(
                f"the YAML document expands to more than {MAX_YAML_NODES:,} values (aliases expanded)",
                source=source,
                line=node.start_mark.line + 1,
                hint="a config this large is almost certainly an alias bomb; write the values out",
            )
    open_.discard(key)
    sizes[key] = size
    return size


# YAML 1.1 (PyYAML) reads 1e-6 as a string: it wants a dot (1.0e-6). Configs and -p values mean the number.
BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_yaml(text: str, source: str | None, loader: type[BoundedLoader] = BoundedLoader) -> Any:
    """Parse one YAML document within the bounds; ConfigError (with the line) for bad YAML."""
    reader = loader(text)
    reader.source = source
    try:
        return reader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", source=source, line=mark.line + 1 if mark else None) from exc
    except RecursionError as exc:
        raise ConfigError("the YAML document is nested too deeply", source=source) from exc
    finally:
        reader.dispose()


def check_pixels(size: tuple[int, int], what: str, error: type = ConfigError, **where: Any) -> None:
    """Refuse an image size with more pixels than Pillow opens without calling it a decompression bomb
    (``PIL.Image.MAX_IMAGE_PIXELS``, read when called so a program may raise it)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit:
        raise error(
            f"{what} {size[0]}x{size[1]} is {size[0] * size[1]:,} pixels, more than the limit of {limit:,}",
            hint="models take images of at most a few thousand pixels a side",
            **where,
        )


def parse_bytes(text: str) -> int:
    """``4096``, ``500M``, ``4G``, ``1.5GiB`` as a number of bytes (ValueError for anything else)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(text)
    scale = 1 << (10 * "kmgt".index(match[2].lower()) + 10) if match[2] else 1
    return int(float(match[1]) * scale)


def archive_limit(file_size: int) -> tuple[int, str]:
    """The most bytes a model archive of ``file_size`` bytes may declare unpacked, and how that bound was set."""
    override = os.environ.get(ARCHIVE_LIMIT_ENV, "").strip()
    if override:
        try:
            return parse_bytes(override), f"{ARCHIVE_LIMIT_ENV}={override}"
        except ValueError:
            raise ConfigError(
                f"{ARCHIVE_LIMIT_ENV}={override!r} is not a size", hint=f"give bytes, or a size such as {ARCHIVE_LIMIT_ENV}=4G"
            ) from None
    return max(file_size * MAX_ARCHIVE_RATIO, ARCHIVE_ALLOWANCE), (
        f"{MAX_ARCHIVE_RATIO} times the file's size or {ARCHIVE_ALLOWANCE >> 20} MiB, whichever is more"
    )


def check_archive(path: str | Path, entries: list[Any], file_size: int | None = None) -> None:
    """Refuse a zip archive (``zipfile.ZipInfo`` entries) whose entries declare more bytes unpacked than
    :func:`archive_limit` allows for its size on disk: a :class:`ModelError` naming the file, the
    declared and the actual size, the bound and how to raise it. The declared sizes are what torch's
    reader allocates and what it stops at, so checking them bounds the memory a load takes."""
    if file_size is None:
        file_size = os.stat(path).st_size
    declared = sum(max(int(entry.file_size), 0) for entry in entries)
    limit, how = archive_limit(file_size)
    if declared <= limit:
        return
    largest = max(entries, key=lambda entry: entry.file_size)
    raise ModelError(
        f"{path}: the archive's entries unpack to {declared:,} bytes from {file_size:,} bytes on disk "
        f"({declared / max(file_size, 1):,.0f} times), more than the limit of {limit:,} bytes ({how}); "
        f"the largest entry, {largest.filename}, is {largest.file_size:,} bytes packed into {largest.compress_size:,}",
        hint=f"model weights barely compress, so this looks like a zip bomb; if you trust the file, "
        f"raise the limit with {ARCHIVE_LIMIT_ENV}=SIZE (e.g. {ARCHIVE_LIMIT_ENV}={_round_up(declared)})",
    )


def _round_up(size: int) -> str:
    """A size at least ``size`` bytes, for a hint: 2G, 300M, 1K."""
    for shift, unit in ((30, "G"), (20, "M"), (10, "K")):
        if size >= 1 << shift:
            return f"{-(-size // (1 << shift))}{unit}"
    return str(size)
