"""Tabular explanations for shell pipelines: CSV rows in, relevance rows out, in batches.

Rows are read, explained and written batch by batch (output is flushed after each), so
memory stays flat for millions of rows and output appears while input still arrives.
"""

from __future__ import annotations

import contextlib
import csv
import json
from dataclasses import dataclass, field
from typing import IO, Any, Callable

import numpy as np
import torch

from ..data import columnar
from ..data.tabular import RowBatch, TabularColumns, open_rows, read_batches
from ..engine.explainer import Explainer
from ..errors import InputError
from ..engine.weights import model_tensors
from .choices import Failure, TargetSpec, non_finite_reasons, resolve_device, resolve_dtype

FORMATS = ("csv", "jsonl", "parquet", "arrow")
FIXED = ("id", "label", "prediction", "prediction_label", "target", "target_label", "logit", "relevance_sum", "top_positive", "top_negative")


@dataclass
class RowReport:
    rows_in: int = 0
    rows_out: int = 0
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: int = 0  # batches a resumed Ray run found finished (lrpcli.runs.ray_run)


def expected_features(model: Any) -> int | None:
    """The input width of a dense model's first layer, if it has one (to check CSVs early)."""
    first = next((t for t in model_tensors(model) if t.is_floating_point()), None)
    return int(first.shape[1]) if first is not None and first.ndim == 2 else None


def top_features(features: list[str], relevance: list[float], k: int, positive: bool) -> list[tuple[str, float]]:
    pairs = sorted(zip(features, relevance), key=lambda p: p[1], reverse=positive)
    return [(name, value) for name, value in pairs[:k] if (value > 0 if positive else value < 0)]


class RowWriter:
    """Writes result rows as CSV (with a header) or JSON lines; flushes per batch."""

    def __init__(self, handle: IO[str], fmt: str, columns: TabularColumns, top_k: int | None, classes: list[str] | None):
        self.handle = handle
        self.fmt = fmt
        prefix = "relevance_" if set(columns.features) & set(FIXED) else ""
        self.relevance_names = [prefix + name for name in columns.features]
        self.features = columns.features
        fields = ["id"] + (["label"] if columns.label_col else []) + ["prediction"]
        fields += ["prediction_label"] if classes else []
        fields += ["target"] + (["target_label"] if classes else []) + ["logit"]
        fields += self.relevance_names + ["relevance_sum"]
        fields += ["top_positive", "top_negative"] if top_k else []
        self.fields = fields
        self.top_k = top_k
        self.writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n", extrasaction="ignore") if fmt == "csv" else None
        if self.writer is not None:
            self.writer.writeheader()
            handle.flush()

    def top(self, relevance: list[float], positive: bool) -> list[tuple[str, float]]:
        return top_features(self.features, relevance, self.top_k, positive)

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            relevance = row.pop("_relevance")
            for name, value in zip(self.relevance_names, relevance):
                row[name] = value
            if self.top_k:
                row["top_positive"] = self.top(relevance, True)
                row["top_negative"] = self.top(relevance, False)
            if self.writer is not None:
                if self.top_k:
                    for key in ("top_positive", "top_negative"):
                        row[key] = ";".join(f"{name}={value:.6g}" for name, value in row[key])
                self.writer.writerow({k: (format(v, ".9g") if type(v) is float else v) for k, v in row.items()})
            else:
                self.handle.write(json.dumps({k: row[k] for k in self.fields if k in row}) + "\n")
        self.handle.flush()


