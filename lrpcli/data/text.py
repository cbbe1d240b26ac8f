"""Texts in, token ids out: reading text files and tokenizing them with a Hugging Face tokenizer.

Texts come from a ``.txt`` file (one text per line), stdin (``-``, the same), or a CSV or
JSONL file with a text column; an id and a label column are carried through as for tabular
runs. Tokenizers are ``tokenizers`` JSON files (fast, offline, no Python code in them).
Texts are read lazily, so a file of any length streams through in batches.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import torch

from ..errors import ConfigError, InputError
from ..limits import MAX_CONFIG_BYTES

TEXT_FORMATS = ("lines", "csv", "jsonl")
#: token names a tokenizer without a padding setting usually pads with, in order of preference
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<PAD>", "[pad]")


@dataclass
class TextRecord:
    """One input text: its line or row number (1-based), id, text and optional label; or why it is unusable."""

    number: int
    id: str
    text: str
    label: str | None = None
    error: str | None = None
    row: dict | None = None  # the whole CSV row or JSON object, for columns beyond these (planted words)
    where: str = ""  # "texts.csv: row 7", for messages about this text

    def __post_init__(self) -> None:
        self.where = self.where or f"text {self.id}"


def text_format(source: str, text_col: str | None) -> str:
    """lines for .txt and stdin, csv / jsonl by suffix; a text column is needed for (and only for) those."""
    suffix = Path(source).suffix.lower() if source != "-" else ""
    fmt = "csv" if suffix in (".csv", ".tsv") else "jsonl" if suffix in (".jsonl", ".ndjson") else "lines"
    if fmt != "lines" and not text_col:
        raise InputError(
            f"{source}: a {fmt.upper()} file of texts needs the name of its text column",
            hint="give it with --text-col NAME (and --id-col / --label-col for the others)",
        )
    if fmt == "lines" and text_col:
        raise InputError(f"{source}: --text-col applies to CSV and JSONL files; a .txt file holds one text per line")
    return fmt


def read_texts(
    handle: IO[str],
    source: str,
    fmt: str,
    text_col: str | None = None,
    id_col: str | None = None,
    label_col: str | None = None,
) -> Iterator[TextRecord]:
    """The texts of ``handle``, one record per line or row (blank lines of a .txt file are skipped).

    A row without its text (or with a malformed JSON line, JSON nested too deeply to read, a CSV cell
    past Python's csv field limit) becomes a record with ``error`` set, so that the run can name it and go on.
    """
    if fmt == "lines":
        for number, line in enumerate(handle, 1):
            text = line.rstrip("\r\n")
            if text.strip():
                yield _checked(TextRecord(number, str(number), text, where=f"{source}: line {number}"), source, "line")
        return
    if fmt == "csv":
        reader = csv.DictReader(handle, delimiter="\t" if source.lower().endswith(".tsv") else ",")
        try:
            header = reader.fieldnames or []
        except csv.Error as exc:
            raise InputError(f"{source}: line 1: the header is not readable CSV ({exc})") from exc
        for column, option in ((text_col, "--text-col"), (id_col, "--id-col"), (label_col, "--label-col")):
            if column and column not in header:
                raise InputError(f"{source}: no column '{column}' (columns: {', '.join(header[:12])})", hint=f"check {option}")
        number = 1  # line 1 is the header
        while True:
            number += 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # a cell past csv.field_size_limit(), ...: this row alone (the reader goes on after it)
                yield TextRecord(number, str(number), "", error=f"{source}: row {number}: not readable CSV ({_csv_problem(exc)})", where=f"{source}: row {number}")
                continue
            yield _checked(_record(number, row, source, text_col, id_col, label_col, "row"), source, "row")
    for number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        where = f"{source}: line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield TextRecord(number, str(number), "", error=f"{where}: not valid JSON ({exc.msg})", where=where)
            continue
        except RecursionError:
            yield TextRecord(number, str(number), "", error=f"{where}: JSON nested too deeply to read", where=where)
            continue
        except ValueError as exc:  # an integer of more digits than Python converts
            yield TextRecord(number, str(number), "", error=f"{where}: not readable JSON ({str(exc).split(';')[0]})", where=where)
            continue
        if not isinstance(row, dict):
            yield TextRecord(number, str(number), "", error=f"{where}: expected a JSON object", where=where)
            continue
        try:
            record = _record(number, row, source, text_col, id_col, label_col, "line")
        except RecursionError:  # an id or label nested just short of json's limit, too deep to turn into text
            record = TextRecord(number, str(number), "", error=f"{where}: a value nested too deeply", where=where)
        yield _checked(record, source, "line")


def _csv_problem(exc: csv.Error) -> str:
    text = str(exc)
    if "field limit" in text:
        return f"a cell longer than Python's csv field limit of {csv.field_size_limit():,} characters"
    return text


def _checked(record: TextRecord, source: str, unit: str) -> TextRecord:
    """Bytes that are not UTF-8 (read as surrogate escapes) make the text unusable: named, not guessed at."""
    if record.error is None:
        try:
            record.text.encode("utf-8")
        except UnicodeEncodeError as exc:
            record.error = f"{source}: {unit} {record.number}: bytes that are not UTF-8 at character {exc.start + 1}"
    return record


def _record(number: int, row: dict, source: str, text_col, id_col, label_col, unit: str) -> TextRecord:
    text = row.get(text_col)
    ident = row.get(id_col) if id_col else None
    label = row.get(label_col) if label_col else None
    record = TextRecord(
        number, str(ident) if ident not in (None, "") else str(number), "", None if label is None else str(label), row=row, where=f"{source}: {unit} {number}"
    )
    if not isinstance(text, str) or not text.strip():
        record.error = f"{source}: {unit} {number}: no text in column '{text_col}'"
    else:
        record.text = text
    return record


@dataclass
class Encoded:
    """A tokenized text: ids and, per token, its string, its character span and its word (None: special)."""

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    words: list[int | None]
    special: list[bool]
    truncated: bool


class TextTokenizer:
    """A ``tokenizers`` JSON file, with truncation to ``max_length`` tokens and the pad id the batches use."""

    def __init__(self, path: str | Path, max_length: int = 256):
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"tokenizer not found: {path}", hint="give a Hugging Face tokenizer.json with --tokenizer")
        if path.stat().st_size > 64 * MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for a tokenizer file")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for malformed files
            raise ConfigError(f"{path}: not a tokenizers JSON file ({str(exc).splitlines()[0][:200]})") from exc
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ConfigError(f"max_length must be a positive integer, got {max_length!r}")
        padding = tokenizer.padding
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)  # keeps the special tokens a post-processor adds ([CLS] ... [SEP])
        self.tokenizer = tokenizer
        self.path = path
        self.max_length = max_length
        self.pad_id, self.pad_token = self._pad(padding)

    def _pad(self, padding: dict | None) -> tuple[int, str]:
        if padding:
            return int(padding["pad_id"]), str(padding["pad_token"])
        for token in PAD_TOKENS:
            index = self.tokenizer.token_to_id(token)
            if index is not None:
                return index, token
        raise ConfigError(
            f"{self.path}: the tokenizer names no padding token (no padding setting, none of {', '.join(PAD_TOKENS)})",
            hint="add a pad token to the tokenizer (tokenizer.enable_padding(pad_id=..., pad_token=...)) and save it again",
        )

    @property
    def unk_id(self) -> int | None:
        """The id of the unknown token, where the tokenizer's model has one."""
        token = getattr(self.tokenizer.model, "unk_token", None)
        return self.tokenizer.token_to_id(token) if token else None

    @functools.cached_property
    def vocabulary(self) -> tuple[int, int]:
        """The tokenizer's vocabulary size and the largest id it can give (added tokens included)."""
        ids = self.tokenizer.get_vocab(with_added_tokens=True).values()
        return self.tokenizer.get_vocab_size(with_added_tokens=True), max(ids, default=-1)

    def encode(self, texts: list[str], names: list[str] | None = None) -> list[Encoded]:
        """Every text tokenized; a text the tokenizer fails on is an InputError naming it (``names[i]``)."""
        encoded = self.encode_each(texts)
        for index, item in enumerate(encoded):
            if isinstance(item, str):
                raise InputError(f"{names[index] if names else f'text {index + 1} of the batch'}: {item}")
        return encoded  # type: ignore[return-value]

    def encode_each(self, texts: list[str]) -> list[Encoded | str]:
        """Each text tokenized, or why the tokenizer failed on it (a sentence), the others unharmed.

        The Rust library can panic on a text (a pre-tokenizer regex that backtracks past Oniguruma's
        retry limit): pyo3 raises that as a PanicException, a BaseException, and the whole batch is lost.
        Then each text is tokenized alone to find the ones that fail. The panic's report, which Rust
        writes straight to file descriptor 2, is kept off the terminal (shown with LRP_DEBUG=1)."""
        try:
            with _quiet_panics():
                return [_encoded(encoding) for encoding in self.tokenizer.encode_batch(texts)]
        except BaseException as exc:
            if _tokenizer_failure(exc) is None:
                raise
        result: list[Encoded | str] = []
        for text in texts:
            try:
                with _quiet_panics():
                    result.append(_encoded(self.tokenizer.encode(text)))
            except BaseException as exc:
                reason = _tokenizer_failure(exc)
                if reason is None:
                    raise
                result.append(reason)
        return result


def _encoded(encoding) -> Encoded:
    return Encoded(
        ids=list(encoding.ids),
        tokens=list(encoding.tokens),
        offsets=[tuple(o) for o in encoding.offsets],
        words=list(encoding.word_ids),
        special=[bool(s) for s in encoding.special_tokens_mask],
        truncated=bool(encoding.overflowing),
    )


def _is_panic(exc: BaseException) -> bool:
    """pyo3's PanicException (module pyo3_runtime, not importable by name) derives from BaseException."""
    return type(exc).__name__ == "PanicException"


def _tokenizer_failure(exc: BaseException) -> str | None:
    """Why the tokenizer failed on a text, or None for what must not be swallowed (Ctrl-C, exit)."""
    if not isinstance(exc, Exception) and not _is_panic(exc):
        return None
    lines = str(exc).strip().splitlines()
    detail = (lines[0] if lines else type(exc).__name__)[:200]
    what = "the tokenizer failed on this text (the tokenizers library panicked: " if _is_panic(exc) else "the tokenizer failed on this text ("
    return f"{what}{detail})"


@contextlib.contextmanager
def _quiet_panics() -> Iterator[None]:
    """Catch what is written to file descriptor 2 while the block runs (Rust's panic report goes there,
    past sys.stderr) and pass it on afterwards unless the block ended in a panic."""
    if os.environ.get("LRP_DEBUG", "") not in ("", "0"):
        yield
        return
    try:
        _flush_stderr()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no stderr at all
        yield
        return
    panicked = False
    with tempfile.TemporaryFile() as spill:
        os.dup2(spill.fileno(), 2)
        try:
            yield
        except BaseException as exc:
            panicked = _is_panic(exc)
            raise
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            if not panicked:
                spill.seek(0)
                data = spill.read()
                with contextlib.suppress(OSError):
                    while data:
                        data = data[os.write(2, data):]


def _flush_stderr() -> None:
    for stream in {id(s): s for s in (sys.stderr, sys.__stderr__) if s is not None}.values():
        with contextlib.suppress(Exception):
            stream.flush()


def batch_length(longest: int, max_length: int, fixed: int | None = None) -> int:
    """The padded length of a batch: the model's fixed length if it has one, else the longest text rounded
    up to a power of two (at least 8, at most ``max_length``), so that a run meets a handful of shapes."""
    if fixed:
        return fixed
    length = 8
    while length < longest:
        length *= 2
    return max(longest, min(length, max_length))


def pad_batch(encoded: list[Encoded], pad_id: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (batch, length), right-padded with ``pad_id``, and the attention mask (1 = a real token)."""
    ids = torch.full((len(encoded), length), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(encoded), length), dtype=torch.int64)
    for row, item in enumerate(encoded):
        n = min(len(item.ids), length)
        ids[row, :n] = torch.tensor(item.ids[:n], dtype=torch.int64)
        mask[row, :n] = 1
    return ids, mask
