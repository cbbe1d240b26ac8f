"""The output folder: layout, atomic writes, summary.csv and run.json.

Layout (design.md section 5)::

    OUT/heatmaps/<input path>.png
    OUT/relevance/<input path>.npy
    OUT/summary.csv     one row per input and target
    OUT/run.json        model, resolved composite, versions, arguments

Every file is written to a temporary name in the same folder and renamed, so an
interrupted run leaves no half-written file; paths never escape OUT.

A file the user names (``-o FILE``, ``--report``, ``--html``, ``--json FILE``, ``--junit``) goes through
:func:`destination` / :func:`open_output`: never renamed over what is not ours. A symbolic link keeps
being a link (the file it leads to is replaced), a character device, a FIFO or a link to one of our
own descriptors (``/dev/stdout``) is written into, a block device, socket or folder is refused, and
:func:`refuse_inputs_as_outputs` refuses an output that is one of the run's inputs.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import functools
import io
import json
import os
import re
import stat
import threading
from collections import Counter
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

import numpy as np

from .errors import InputError, OutputError, UsageError

SUMMARY_COLUMNS = (
    "input",
    "prediction",
    "prediction_label",
    "probability",
    "target",
    "target_label",
    "logit",
    "relevance_sum",
    "conservation_gap",
    "heatmap",
    "relevance",
)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename.

    The temporary name is this process's and thread's own, and the folder is made only when missing (no
    ``mkstemp`` and ``mkdir`` per file: 0.24 -> 0.18 ms per 12 kB file, measured); a killed run's leftovers
    are removed by the next run (runner)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        handle = open(temporary, "wb", opener=_no_follow)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(temporary, "wb", opener=_no_follow)
    try:
        with handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _no_follow(path: str, flags: int) -> int:
    """open() that will not write through a symbolic link planted at a temporary file's name."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)


# what a write into OUT (or -o FILE) fails with when the place, not lrp, is the problem
WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG", "ENOTDIR", "EISDIR", "ELOOP") if hasattr(errno, name)
)


@contextlib.contextmanager
def output_errors(out: Path | str) -> Iterator[None]:
    """Turn an OSError of writing outputs (a full or read-only disk, no permission) into an OutputError
    naming the path (exit 2), instead of an internal error."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        where = exc.filename if exc.filename is not None else out
        raise OutputError(
            f"cannot write {os.fsdecode(where)}: {exc.strerror}",
            hint="make room on that disk, or write to another place with -o" if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG)
            else "write to a folder you may write to, with -o",
        ) from exc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its file alone
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """``.NAME.PID.tmp`` files that a killed run writing ``path`` left behind (its pid is gone)."""
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob_escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for candidate in candidates:
        pid = candidate.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def atomic_text(path: Path) -> Iterator[IO[str]]:
    """A text file the user named (``-o FILE``, ``--html``, ``--csv``), written as :func:`open_output` says:
    in place of ``path`` only when the block ends without an error, or into a FIFO or device as it comes."""
    if Path(path).is_dir():
        raise OutputError(f"-o {path} is a folder: CSV results go to one file", hint=f"give a file name, e.g. -o {Path(path) / 'relevance.csv'}")
    with open_output(path, text=True) as handle:
        yield handle


# --------------------------------------------------------------------------- files the user names

# /dev/stdout -> /proc/self/fd/1 (Linux), /dev/fd/N: a descriptor of this process
_OWN_DESCRIPTOR = re.compile(r"/(?:dev/fd|proc/self/fd|proc/(\d+)/fd)/(\d+)")


@dataclasses.dataclass(frozen=True)
class Destination:
    """How a file the user named is written (:func:`destination`).

    ``path`` is the name given; ``file`` the file written: the name itself, or the regular file a
    symbolic link leads to (the link stays). ``stream``: written straight into, no temporary file and
    no rename (a character device, a FIFO, or ``descriptor``, one of this process's own)."""

    path: Path
    file: Path
    stream: bool = False
    descriptor: int | None = None


def destination(path: Path | str) -> Destination:
    """Decide how to write ``path``, a file the user named, without replacing what is not ours.

    - missing or a regular file: a temporary file beside it, renamed over it (atomic);
    - a symbolic link: the same at the file it leads to (made if missing), so the link stays a link;
    - a link to one of this process's descriptors (``/dev/stdout``, ``/dev/fd/N``): written to that
      descriptor, so the results go where stdout goes (a pipe, a terminal, a file appended to);
    - a character device (``/dev/null``, a terminal) or a FIFO: opened and written into;
    - a folder, a block device, a socket: refused (OutputError, exit 2)."""
    path = Path(path)
    descriptor = _own_descriptor(path)
    if descriptor is not None:
        return Destination(path, path, stream=True, descriptor=descriptor)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return Destination(path, _followed(path))  # a new file (a dangling link: the file it names)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"cannot write {path}: a loop of symbolic links", hint="remove the link, or write to another file") from exc
        return Destination(path, path)  # (no permission, a file where a folder should be): named when written
    if stat.S_ISREG(mode):
        return Destination(path, _followed(path))
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return Destination(path, path, stream=True)
    if stat.S_ISDIR(mode):
        raise OutputError(f"{path} is a folder, not a file", hint=f"give a file name, e.g. {path / 'result'}...")
    kind = "a block device (a disk)" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
    raise OutputError(
        f"{path} is {kind}: lrp writes results only to a file, a FIFO or a character device (it will neither write onto nor replace this)",
        hint="give a file name",
    )


def _own_descriptor(path: Path) -> int | None:
    """N when ``path`` is, or its links lead to, /dev/fd/N or /proc/self/fd/N of this process."""
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on links followed
        found = _OWN_DESCRIPTOR.fullmatch(current)
        if found and (found.group(1) is None or int(found.group(1)) == os.getpid()):
            return int(found.group(2))
        try:
            target = os.readlink(current)
        except OSError:
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), target))
    return None