def explain_rows(
    explainer: Explainer,
    source_handle: IO[str] | None,
    source: str,
    output: IO[str],
    *,
    fmt: str = "csv",
    features: list[str] | None = None,
    drop: list[str] | None = None,
    id_col: str | None = None,
    label_col: str | None = None,
    optional_columns: tuple[str, ...] = (),
    mean: list[float] | None = None,
    std: list[float] | None = None,
    targets: TargetSpec = TargetSpec(),
    classes: list[str] | None = None,
    top_k: int | None = None,
    batch_size: int = 1024,
    on_error: str = "skip",
    device: str = "auto",
    dtype: str = "float32",
    init: str = "value",
    shard: Any = None,
    progress: Callable[[int], None] | None = None,
    path: str | None = None,
) -> RowReport:
    """Explain every row of a table and write one result row per input row and target.

    The rows come from ``path`` (a CSV, JSON-lines or Parquet file, or ``-`` for stdin: CSV, or JSON
    lines when its first line opens an object) or else from ``source_handle`` (CSV text, read row by
    row). Rows from ``path`` are read, and CSV, Parquet or Arrow results written, column-wise by pyarrow
    (:mod:`lrpcli.data.columnar`); a chunk of rows with a bad cell in it is re-read by the careful
    reader, so every error still names its row (or line) and column."""
    with contextlib.ExitStack() as stack:
        if path is not None:
            table = columnar.open_source(path, source)
            stack.callback(table.close)
            header = table.header
            batches = lambda columns: table.batches(columns, batch_size)  # noqa: E731
        else:
            header, reader = open_rows(source_handle, source)
            batches = lambda columns: read_batches(reader, header, columns, batch_size, source)  # noqa: E731
        return _explain_rows(
            explainer, header, batches, source, output, fast=path is not None,
            fmt=fmt, features=features, drop=drop, id_col=id_col, label_col=label_col, optional_columns=optional_columns,
            mean=mean, std=std, targets=targets, classes=classes, top_k=top_k, on_error=on_error, device=device,
            dtype=dtype, init=init, shard=shard, progress=progress,
        )


def row_columns(header, model, source, *, features, drop, id_col, label_col, mean, std, optional) -> TabularColumns:
    """The table's columns resolved, and checked against the model's input width (shared with the Ray run)."""
    columns = TabularColumns.resolve(
        header,
        features=features,
        drop=drop or [],
        id_col=id_col,
        label_col=label_col,
        mean=mean,
        std=std,
        source=source,
        optional=optional,
    )
    width = expected_features(model)
    if width is not None and width != len(columns.features):
        raise InputError(
            f"{source}: {len(columns.features)} feature columns ({', '.join(columns.features[:8])}"
            f"{', ...' if len(columns.features) > 8 else ''}) but the model takes {width}",
            hint="choose the model's columns with --features, or leave out others with --drop / --id-col / --label-col"
            + ("; for texts give --tokenizer and --text-col" if source.lower().endswith((".jsonl", ".ndjson")) else ""),
        )
    return columns


