"""Column-wise tabular I/O with pyarrow.

A CSV file is cut into chunks of ``batch_size`` lines at newline bytes and each chunk is parsed by
pyarrow straight into float64 columns: no Python loop over rows. A chunk pyarrow cannot take as it is
(a bad cell, a missing value, a wrong width, a blank line, a number that is not finite, bytes that are
not UTF-8) is re-read by the careful reader of :mod:`lrpcli.data.tabular`, which names the row and
column of every bad cell. A file with a quote character in it (whose records may span lines) goes to
the careful reader from the first chunk that holds one, since a chunk cut at a newline might then cut a
record in two.

Parquet files are read in record batches of ``batch_size`` rows; a batch whose feature columns do not
convert to finite numbers is re-read cell by cell through the same careful reader.
"""

from __future__ import annotations

import csv
import io
import itertools
import sys
from typing import IO, Any, Iterator

import numpy as np
import torch

from ..errors import InputError
from .chunks import LineChunks
from .tabular import ColumnBatch, RowBatch, TabularColumns, open_rows, read_batches


def is_parquet(path: str) -> bool:
    return str(path).lower().endswith((".parquet", ".pq"))


def _careful(cells: Iterator[list[str]], header: list[str], columns: TabularColumns, batch_size: int, source: str, done: int) -> Iterator[RowBatch]:
    """The careful reader over ``cells``, numbering rows as if ``done`` rows (the header included) came first."""
    return read_batches(itertools.chain(itertools.repeat([], done - 1), cells), header, columns, batch_size, source)


class CsvSource:
    """CSV rows read column-wise from ``lines`` (a file or stdin) whose first line, ``first``, is the
    header; :attr:`header` as :func:`open_rows` reads it. ``done`` counts the rows before ``lines`` (the
    header included): a reader of a byte range of the file (the Ray executor's) numbers rows as the whole file does."""

    done = 1

    def __init__(self, lines: LineChunks, first: bytes, source: str):
        self.lines, self.source = lines, source
        body = first[:-2] if first.endswith(b"\r\n") else first
        # a quoted header (maybe spanning lines) or lone \r line ends: the careful reader, all of it
        self.careful = b'"' in first or b"\r" in body
        if self.careful:
            self.header, self.reader = open_rows(self.lines.rest(first), source)
        else:
            self.header, _ = open_rows(io.StringIO(first.decode("utf-8", "surrogateescape"), newline=""), source)

    def batches(self, columns: TabularColumns, batch_size: int) -> Iterator[RowBatch | ColumnBatch]:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        header, source = self.header, self.source
        if self.careful:
            yield from read_batches(self.reader, header, columns, batch_size, source)
            return
        roles = [name for name in (columns.id_col, columns.label_col) if name]
        if set(roles) & set(columns.features) or len(set(roles)) != len(roles) or "" in header:
            yield from _careful(csv.reader(self.lines.rest()), header, columns, batch_size, source, self.done)
            return
        types = {name: pa.float64() for name in columns.features} | {name: pa.string() for name in roles}
        read_options = pacsv.ReadOptions(column_names=header, use_threads=False)
        convert = pacsv.ConvertOptions(
            include_columns=list(columns.features) + roles, column_types=types, null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False
        )
        done = self.done  # rows read so far, the header included
        for chunk in self.lines.chunks(batch_size):
            lines = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
            if b'"' in chunk or chunk.count(b"\r") != chunk.count(b"\r\n"):
                yield from _careful(csv.reader(self.lines.rest(chunk)), header, columns, batch_size, source, done)
                return
            batch = None
            try:
                table = pacsv.read_csv(io.BytesIO(chunk), read_options=read_options, convert_options=convert)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                table = None
            if table is not None and table.num_rows == lines:
                x = np.column_stack([table.column(name).to_numpy() for name in columns.features])
                if np.isfinite(x).all():
                    numbers = np.arange(done + 1, done + 1 + lines, dtype=np.int64)
                    ids = (
                        table.column(columns.id_col).combine_chunks()
                        if columns.id_col
                        else pa.array(numbers - 1).cast(pa.string())
                    )
                    labels = table.column(columns.label_col).combine_chunks() if columns.label_col else None
                    batch = ColumnBatch(numbers, ids, labels, torch.from_numpy(np.ascontiguousarray(x)))
            if batch is not None:
                yield batch
            else:  # this chunk on the careful path: every bad cell named by row and column
                text = io.StringIO(chunk.decode("utf-8", "surrogateescape"), newline="")
                yield from _careful(csv.reader(text), header, columns, batch_size, source, done)
            done += lines