def _followed(path: Path) -> Path:
    """The file a symbolic link leads to (``path`` itself when it is no link). A link that someone else
    planted in a shared sticky folder (``/tmp``) is refused, as the kernel's protected_symlinks does for
    ``open``: following it would let them choose which of our files is replaced."""
    try:
        link = os.lstat(path)
    except OSError:
        return path
    if not stat.S_ISLNK(link.st_mode):
        return path
    folder = os.stat(os.path.dirname(os.path.abspath(path)))
    shared = folder.st_mode & stat.S_ISVTX and folder.st_mode & stat.S_IWOTH
    if shared and hasattr(os, "geteuid") and link.st_uid not in (os.geteuid(), folder.st_uid):
        raise OutputError(
            f"{path} is a symbolic link another user made in a shared folder (to {os.readlink(path)})",
            hint="write to a file of your own, or remove the link",
        )
    return Path(os.path.realpath(path))


@contextlib.contextmanager
def open_output(path: Path | str, *, text: bool = False) -> Iterator[IO[Any]]:
    """A file the user named, opened as :func:`destination` decides: a regular file (or the one a link
    leads to) is written to ``.NAME.PID.tmp`` beside it and renamed over it only when the block ends
    without an error; a FIFO, a character device or our own descriptor is written into as it comes.

    The temporary file of a killed run is removed by the next run (its pid is gone), so they cannot pile
    up; it is made with the usual mode (0666 less the umask)."""
    path = Path(path)
    target = destination(path)
    options: dict[str, Any] = {"encoding": "utf-8", "newline": ""} if text else {}
    mode = "w" if text else "wb"
    if target.stream:
        with _stream_errors(path):
            if target.descriptor is not None:
                handle = os.dup(target.descriptor)
            else:
                handle = os.open(target.file, os.O_WRONLY | getattr(os, "O_NOCTTY", 0))  # a FIFO waits for its reader here
        with _stream_errors(path):
            with os.fdopen(handle, mode, **options) as file:
                yield file
        return
    real = target.file
    with output_errors(path):
        real.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(real)
        temporary = real.with_name(f".{real.name}.{os.getpid()}.tmp")
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with output_errors(path):
            with os.fdopen(handle, mode, **options) as file:
                yield file
            os.replace(temporary, real)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _stream_errors(path: Path) -> Iterator[None]:
    """output_errors, and a descriptor that is closed or read-only (``-o /dev/stdout`` with ``>&-``)."""
    with output_errors(path):
        try:
            yield
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            raise OutputError(f"cannot write {path}: the descriptor it names is closed or open for reading only", hint="give a file name") from exc


def write_output(path: Path | str, data: bytes) -> None:
    """Write ``data`` to a file the user named (``--json FILE``, ``--junit``, a report page), as
    :func:`open_output` decides."""
    with open_output(path) as handle:
        handle.write(data)


def is_stream(path: Path | str) -> bool:
    """Whether ``path`` is written into as results come (a FIFO, a device, stdout's link) rather than
    replaced: such a target cannot be read back, and gets no page beside it. A path that cannot be
    written at all is no stream: the writer names the problem when it opens it."""
    try:
        return destination(path).stream
    except OutputError:
        return False