def _explain_rows(
    explainer, header, batches, source, output, *, fast, fmt, features, drop, id_col, label_col, optional_columns,
    mean, std, targets, classes, top_k, on_error, device, dtype, init, shard, progress,
) -> RowReport:
    columns = row_columns(header, explainer.model, source, features=features, drop=drop, id_col=id_col, label_col=label_col, mean=mean, std=std, optional=optional_columns)
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    writer = RowWriter(output, fmt, columns, top_k, classes) if fmt == "jsonl" or not (fast or fmt in ("parquet", "arrow")) else None
    bulk = None
    if writer is None:  # column-wise output: CSV formatted by pyarrow, Parquet, or an Arrow IPC stream
        fields = RowWriter(_Discard(), "jsonl", columns, top_k, classes)
        bulk = columnar.ArrowWriter(output, fmt, fields.fields, fields.relevance_names, classes, torch_dtype.itemsize <= 4)
    report = RowReport()
    for batch in batches(columns):
        if isinstance(batch, columnar.ColumnBatch):
            if shard is not None:
                batch = batch.take(np.array([shard.owns(str(n)) for n in batch.numbers.tolist()], dtype=bool))
            if bulk is None:
                batch = batch.to_rows()  # JSON lines: today's writer
            else:
                report.rows_in += len(batch)
                if len(batch):
                    data = _explain_columns(explainer, batch, columns, targets, classes, torch_device, torch_dtype, init, report, source, top_k)
                    if on_error == "fail" and report.failures:
                        raise InputError(report.failures[-1].message)
                    bulk.write(data)
                    report.rows_out += len(data["id"])
                if progress:
                    progress(len(batch))
                continue
        if shard is not None:  # rows by their row number: every row in exactly one shard
            batch.rows = [row for row in batch.rows if shard.owns(str(row.number))]
        report.rows_in += len(batch.rows)
        for row in batch.rows:
            if row.error is not None:
                if on_error == "fail":
                    raise InputError(row.error)
                report.failures.append(Failure(f"row {row.number}", row.error))
        failed = len(report.failures)
        if batch.good and bulk is not None:
            data = _explain_columns(explainer, columnar.ColumnBatch.from_rows(batch.good, columns), columns, targets, classes, torch_device, torch_dtype, init, report, source, top_k)
            if on_error == "fail" and len(report.failures) > failed:
                raise InputError(report.failures[-1].message)
            bulk.write(data)
            report.rows_out += len(data["id"])
        elif batch.good:
            rows = _explain(explainer, batch, columns, targets, classes, torch_device, torch_dtype, init, report, source)
            if on_error == "fail" and len(report.failures) > failed:
                raise InputError(report.failures[-1].message)
            writer.write(rows)
            report.rows_out += len(rows)
        if progress:
            progress(len(batch.rows))
    if bulk is not None:
        bulk.close()
    return report


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def _explain_columns(explainer, batch, columns, targets, classes, device, dtype, init, report, source, top_k) -> dict[str, Any]:
    """:func:`_explain` column-wise: the result columns of a batch whose rows all parsed."""
    import pyarrow as pa

    x = batch.tensor(columns).to(device=device, dtype=dtype)
    if targets.mode in ("pred", "index"):
        result = explainer.explain(x, None if targets.mode == "pred" else int(targets.index), init=init)
        rows = np.arange(len(batch))
        chosen = result.targets.detach().cpu().numpy().astype(np.int64) if torch.is_tensor(result.targets) else np.array(result.targets, dtype=np.int64)
    else:
        picks = targets.choose(explainer.forward(x))
        rows = np.array([i for i, row in enumerate(picks) for _ in row], dtype=np.int64)
        chosen = np.array([t for row in picks for t in row], dtype=np.int64)
        result = explainer.explain(x[torch.from_numpy(rows).to(device)], torch.from_numpy(chosen).to(device), init=init)
    for note in result.notes:
        if note not in report.notes:
            report.notes.append(note)
    n = len(rows)
    logits_t = result.outputs.detach().double().cpu().reshape(n, -1)
    relevance_t = result.relevance.detach().double().cpu().reshape(n, -1)
    keep = np.ones(n, dtype=bool)
    if not (torch.isfinite(logits_t).all() and torch.isfinite(relevance_t).all()):
        seen: set[int] = set()  # rows with NaN/inf logits or relevance fail, named, instead of writing NaN
        for r, why in enumerate(non_finite_reasons(result, chosen.tolist())):
            if why:
                keep[rows == rows[r]] = False
                if rows[r] not in seen:
                    seen.add(int(rows[r]))
                    number = int(batch.numbers[rows[r]])
                    report.failures.append(Failure(f"row {number}", f"{source}: row {number}: {why}"))
    logits, relevance = logits_t.numpy()[keep], relevance_t.numpy()[keep]
    rows, chosen = rows[keep], chosen[keep]
    single = logits.shape[1] == 1
    predictions = logits[:, 0] if single else logits.argmax(1).astype(np.int64)
    take = pa.array(rows)
    data: dict[str, Any] = {
        "id": batch.ids.take(take),
        "label": batch.labels.take(take) if batch.labels is not None else None,
        "prediction": predictions,
        "target": chosen,
        "logit": logits[np.arange(len(rows)), chosen] if len(rows) else np.zeros(0),
        "relevance_sum": relevance_t.sum(1).numpy()[keep],
    }
    prefix = "relevance_" if set(columns.features) & set(FIXED) else ""
    for k, name in enumerate(columns.features):
        data[prefix + name] = np.ascontiguousarray(relevance[:, k])
    if classes:
        names = np.array(list(classes) + [""], dtype=object)
        data["prediction_label"] = pa.array([""] * len(rows)) if single else pa.array(names[np.minimum(predictions, len(classes))], pa.string())
        data["target_label"] = pa.array(names[np.minimum(chosen, len(classes))], pa.string())
    if top_k:
        for key, positive in (("top_positive", True), ("top_negative", False)):
            data[key] = top_features_bulk(columns.features, relevance, top_k, positive)
    return data