class ParquetSource:
    """A Parquet file read in record batches; its column names are the header. ``rows`` (start, stop) reads only
    those rows (the Ray executor's blocks), numbered as in the whole file."""

    rows: tuple[int, int] | None = None

    def __init__(self, path: str, source: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.source = source
        try:
            # read a column chunk as it is needed, not a whole row group at once: memory follows the batch
            self.file = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        except OSError as exc:
            raise InputError(f"cannot read {source}: {exc.strerror or exc}") from exc
        except (pa.ArrowInvalid, pa.ArrowException) as exc:
            raise InputError(f"{source}: not a Parquet file ({exc})") from exc
        self.header = [name.strip() for name in self.file.schema_arrow.names]

    def close(self) -> None:
        self.file.close()

    def batches(self, columns: TabularColumns, batch_size: int) -> Iterator[RowBatch | ColumnBatch]:
        import pyarrow as pa
        import pyarrow.compute as pc

        roles = [name for name in (columns.id_col, columns.label_col) if name]
        used = list(dict.fromkeys(list(columns.features) + roles))
        names = self.file.schema_arrow.names
        raw = [names[self.header.index(name)] for name in used]
        done = 1 + (self.rows[0] if self.rows else 0)
        try:
            for record in self._records(raw, batch_size):
                n = record.num_rows
                numbers = np.arange(done + 1, done + 1 + n, dtype=np.int64)
                batch = None
                try:
                    cols = [record.column(raw[used.index(name)]) for name in columns.features]
                    if all(c.null_count == 0 for c in cols):
                        x = np.column_stack([pc.cast(c, pa.float64()).to_numpy(zero_copy_only=False) for c in cols]) if n else np.zeros((0, len(cols)))
                        if np.isfinite(x).all():
                            text = lambda name: pc.cast(record.column(raw[used.index(name)]), pa.string())  # noqa: E731
                            ids = text(columns.id_col) if columns.id_col else pa.array(numbers - 1).cast(pa.string())
                            if ids.null_count:
                                ids = pc.fill_null(ids, "")
                            labels = text(columns.label_col) if columns.label_col else None
                            batch = ColumnBatch(numbers, ids, labels, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    batch = None
                if batch is not None:
                    yield batch
                else:
                    yield from _careful(_cells(record, raw), used, columns, batch_size, self.source, done)
                done += n
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"{self.source}: cannot read the Parquet data ({exc})") from exc

    def _records(self, raw: list[str], batch_size: int) -> Iterator[Any]:
        """Record batches of ``batch_size`` rows (of :attr:`rows` only, where set)."""
        if self.rows is None:
            yield from self.file.iter_batches(batch_size=batch_size, columns=raw, use_threads=False)
            return
        start, stop = self.rows
        sizes = [self.file.metadata.row_group(k).num_rows for k in range(self.file.num_row_groups)]
        ends = np.cumsum(sizes)
        groups = [k for k in range(len(sizes)) if ends[k] > start and ends[k] - sizes[k] < stop]
        first = int(ends[groups[0]] - sizes[groups[0]]) if groups else start
        import pyarrow as pa

        parts = list(self.file.iter_batches(batch_size=1 << 16, row_groups=groups, columns=raw, use_threads=False))
        if not parts:
            return
        table = pa.Table.from_batches(parts).slice(start - first, stop - start)
        for offset in range(0, table.num_rows, batch_size):
            yield table.slice(offset, batch_size).combine_chunks().to_batches()[0]


def _cells(record: Any, names: list[str]) -> Iterator[list[str]]:
    """A record batch as rows of text cells (the careful reader's input); nulls are empty cells."""
    columns = [record.column(name).to_pylist() for name in names]
    for values in zip(*columns):
        yield ["" if v is None else (repr(v) if isinstance(v, float) else str(v)) for v in values]


class Opened:
    """A file (or stdin, ``-``) opened for reading rows; closes what it opened."""

    def __init__(self, path: str, source: str):
        self.own = path != "-"
        try:
            self.raw = open(path, "rb") if self.own else sys.stdin.buffer
        except OSError as exc:
            raise InputError(f"cannot read {source}: {exc.strerror}") from exc

    def close(self) -> None:
        if self.own:
            self.raw.close()


def open_source(path: str, source: str):
    """The reader of rows for ``path``: Parquet by its suffix, JSON lines by its suffix (or, on stdin, a
    first line that opens an object), else CSV. Each has ``header``, ``batches(columns, n)`` and ``close()``."""
    from .jsonl import JsonlSource, is_jsonl

    if is_parquet(path):
        return ParquetSource(path, source)
    opened = Opened(path, source)
    lines = LineChunks(opened.raw)
    first = lines.readline()
    if is_jsonl(path) or (path == "-" and first.lstrip()[:1] == b"{"):
        table = JsonlSource(lines, first, source)
    else:
        table = CsvSource(lines, first, source)
    table.close = opened.close
    return table


class ArrowWriter:
    """Result columns written in bulk: CSV (pyarrow formats the numbers, Python's csv module the header),
    Parquet, or an Arrow IPC stream (one record batch per batch, for readers downstream of a pipe). Relevance, logits and predictions computed in float32 (or narrower) are written as
    float32, so the CSV shows each as the shortest text that reads back to the same float32 (today's
    ``.9g`` texts read back to the same float32 too); relevance_sum is written in float64."""

    def __init__(self, handle: IO[str], fmt: str, fields: list[str], relevance_names: list[str], classes: list[str] | None, narrow: bool):
        self.handle, self.fmt, self.fields, self.relevance_names, self.classes = handle, fmt, fields, relevance_names, classes
        self.narrow = narrow and fmt == "csv"
        self.parquet = self.arrow = None
        if fmt == "csv":
            csv.writer(handle, lineterminator="\n").writerow(fields)
            handle.flush()

    def write(self, columns: dict[str, Any]) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        real = pa.float32() if self.narrow else pa.float64()
        arrays = []
        for name in self.fields:
            value = columns[name]
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                value = pa.array(value, pa.float64() if name == "relevance_sum" else real)
            elif isinstance(value, np.ndarray):
                value = pa.array(value, pa.int64())
            arrays.append(value)
        table = pa.Table.from_arrays(arrays, names=self.fields)
        if self.fmt == "arrow":  # an IPC stream: each batch readable as soon as it is written
            if self.arrow is None:
                self.handle.flush()
                self.arrow = pa.ipc.new_stream(self.handle.buffer, table.schema)
            self.arrow.write_table(table)
            self.handle.buffer.flush()
            return
        if self.fmt == "parquet":  # one row group per ~64k rows: a row group per small batch writes slowly
            if self.parquet is None:
                import pyarrow.parquet as pq

                self.handle.flush()
                self.parquet, self.held = pq.ParquetWriter(self.handle.buffer, table.schema), []
            self.held.append(table)
            if sum(t.num_rows for t in self.held) >= self.ROW_GROUP:
                self._flush_parquet()
            return
        buffer = io.BytesIO()
        try:
            pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False, quoting_style="none"))
            text = buffer.getvalue().decode("utf-8", "surrogateescape")
        except pa.ArrowInvalid:  # a cell that needs quotes: Python's csv module for this batch
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            data = [a.to_pylist() for a in arrays]
            writer.writerows([(format(v, ".9g") if type(v) is float else ("" if v is None else v)) for v in row] for row in zip(*data))
            text = out.getvalue()
        self.handle.write(text)
        self.handle.flush()

    ROW_GROUP = 65536

    def _flush_parquet(self) -> None:
        import pyarrow as pa

        if self.held:
            self.parquet.write_table(pa.concat_tables(self.held), row_group_size=self.ROW_GROUP)
            self.held = []

    def close(self) -> None:
        if self.arrow is not None:
            self.arrow.close()
            self.handle.buffer.flush()
        if self.parquet is not None:
            self._flush_parquet()
            self.parquet.close()
            self.handle.buffer.flush()
