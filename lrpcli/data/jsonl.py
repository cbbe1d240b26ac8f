"""Rows as JSON lines: one object per line, features by key (``{"id": "a7", "age": 34, "bmi": 24.7}``).

The keys of the first object are the header (what ``--features`` / ``--drop`` choose from). Chunks of
lines are parsed column-wise by pyarrow straight into float64 columns; a chunk that does not parse that
way (a missing key, a null, a value that is not a number, a blank line, a line that is not an object) is
re-read line by line by :func:`read_json_batches`, which names the line and key of each bad value. Lines
are numbered from 1, as editors show them.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import InputError
from .chunks import LineChunks
from .tabular import ColumnBatch, Row, RowBatch, TabularColumns

SUFFIXES = (".jsonl", ".ndjson")


def is_jsonl(path: str) -> bool:
    return str(path).lower().endswith(SUFFIXES)


def _text(value: Any) -> str:
    """An id or label as text; a whole number written as a float (171.0) reads as 171, as pyarrow casts it."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value)


def _row(line: bytes, number: int, columns: TabularColumns, source: str) -> Row | None:
    """One line as a Row (None for a blank line); a bad line or value becomes a Row with an error."""
    if not line.strip():
        return None
    where = f"{source}: line {number}"
    try:
        record = json.loads(line.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError as exc:
        return Row(number, str(number), None, None, f"{where}: not JSON ({exc.msg} at column {exc.colno})")
    except RecursionError:
        return Row(number, str(number), None, None, f"{where}: nested too deeply to read")
    if not isinstance(record, dict):
        return Row(number, str(number), None, None, f"{where}: a JSON {type(record).__name__}, expected an object of features")
    row_id = _text(record[columns.id_col]) if columns.id_col and record.get(columns.id_col) is not None else str(number)
    label = _text(record.get(columns.label_col)) if columns.label_col and columns.label_col in record else None
    values = []
    for name in columns.features:
        value = record.get(name)
        if value is None:
            return Row(number, row_id, label, None, f"{where}, key '{name}': missing value")
        if isinstance(value, str):
            try:
                number_value = float(value.strip())
            except ValueError:
                return Row(number, row_id, label, None, f"{where}, key '{name}': '{value[:40]}' is not a number")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number_value = float(value) if isinstance(value, float) or abs(value) < 10**308 else math.inf
        else:
            return Row(number, row_id, label, None, f"{where}, key '{name}': {json.dumps(value)[:40]} is not a number")
        if not math.isfinite(number_value):
            return Row(number, row_id, label, None, f"{where}, key '{name}': {(json.dumps(value) if isinstance(value, float) else str(value))[:40]} is not a finite number")
        values.append(number_value)
    return Row(number, row_id, label, values)


def read_json_batches(lines: Iterator[bytes], columns: TabularColumns, batch_size: int, source: str, first: int = 1) -> Iterator[RowBatch]:
    """Parse JSON lines in batches, line by line; ``first`` is the number of the first line."""
    batch = RowBatch()
    for number, line in enumerate(lines, start=first):
        row = _row(line, number, columns, source)
        if row is None:
            continue
        batch.rows.append(row)
        if len(batch.rows) >= batch_size:
            yield batch
            batch = RowBatch()
    if batch.rows:
        yield batch


class JsonlSource:
    """A JSON-lines file, or stdin (``-``), read in batches; :attr:`header` is the first object's keys. ``done``
    counts the lines before ``lines`` (a reader of a byte range of the file numbers lines as the whole file does)."""

    done = 0

    def __init__(self, lines: LineChunks, first: bytes, source: str):
        self.lines, self.source = lines, source
        self.head = [first]  # the lines read to find the header, explained first
        while not first.strip():
            first = self.lines.readline()
            if not first:
                raise InputError(f"{source}: empty input, expected JSON lines (one object per line)")
            self.head.append(first)
        number = len(self.head)
        try:
            record = json.loads(first.decode("utf-8", "surrogateescape"))
        except (json.JSONDecodeError, RecursionError):
            record = None
        if not isinstance(record, dict):
            raise InputError(f"{source}: line {number}: not a JSON object", hint='give one JSON object per line: {"feature": value, ...}')
        self.header = [str(key).strip() for key in record]
        self.first = record
        self.lines.pending = b"".join(self.head) + self.lines.pending  # read again with the rest

    def batches(self, columns: TabularColumns, batch_size: int) -> Iterator[RowBatch | Any]:
        parse = _FastJson(columns, self.first)
        done = self.done  # lines read so far
        for chunk in self.lines.chunks(batch_size):
            lines = _lines(chunk)
            batch = parse(chunk, len(lines), done)
            if batch is not None:
                yield batch
            else:
                yield from read_json_batches(iter(lines), columns, batch_size, self.source, done + 1)
            done += len(lines)


def _lines(chunk: bytes) -> list[bytes]:
    lines = chunk.split(b"\n")
    return lines[:-1] if chunk.endswith(b"\n") else lines


class _FastJson:
    """pyarrow's JSON reader on a chunk of lines with an explicit schema: features float64, the id and
    label columns typed as the first line writes them (text, or numbers then turned into text)."""

    def __init__(self, columns: TabularColumns, first: dict[str, Any]):
        import pyarrow as pa

        self.columns = columns
        kinds = {str: pa.string(), int: pa.int64(), float: pa.float64()}
        self.fields = [(name, pa.float64()) for name in columns.features] + [
            (name, kinds.get(type(first.get(name)), pa.string()))
            for name in dict.fromkeys(n for n in (columns.id_col, columns.label_col) if n and n not in columns.features)
        ]

    def _read(self, chunk: bytes):
        import pyarrow as pa
        import pyarrow.json as pj

        read = pj.ReadOptions(use_threads=False, block_size=max(1 << 16, len(chunk) + 1))
        parse = pj.ParseOptions(explicit_schema=pa.schema(self.fields), unexpected_field_behavior="ignore", newlines_in_values=False)
        return pj.read_json(io.BytesIO(chunk), read_options=read, parse_options=parse)

    def __call__(self, chunk: bytes, lines: int, done: int):
        import pyarrow as pa
        import pyarrow.compute as pc

        if chunk.count(b"\r") != chunk.count(b"\r\n"):
            return None
        try:
            table = self._read(chunk)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None
        if table.num_rows != lines:
            return None  # not parsed, or blank lines in it
        cols = [table.column(name) for name in self.columns.features]
        if any(c.null_count for c in cols):
            return None
        x = np.column_stack([c.to_numpy() for c in cols]) if lines else np.zeros((0, len(cols)))
        if not np.isfinite(x).all():
            return None
        numbers = np.arange(done + 1, done + 1 + lines, dtype=np.int64)

        def text(name: str):
            return pc.cast(table.column(name).combine_chunks(), pa.string())

        if self.columns.id_col:
            ids = text(self.columns.id_col)
            if ids.null_count:  # a line without an id: its line number, as the careful reader gives it
                ids = pc.if_else(pc.is_null(ids), pa.array(numbers).cast(pa.string()), ids)
        else:
            ids = pa.array(numbers).cast(pa.string())
        labels = text(self.columns.label_col) if self.columns.label_col else None
        if labels is not None and labels.null_count:
            return None  # None labels: the careful reader's
        return ColumnBatch(numbers, ids, labels, torch.from_numpy(np.ascontiguousarray(x)))