def _six_digits(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to 6 significant digits (the row path's ``.6g``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = np.floor(np.log10(np.abs(values)))
    scale = 10.0 ** (5 - np.where(np.isfinite(exponent), exponent, 0))
    return np.round(values * scale) / scale


def top_features_bulk(features: list[str], relevance: np.ndarray, k: int, positive: bool):
    """:func:`top_features` for every row of ``relevance`` at once, as the text ``name=value;...``: the
    same features in the same order (ties by column order), values to 6 significant digits, written by
    pyarrow in their shortest form (0.0000294503 where the row path writes 2.94503e-05)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    order = np.argsort(-relevance if positive else relevance, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(relevance, order, 1)
    kept = values > 0 if positive else values < 0  # a prefix of each row: values are sorted
    names = pa.array(features, pa.string())
    pieces = []
    for j in range(order.shape[1]):
        text = pc.binary_join_element_wise(pc.take(names, pa.array(order[:, j])), pc.cast(pa.array(_six_digits(values[:, j])), pa.string()), "=")
        if j:
            pieces.append(pc.if_else(pa.array(kept[:, j]), ";", ""))
        pieces.append(pc.if_else(pa.array(kept[:, j]), text, ""))
    if not pieces:
        return pa.array([""] * len(relevance), pa.string())
    # (no nulls: pyarrow 26's null_handling="skip" drops rows that are null throughout)
    return pc.binary_join_element_wise(*pieces, "") if len(pieces) > 1 else pieces[0]


def _explain(explainer, batch: RowBatch, columns, targets, classes, device, dtype, init, report, source) -> list[dict[str, Any]]:
    x = batch.tensor(columns).to(device=device, dtype=dtype)
    good = batch.good
    if targets.mode in ("pred", "index"):
        result = explainer.explain(x, None if targets.mode == "pred" else int(targets.index), init=init)
        pairs = [(i, int(t)) for i, t in enumerate(result.targets)]
        results = [(pairs, result)]
    else:
        chosen = targets.choose(explainer.forward(x))
        pairs = [(i, t) for i, row in enumerate(chosen) for t in row]
        index = torch.tensor([i for i, _ in pairs], device=device)
        result = explainer.explain(x[index], torch.tensor([t for _, t in pairs], device=device), init=init)
        results = [(pairs, result)]
    for note in result.notes:
        if note not in report.notes:
            report.notes.append(note)
    rows: list[dict[str, Any]] = []
    for pairs, result in results:
        bad: dict[int, str] = {}  # rows with NaN/inf logits or relevance fail, named, instead of writing NaN
        for (i, _), why in zip(pairs, non_finite_reasons(result, [target for _, target in pairs])):
            if why and i not in bad:
                bad[i] = why
                report.failures.append(Failure(f"row {good[i].number}", f"{source}: row {good[i].number}: {why}"))
        logits_t = result.outputs.detach().double().cpu()
        logits_t = logits_t.reshape(logits_t.shape[0], -1)
        relevance_t = result.relevance.detach().double().cpu()
        single = logits_t.shape[1] == 1
        # one conversion per batch: per-row tensor indexing costs more than the LRP itself here
        logits, relevance = logits_t.tolist(), relevance_t.tolist()
        sums = relevance_t.sum(1).tolist()
        predictions = [row[0] for row in logits] if single else logits_t.argmax(1).tolist()
        for r, (i, target) in enumerate(pairs):
            if i in bad:
                continue
            prediction = predictions[r]
            row = {
                "id": good[i].id,
                "label": good[i].label,
                "prediction": prediction,
                "target": target,
                "logit": logits[r][target],
                "relevance_sum": sums[r],
                "_relevance": relevance[r],
            }
            if classes:
                row["prediction_label"] = "" if single else (classes[prediction] if prediction < len(classes) else "")
                row["target_label"] = classes[target] if target < len(classes) else ""
            rows.append(row)
    return rows