def is_regular_file(path: Path | str) -> bool:
    """A regular file (after links): safe to open for reading without waiting on a FIFO's writer."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def refuse_inputs_as_outputs(outputs: Iterable[tuple[str, Any]], inputs: Iterable[tuple[str, Any]]) -> None:
    """Refuse (UsageError, exit 2) an output that is one of the run's inputs, before anything is written.

    ``outputs`` and ``inputs`` are (what, path) pairs: the option (``-o``, ``--report``) and its value,
    the input's role (``input``, ``MODEL``, ``the model's weights``) and its path (or a list of paths).
    Two names are the same file when they lead to the same regular file (os.path.samefile: through links,
    hard links and other spellings of the path); ``-``, missing files, folders, devices and FIFOs are
    left alone (nothing of theirs is replaced)."""
    known: list[tuple[str, str, tuple[int, int]]] = []
    for what, value in inputs:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            identity = _file_identity(item)
            if identity is not None:
                known.append((what, os.fsdecode(item), identity))
    if not known:
        return
    for option, value in outputs:
        identity = _file_identity(value)
        for what, item, other in known:
            if identity is not None and identity == other:
                raise UsageError(
                    f"{option} {os.fsdecode(value)} is the {what} {item}: writing it would replace that input",
                    hint=f"give {option} another file name",
                )


def _file_identity(path: Any) -> tuple[int, int] | None:
    if path is None or isinstance(path, bool) or str(path) in ("", "-"):
        return None
    try:
        found = os.stat(path)
    except (OSError, ValueError, TypeError):
        return None
    return (found.st_dev, found.st_ino) if stat.S_ISREG(found.st_mode) else None


def save_array(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomic(path, buffer.getvalue())


def inside(out: Path, relative: str) -> Path:
    """``out / relative``, refusing anything that would land outside ``out`` (an absolute path, or ``..``
    above it), and a symbolic link planted inside ``out`` that leads out of it. The names are checked
    for every path; the folders through the file system once per folder (resolving every output path
    cost ~1.3 ms per image, 16 lstat calls, in a profile of ``lrp explain``)."""
    normal = os.path.normpath(relative)
    if os.path.isabs(normal) or normal == os.pardir or normal.startswith(os.pardir + os.sep) or normal == os.curdir:
        raise InputError(f"output path '{relative}' would escape the output folder {out}")
    root = os.path.abspath(out)
    _folder_stays_inside(root, os.path.dirname(os.path.join(root, normal)))
    return Path(root) / normal


@functools.lru_cache(maxsize=4096)
def _folder_stays_inside(root: str, folder: str) -> None:
    """Refuse ``folder`` (under ``root``) when a symbolic link on the way leads out of ``root``: a link
    planted at OUT/heatmaps or deeper would send every write through it. Checked on the deepest part
    that exists; folders made later by lrp itself are real ones. A refusal is not cached (it raises)."""
    existing = folder
    while not os.path.lexists(existing) and len(existing) > len(root):
        existing = os.path.dirname(existing)
    real_root = os.path.realpath(root)
    real = os.path.realpath(existing)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise OutputError(
            f"{existing} leads out of the output folder {root} (to {real}): a symbolic link inside it",
            hint="remove the link, or write to another output folder",
        )


def refuse_links_out(out: Path, names: Sequence[str]) -> None:
    """Refuse entries of ``out`` that lrp reads, appends to, locks or writes into (files and folders)
    when they are symbolic links leading out of it (writes would go through them to wherever they
    point), or neither a regular file nor a folder: a FIFO would make the run wait forever for a
    writer or reader, a device or socket cannot be read back. Checked before anything is opened."""
    if not os.path.isdir(out):
        return
    real_root = os.path.realpath(out)
    for name in names:
        path = os.path.join(os.path.abspath(out), name)
        if os.path.islink(path):
            real = os.path.realpath(path)
            if not real.startswith(real_root.rstrip(os.sep) + os.sep):
                raise OutputError(
                    f"{path} is a symbolic link that leads out of the output folder (to {real})",
                    hint="remove the link, or write to another output folder",
                )
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue  # missing (made by the run), or named when opened
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file"
            raise OutputError(
                f"{path} is not a regular file ({kind}): lrp keeps its own records there and would wait on it or fail",
                hint=f"remove {path} (it is not lrp's), or write to another output folder",
            )


def clear_link_checks() -> None:
    _folder_stays_inside.cache_clear()


def safe_label(label: str) -> str:
    """A class name usable in a file name."""
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(label))
    return keep.strip(".") or "class"


def file_labels(classes: Sequence[str]) -> list[str]:
    """One file-name label per class, no two alike even ignoring case (macOS): names that sanitise
    alike (``cat/dog``, ``cat?dog``, ``cat_dog``; ImageNet's two ``crane``s) get their class index
    appended (``crane-134``, ``crane-517``), where they would have shared one heatmap file."""
    labels = [safe_label(name) for name in classes]
    while True:
        counts = Counter(label.lower() for label in labels)
        clashes = [index for index, label in enumerate(labels) if counts[label.lower()] > 1]
        if not clashes:
            return labels
        for index in clashes:
            labels[index] = f"{labels[index]}-{index}"


def write_summary(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _format(row.get(key)) for key in SUMMARY_COLUMNS})
    write_atomic(path, buffer.getvalue().encode("utf-8"))


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.9g}"
    return "" if value is None else value


def read_summary(path: Path) -> list[dict[str, str]]:
    """Rows of a (possibly partial) summary; rows cut short by an interruption are dropped."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row for row in rows if None not in row.values() and row.get("relevance") is not None]


class SummaryLog:
    """Appends summary rows as they are produced (flushed per batch), for --resume after a crash."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists()
        self.handle = path.open("a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
        if fresh:
            self.writer.writeheader()

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.writer.writerow({key: _format(row.get(key)) for key in SUMMARY_COLUMNS})
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))
