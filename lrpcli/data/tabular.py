"""CSV rows in, relevance rows out: streaming, so memory stays flat for any number of rows.

Columns are chosen by header name (``features``, ``drop``, ``id_col``, ``label_col``);
every bad cell is reported with its row number (1-based, counting the header as row 1,
as a spreadsheet shows it) and column name.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import InputError, UsageError


@dataclass
class TabularColumns:
    """Which CSV columns feed the model (in model order), which identify rows, which carry labels."""

    features: list[str]
    id_col: str | None = None
    label_col: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    @classmethod
    def resolve(
        cls,
        header: Sequence[str],
        *,
        features: Sequence[str] | None = None,
        drop: Sequence[str] = (),
        id_col: str | None = None,
        label_col: str | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        source: str = "<stdin>",
        optional: Sequence[str] = (),
    ) -> "TabularColumns":
        """``optional`` names id/label columns that may be absent (from a model spec, not a flag)."""
        header = [h.strip() for h in header]
        id_col = None if id_col in optional and id_col not in header else id_col
        label_col = None if label_col in optional and label_col not in header else label_col
        if len(set(header)) != len(header):
            duplicated = sorted({h for h in header if header.count(h) > 1})
            raise InputError(f"{source}: duplicate column name(s) in the header: {', '.join(duplicated)}")
        for role, name in (("--id-col", id_col), ("--label-col", label_col)):
            if name is not None and name not in header:
                raise InputError(f"{source}: {role} '{name}' is not a column (columns: {', '.join(header)})")
        for name in drop:
            if name not in header:
                raise InputError(f"{source}: --drop '{name}' is not a column (columns: {', '.join(header)})")
        if features:
            missing = [name for name in features if name not in header]
            if missing:
                raise InputError(
                    f"{source}: missing column(s) the model needs: {', '.join(missing)}",
                    hint=f"the header has: {', '.join(header)}",
                )
            chosen = list(features)
        else:
            chosen = [h for h in header if h not in drop and h not in (id_col, label_col)]
        if not chosen:
            raise InputError(f"{source}: no feature columns left")
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) != len(chosen):
                raise UsageError(f"{name} has {len(values)} values for {len(chosen)} features")
        if std is not None and any(s <= 0 for s in std):
            raise UsageError("std values must be positive")
        return cls(list(chosen), id_col, label_col, list(mean) if mean else None, list(std) if std else None)


@dataclass
class Row:
    number: int  # row number in the file (header = 1)
    id: str
    label: str | None
    values: list[float] | None
    error: str | None = None


@dataclass
class RowBatch:
    rows: list[Row] = field(default_factory=list)

    @property
    def good(self) -> list[Row]:
        return [row for row in self.rows if row.error is None]

    def tensor(self, columns: TabularColumns) -> torch.Tensor:
        x = torch.tensor([row.values for row in self.good], dtype=torch.float64)
        if columns.mean is not None:
            x = x - torch.tensor(columns.mean, dtype=torch.float64)
        if columns.std is not None:
            x = x / torch.tensor(columns.std, dtype=torch.float64)
        return x


@dataclass
class ColumnBatch:
    """Rows that all parsed: their row numbers (header = 1), ids and labels (pyarrow string arrays) and
    the raw feature values (float64, not yet standardised)."""

    numbers: np.ndarray
    ids: Any
    labels: Any | None
    x: torch.Tensor

    def __len__(self) -> int:
        return len(self.numbers)

    def take(self, keep: np.ndarray) -> "ColumnBatch":
        import pyarrow as pa

        index = pa.array(np.flatnonzero(keep))
        return ColumnBatch(
            self.numbers[keep], self.ids.take(index), None if self.labels is None else self.labels.take(index), self.x[torch.from_numpy(keep)]
        )

    def tensor(self, columns: TabularColumns) -> torch.Tensor:
        x = self.x
        if columns.mean is not None:
            x = x - torch.tensor(columns.mean, dtype=torch.float64)
        if columns.std is not None:
            x = x / torch.tensor(columns.std, dtype=torch.float64)
        return x

    @classmethod
    def from_rows(cls, rows: Sequence[Row], columns: TabularColumns) -> "ColumnBatch":
        import pyarrow as pa

        x = torch.tensor([row.values for row in rows], dtype=torch.float64).reshape(len(rows), len(columns.features))
        labels = pa.array([row.label for row in rows], pa.string()) if columns.label_col else None
        return cls(np.array([row.number for row in rows], dtype=np.int64), pa.array([row.id for row in rows], pa.string()), labels, x)

    def to_rows(self) -> RowBatch:
        ids = self.ids.to_pylist()
        labels = self.labels.to_pylist() if self.labels is not None else [None] * len(ids)
        return RowBatch([Row(int(n), i, l, v) for n, i, l, v in zip(self.numbers.tolist(), ids, labels, self.x.tolist())])


@contextlib.contextmanager
def open_csv(source: str) -> Iterator[IO[str]]:
    """A CSV file (or ``-``: stdin) as text whose bytes that are not UTF-8 stay in the cells as
    surrogate escapes: :func:`read_batches` then reports the row and column they are in and
    carries on, where strict decoding ended the whole run at the first such byte."""
    if source == "-":
        handle = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape", newline="")
        try:
            yield handle
        finally:
            handle.detach()  # stdin stays open
    else:
        try:
            handle = open(source, newline="", encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise InputError(f"cannot read {source}: {exc.strerror}") from exc
        with handle:
            yield handle


def _not_utf8(cells: list[str], positions: Sequence[int]) -> tuple[int, str] | None:
    """The first of the cells at ``positions`` that held bytes that are not UTF-8: its position, and its
    text with those bytes as escapes (cells the run does not use may hold anything)."""
    for position in positions:
        try:
            cells[position].encode("utf-8")
        except UnicodeEncodeError:
            return position, cells[position].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return None


def open_rows(handle: IO[str], source: str) -> tuple[list[str], Iterator[list[str]]]:
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{source}: empty input, expected a header row") from None
    except csv.Error as exc:
        raise InputError(f"{source}: row 1: {exc}") from exc
    bad = _not_utf8(header, range(len(header)))
    if bad:
        raise InputError(f"{source}: row 1 (the header): '{bad[1]}' is not UTF-8 text", hint="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    return [name.strip() for name in header], reader  # `a, b, c` names columns a, b and c


def read_batches(
    reader: Iterator[list[str]], header: list[str], columns: TabularColumns, batch_size: int, source: str
) -> Iterator[RowBatch]:
    """Parse rows in batches; a bad row becomes a Row with an error, never an exception."""
    header = [name.strip() for name in header]  # as TabularColumns.resolve matched them
    index = {name: header.index(name) for name in header}
    feature_index = [index[name] for name in columns.features]
    used = feature_index + [index[name] for name in (columns.id_col, columns.label_col) if name]
    batch = RowBatch()
    number = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            number += 1
            batch.rows.append(Row(number, str(number), None, None, f"{source}: row {number}: {exc}"))
            continue
        number += 1
        if not cells or all(not c.strip() for c in cells):
            continue  # blank line
        bad = _not_utf8(cells, [i for i in used if i < len(cells)])
        if bad:
            error = f"{source}: row {number}, column '{header[bad[0]]}': '{bad[1]}' is not UTF-8 text (save the file as UTF-8)"
            batch.rows.append(Row(number, str(number - 1), None, None, error))
            continue
        row_id = cells[index[columns.id_col]] if columns.id_col and len(cells) > index[columns.id_col] else str(number - 1)
        label = cells[index[columns.label_col]] if columns.label_col and len(cells) > index[columns.label_col] else None
        if len(cells) != len(header):
            batch.rows.append(Row(number, row_id, label, None, f"{source}: row {number}: has {len(cells)} cells, the header has {len(header)}"))
        else:
            values, error = [], None
            for name, position in zip(columns.features, feature_index):
                text = cells[position].strip()
                if not text:
                    error = f"{source}: row {number}, column '{name}': missing value"
                    break
                try:
                    value = float(text)
                except ValueError:
                    error = f"{source}: row {number}, column '{name}': '{text}' is not a number"
                    break
                if not math.isfinite(value):
                    error = f"{source}: row {number}, column '{name}': '{text}' is not a finite number"
                    break
                values.append(value)
            batch.rows.append(Row(number, row_id, label, values if error is None else None, error))
        if len(batch.rows) >= batch_size:
            yield batch
            batch = RowBatch()
    if batch.rows:
        yield batch
