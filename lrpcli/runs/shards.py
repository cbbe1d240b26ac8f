"""Splitting work across processes and finding it again: shards, manifests, locks (merging: merge.py).

- A shard ``K/N`` takes the inputs whose name hashes to K-1 modulo N: deterministic,
  independent of listing order, and every input lands in exactly one shard.
- Each run (or shard) appends to a manifest (``manifest[.shard-K-of-N].jsonl``): a header
  with the model and composite hashes, then one line per finished or failed input. A
  resumed run reads it; a run with another model or composite is refused.
- ``merge`` joins the shards' summaries into one summary.csv (and their conservation
  reports into one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TypeVar

from ..errors import InputError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    @classmethod
    def parse(cls, text: str | None) -> "Shard | None":
        if text is None:
            return None
        try:
            index, count = (int(part) for part in str(text).split("/"))
        except ValueError:
            raise UsageError(f"--shard must look like K/N (e.g. 3/10), got {text!r}") from None
        if count < 1 or not 1 <= index <= count:
            raise UsageError(f"--shard {text}: K must be between 1 and N")
        return cls(index, count)

    @property
    def suffix(self) -> str:
        return f".shard-{self.index}-of-{self.count}"

    def owns(self, name: str) -> bool:
        digest = hashlib.sha1(name.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1

    def select(self, items: Sequence[T], key=lambda item: item.name) -> list[T]:
        return [item for item in items if self.owns(key(item))]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def suffix(shard: Shard | None) -> str:
    return shard.suffix if shard else ""


def read_inputs_list(source: str) -> list[str]:
    """Input paths from a file (one per line; blank lines and # comments skipped), or - for stdin.

    Read line by line within the bounds of ``limits.py``: a line longer than a path can be
    (``/dev/zero`` is one endless line), a NUL byte, or more lines or bytes than a list of inputs
    needs is an InputError naming the file and line, not a read that grows until memory runs out."""
    import sys

    from ..limits import MAX_LIST_BYTES, MAX_LIST_LINE_BYTES, MAX_LISTED_INPUTS

    name = "<stdin>" if source == "-" else source
    hint = "give a text file with one input path per line"
    inputs: list[str] = []
    total = number = 0
    try:
        handle = sys.stdin.buffer if source == "-" else open(source, "rb")
        with handle if source != "-" else contextlib.nullcontext(handle):
            while line := handle.readline(MAX_LIST_LINE_BYTES + 2):
                number += 1
                total += len(line)
                body = line.rstrip(b"\r\n")
                if len(body) > MAX_LIST_LINE_BYTES:
                    raise InputError(f"--inputs-from {name}: line {number} is longer than {MAX_LIST_LINE_BYTES:,} bytes, more than a path can be", hint=hint)
                if b"\0" in body:
                    raise InputError(f"--inputs-from {name}: line {number} holds a NUL byte, which no path can", hint=hint)
                if total > MAX_LIST_BYTES:
                    raise InputError(f"--inputs-from {name}: more than {MAX_LIST_BYTES:,} bytes (at line {number})", hint="split the list into several runs")
                text = body.decode("utf-8", errors="surrogateescape").strip()
                if text and not text.startswith("#"):
                    inputs.append(text)
                    if len(inputs) > MAX_LISTED_INPUTS:
                        raise InputError(f"--inputs-from {name}: more than {MAX_LISTED_INPUTS:,} inputs (at line {number})", hint="split the list into several runs")
    except OSError as exc:
        raise InputError(f"--inputs-from: cannot read {name}: {exc.strerror}") from exc
    if not inputs:
        raise InputError(f"--inputs-from {name}: no inputs listed")
    return inputs


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class Manifest:
    """An append-only record of a run: header, then one line per input finished or failed."""

    def __init__(self, out: Path, shard: Shard | None):
        self.path = out / f"manifest{suffix(shard)}.jsonl"
        self.shard = shard
        self.run = uuid.uuid4().hex[:12]
        self.handle = None

    def header(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        with self.path.open(encoding="utf-8", errors="replace") as handle:
            first = handle.readline()
        try:
            data = json.loads(first)
        except (json.JSONDecodeError, RecursionError):
            return None
        return data if isinstance(data, dict) and data.get("kind") == "header" else None

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        found = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue  # a line cut short by a kill
            if isinstance(entry, dict) and entry.get("kind") == "input":
                found.append(entry)
        return found

    def open(
        self,
        model_sha256: str,
        composite_sha256: str,
        inputs: int,
        *,
        resume: bool,
        overwrite: bool,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Start (or continue) the manifest; refuse another model's or composite's results, and a resume
        with other ``settings`` (the options that change results, keyed by their flag)."""
        previous = self.header()
        settings = json.loads(json.dumps(settings or {}, default=str))  # as the header will hold them
        if previous and resume and not overwrite and isinstance(previous.get("settings"), dict):
            differ = [key for key in sorted(set(settings) | set(previous["settings"])) if settings.get(key) != previous["settings"].get(key)]
            if differ:
                said = "; ".join(f"{key} {_shown(previous['settings'].get(key))} before, {_shown(settings.get(key))} now" for key in differ)
                raise UsageError(
                    f"--resume: {self.path.parent} holds results made with other options ({said})",
                    hint="resume with the options of the first run, or run without --resume to start over (or use another output folder)",
                )
        if previous and (previous.get("model_sha256"), previous.get("composite_sha256")) != (model_sha256, composite_sha256):
            if not overwrite:
                what = "model" if previous.get("model_sha256") != model_sha256 else "composite"
                raise UsageError(
                    f"{self.path.parent} holds results of another {what} ({self.path.name})",
                    hint="use another output folder, or --overwrite to replace them",
                )
            previous = None
        fresh = previous is None or not resume
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not fresh and _cut_short(self.path):
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write("\n")  # a line a kill cut short stays a line of its own, not the start of the next
        self.handle = self.path.open("w" if fresh else "a", encoding="utf-8")
        if fresh:
            self._write(
                {
                    "kind": "header",
                    "model_sha256": model_sha256,
                    "composite_sha256": composite_sha256,
                    "settings": settings,
                    "shard": str(self.shard) if self.shard else None,
                    "inputs": inputs,
                    "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
            )
        self._write({"kind": "run", "run": self.run, "resume": resume, "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})

    def runs(self) -> list[dict[str, Any]]:
        """The runs that wrote into this manifest, oldest first (run.json lists them after a resume)."""
        found = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines() if self.path.is_file() else []:
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(entry, dict) and entry.get("kind") == "run":
                found.append({k: v for k, v in entry.items() if k != "kind"})
        return found

    def record(self, names: Iterable[str], status: str) -> None:
        for name in names:
            self._write({"kind": "input", "input": name, "status": status, "run": self.run}, flush=False)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def _write(self, data: dict[str, Any], flush: bool = True) -> None:
        self.handle.write(json.dumps(data) + "\n")
        if flush:
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _cut_short(path: Path) -> bool:
    """Whether the file ends in the middle of a line (a kill during a write)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _shown(value: Any) -> str:
    return "unset" if value is None else value if isinstance(value, str) else json.dumps(value)


@contextlib.contextmanager
def output_lock(out: Path, shard: Shard | None) -> Iterator[None]:
    """Hold ``OUT/.lock[.shard-K-of-N]`` for a whole run: a second run into the same folder (and shard)
    at once would truncate the manifest and lose rows, so it is refused, naming the other run's pid.

    ``flock`` locks go with the process: a killed run leaves the file but not the lock."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent runs are not detected there
        yield
        return
    path = out / f".lock{suffix(shard)}"
    out.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "unknown"
            raise UsageError(
                f"{out} is in use by another lrp run (pid {pid}{', shard ' + str(shard) if shard else ''})",
                hint="wait for it to finish, or write to another output folder (shards of one job may share a folder: --shard K/N)",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock
