"""The report page of a CSV-rows run: ``rel.report.html`` beside ``-o rel.csv`` (or ``--report FILE``).

Built from the relevance output file itself (CSV, JSON lines, Parquet or an Arrow IPC stream), read
in one streaming pass of bounded memory: the mean |relevance| and mean signed relevance of every
feature are summed exactly over all result rows; a fixed-size uniform reservoir sample of rows
(Algorithm R, a fixed seed so that a rebuilt page equals the original) feeds the spread chart and
the table of rows. The page says when it shows a sample.

The output file holds no run metadata, so the command passes what it knows (model, composite,
versions) as ``run``; a page rebuilt by ``lrp report rel.csv`` carries the run over from the page it
replaces, or says that it is unknown.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError
from ..outputs import is_regular_file, refuse_inputs_as_outputs, write_output
from ..render.charts import data_uri, figure
from .page import finite_number, render_page

SAMPLE_SIZE = 2000  # rows kept for the spread chart and the table
CHART_FEATURES = 30  # features drawn in the charts (the table lists all)
CHUNK = 8192  # rows per streaming step: small enough that a page of 20,000 rows and of 2,000,000 peak alike
PAGE_SIZE = 100
TOP = 3  # features for and against shown per row
#: columns of a result row that are not a feature's relevance (lrpcli.runs.rows.FIXED)
FIXED = ("id", "label", "prediction", "prediction_label", "target", "target_label", "logit", "relevance_sum", "top_positive", "top_negative")
META = ("id", "label", "prediction", "prediction_label", "target", "target_label")
ROW_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet", ".pq", ".arrow", ".arrows")


def report_path_for(output: Path) -> Path:
    """Where the page of an output file goes by default: ``rel.csv`` -> ``rel.report.html`` beside it."""
    output = Path(output)
    return output.with_name(output.stem + ".report.html")


def feature_columns(names: list[str]) -> list[str]:
    """The relevance columns of a result file: every column that is not one of the fixed ones."""
    return [n for n in names if n not in FIXED]


# ---------------------------------------------------------------- reading the output file in chunks


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".arrow", ".arrows"):
        return "arrow"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    with open(path, "rb") as handle:  # a CSV, or JSON lines under another name
        first = handle.read(1)
    return "jsonl" if first == b"{" else "csv"


def read_chunks(path: Path, fmt: str | None = None) -> Iterator[tuple[list[str], dict[str, Any]]]:
    """(feature names, columns) per chunk of the result file: features as float64 arrays, the rest as lists or Arrow arrays."""
    path = Path(path)
    fmt = fmt or _format_of(path)
    try:
        if fmt == "csv":
            yield from _csv_chunks(path)
        elif fmt == "jsonl":
            yield from _jsonl_chunks(path)
        else:
            yield from _arrow_chunks(path, fmt)
    except (ValueError, KeyError, TypeError, OSError, csv.Error) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: not a relevance output of `lrp explain` on rows ({exc})", hint="give the -o FILE of `lrp explain MODEL rows.csv`") from exc


def _columns(names: list[str], path: Path) -> list[str]:
    if {"position", "token", "relevance"} <= set(names):
        raise InputError(f"{path}: token rows of a text run (--format csv)", hint="rebuild a text run's page from its JSONL output (the default format)")
    features = feature_columns(names)
    if "relevance_sum" not in names or not features:
        raise InputError(f"{path}: no relevance columns (relevance_sum and one column per feature)", hint="give the -o FILE of `lrp explain MODEL rows.csv`")
    return features


def _csv_chunks(path: Path):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file", hint="give the -o FILE of `lrp explain MODEL rows.csv`")
        features = _columns(header, path)
    yield from _arrow_csv_chunks(path, header, features)  # pyarrow's streaming reader


def _arrow_csv_chunks(path: Path, header: list[str], features: list[str]):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    numbers = set(features) | {"relevance_sum", "logit"}
    types = {name: (pa.float64() if name in numbers else pa.string()) for name in header}
    reader = pacsv.open_csv(
        str(path),
        # small blocks: the streaming reader reads many blocks ahead, so its memory follows the block size
        read_options=pacsv.ReadOptions(block_size=1 << 18, use_threads=False),
        convert_options=pacsv.ConvertOptions(column_types=types, include_columns=[n for n in header if n in numbers or n in META], strings_can_be_null=False),
    )
    for batch in reader:
        columns: dict[str, Any] = {}
        for name in batch.schema.names:
            column = batch.column(name)
            if name in numbers:
                columns[name] = column.to_numpy(zero_copy_only=False).astype(np.float64)
            else:
                columns[name] = column  # kept in Arrow: only the sampled rows become Python strings
        yield features, columns


def _jsonl_chunks(path: Path):
    features = None
    kinds: dict[str, Any] = {}
    with open(path, "rb") as handle:
        while True:
            raw = [line for _, line in zip(range(CHUNK), handle) if line.strip()]
            if not raw:
                return
            lines = None
            if features is None:
                lines = [json.loads(line) for line in raw]
                features = _columns(list(lines[0]), path)
                kinds = {name: type(lines[0].get(name)) for name in META if name in lines[0]}
            columns = _arrow_json_columns(b"".join(raw), features, kinds) if lines is None else None
            if columns is None:  # the json module: the first chunk, or a chunk pyarrow refuses
                lines = lines if lines is not None else [json.loads(line) for line in raw]
                columns = {}
                for name in features + ["relevance_sum", "logit"]:
                    columns[name] = np.array([np.nan if row.get(name) is None else float(row[name]) for row in lines])
                for name in kinds:
                    columns[name] = ["" if row.get(name) is None else str(row[name]) for row in lines]
            yield features, columns


def _arrow_json_columns(chunk: bytes, features: list[str], kinds: dict[str, Any]) -> dict[str, Any] | None:
    """A chunk of result lines read by pyarrow (several times faster than the json module), or None."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    types = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    fields = [(name, pa.float64()) for name in features + ["relevance_sum", "logit"]]
    fields += [(name, types.get(kind, pa.string())) for name, kind in kinds.items()]
    try:
        table = pj.read_json(
            io.BytesIO(chunk),
            read_options=pj.ReadOptions(use_threads=False, block_size=len(chunk) + 1),
            parse_options=pj.ParseOptions(explicit_schema=pa.schema(fields), unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    columns: dict[str, Any] = {}
    for name in features + ["relevance_sum", "logit"]:
        columns[name] = table.column(name).to_numpy().astype(np.float64)  # nulls become NaN
    for name in kinds:
        columns[name] = pc.fill_null(pc.cast(table.column(name).combine_chunks(), pa.string()), "")
    return columns


def _arrow_chunks(path: Path, fmt: str):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if fmt == "parquet":
        batches = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False).iter_batches(batch_size=CHUNK, use_threads=False)
    else:
        batches = iter(pa.ipc.open_stream(pa.OSFile(str(path), "rb")))
    features = None
    for batch in batches:
        names = batch.schema.names
        if features is None:
            features = _columns(names, path)
        columns: dict[str, Any] = {}
        for name in features + ["relevance_sum", "logit"]:
            if name in names:
                columns[name] = batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        for name in META:
            if name in names:
                columns[name] = pc.fill_null(pc.cast(batch.column(name), pa.string()), "")
        yield features, columns


# ---------------------------------------------------------------- the streaming pass


class RowStats:
    """Exact per-feature sums over all rows, and a uniform reservoir sample of rows (Algorithm R)."""

    def __init__(self, features: list[str], sample_size: int = SAMPLE_SIZE, seed: int = 0):
        self.features = features
        self.sample_size = sample_size
        self.rng = np.random.default_rng(seed)
        self.rows = 0
        self.finite = np.zeros(len(features), np.int64)
        self.abs_sum = np.zeros(len(features), np.float64)
        self.sum = np.zeros(len(features), np.float64)
        self.sample = np.zeros((0, len(features)), np.float64)
        self.meta: list[dict[str, Any]] = []
        self.order: list[int] = []  # each sampled row's position in the file
        self.targets: set[str] = set()
        self.predictions: set[str] = set()

    def add(self, columns: dict[str, Any]) -> None:
        rel = np.column_stack([np.asarray(columns[f], np.float64) for f in self.features])
        n = len(rel)
        ok = np.isfinite(rel)
        self.finite += ok.sum(0)
        self.abs_sum += np.where(ok, np.abs(rel), 0.0).sum(0)
        self.sum += np.where(ok, rel, 0.0).sum(0)
        for key, store in (("target_label", self.targets), ("target", self.targets), ("prediction_label", self.predictions), ("prediction", self.predictions)):
            if key in columns and len(store) < 1000:
                store.update(_distinct(columns[key]))  # the classes seen, for the page's filters
                break
        start, k = self.rows, self.sample_size
        take = min(n, max(0, k - start))  # the reservoir fills first
        picks: list[tuple[int, int]] = [(start + i, i) for i in range(take)]  # (slot, index in chunk)
        if take < n:
            seen = np.arange(start + take, start + n) + 1  # rows seen so far, this one included
            slots = (self.rng.random(n - take) * seen).astype(np.int64)
            for i in np.nonzero(slots < k)[0]:  # in file order: a later row replaces an earlier one in the same slot
                picks.append((int(slots[i]), take + int(i)))
        if picks:
            grow = min(k, start + n) - len(self.sample)
            if grow > 0:
                self.sample = np.vstack([self.sample, np.zeros((grow, len(self.features)))])
                self.meta.extend({} for _ in range(grow))
                self.order.extend(0 for _ in range(grow))
            keys = [key for key in columns if key in META or key in ("logit", "relevance_sum")]
            chosen = [i for _, i in picks]
            values = {key: _pick(columns[key], chosen) for key in keys}
            for p, (slot, i) in enumerate(picks):
                self.sample[slot] = rel[i]
                self.meta[slot] = {key: values[key][p] for key in keys}
                self.order[slot] = start + i
        self.rows += n

    def mean_abs(self) -> np.ndarray:
        return np.divide(self.abs_sum, self.finite, out=np.full(len(self.features), np.nan), where=self.finite > 0)

    def mean(self) -> np.ndarray:
        return np.divide(self.sum, self.finite, out=np.full(len(self.features), np.nan), where=self.finite > 0)


def _distinct(values: Any) -> list[str]:
    """The distinct values of a column (a list, or an Arrow array)."""
    if isinstance(values, (list, tuple)):
        return list(set(values))
    if isinstance(values, np.ndarray):
        return list(set(values.tolist()))
    import pyarrow.compute as pc

    return pc.unique(values).to_pylist()


def _pick(values: Any, rows: list[int]) -> list[Any]:
    """``values[i]`` for each i in rows, from a list, an array or an Arrow array."""
    if isinstance(values, (list, tuple)):
        return [values[i] for i in rows]
    if isinstance(values, np.ndarray):
        return values[rows].tolist()
    import pyarrow as pa

    return values.take(pa.array(rows, pa.int64())).to_pylist()


def row_stats(path: Path, sample_size: int = SAMPLE_SIZE) -> RowStats:
    """One streaming pass over a result file."""
    stats = None
    for features, columns in read_chunks(path):
        if stats is None:
            stats = RowStats(features, sample_size)
        stats.add(columns)
    if stats is None:
        raise InputError(f"{path}: no result rows", hint="give the -o FILE of `lrp explain MODEL rows.csv`")
    return stats


# ---------------------------------------------------------------- charts and the page


def _bar_chart(names: list[str], values: np.ndarray) -> str:
    fig = figure(5.6, 0.8 + 0.26 * len(names))
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    ax.barh(y, values, color="#3b6fb6")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel("mean |relevance| over all rows")
    ax.margins(y=0.01)
    fig.tight_layout()
    return data_uri(fig)


def _swarm_chart(names: list[str], columns: np.ndarray) -> str:
    """Each sampled row's signed relevance per feature, spread vertically by the local density (a beeswarm's shape)."""
    fig = figure(5.6, 0.8 + 0.26 * len(names))
    ax = fig.add_subplot()
    rng = np.random.default_rng(1)
    for row, values in enumerate(columns.T):
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        y0 = len(names) - 1 - row
        counts, edges = np.histogram(values, bins=40)
        density = counts[np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(counts) - 1)] / max(1, counts.max())
        y = y0 + (rng.random(len(values)) * 2 - 1) * 0.38 * density
        ax.scatter(values, y, s=6, c=np.where(values > 0, "#c62828", "#1f4fd1"), linewidths=0, alpha=0.6)
    ax.axvline(0, color="#999", linewidth=0.8)
    ax.set_yticks(np.arange(len(names))[::-1], names, fontsize=8)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("signed relevance (each dot one sampled row)")
    fig.tight_layout()
    return data_uri(fig)


_RUN_SCRIPT = re.compile(r'<script type="application/json" id="run">(.*?)</script>', re.S)


def previous_run(page: Path) -> dict[str, Any] | None:
    """The run metadata of the page being replaced (a page carries it as inline JSON), if any. Only a
    regular file is read: a FIFO there would wait for a writer that never comes."""
    if not is_regular_file(page):
        return None
    try:
        text = Path(page).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    found = _RUN_SCRIPT.search(text)
    if not found:
        return None
    try:
        run = json.loads(found.group(1))  # tojson escapes <, >, & and ' as \u00XX: plain JSON
    except ValueError:
        return None
    return run if isinstance(run, dict) else None


def table_data(path: Path, run: dict[str, Any] | None = None, page: Path | None = None, sample_size: int = SAMPLE_SIZE) -> dict[str, Any]:
    """What the page shows, from the result file at ``path`` (one streaming pass)."""
    path = Path(path)
    stats = row_stats(path, sample_size)
    mean_abs, mean = stats.mean_abs(), stats.mean()
    order = sorted(range(len(stats.features)), key=lambda j: (-(mean_abs[j] if np.isfinite(mean_abs[j]) else -1), j))
    shown = order[:CHART_FEATURES]
    chart_names = [stats.features[j] for j in shown]
    sampled = len(stats.sample)
    by_file = sorted(range(sampled), key=lambda s: stats.order[s])
    rows = []
    for slot in by_file:
        rel, meta = stats.sample[slot], stats.meta[slot]
        ranked = sorted((v, stats.features[j]) for j, v in enumerate(rel) if np.isfinite(v))
        rows.append(
            {
                "n": stats.order[slot] + 1,
                "id": meta.get("id", ""),
                "label": meta.get("label"),
                "pred": meta.get("prediction_label") or meta.get("prediction", ""),
                "target": meta.get("target_label") or meta.get("target", ""),
                "logit": finite_number(meta.get("logit")),
                "sum": finite_number(meta.get("relevance_sum")),
                "for": [[f, float(v)] for v, f in reversed(ranked[-TOP:]) if v > 0],
                "against": [[f, float(v)] for v, f in ranked[:TOP] if v < 0],
            }
        )
    features = [
        {"name": stats.features[j], "mean_abs": finite_number(mean_abs[j]), "mean": finite_number(mean[j]), "rows": int(stats.finite[j])} for j in order
    ]
    known = run or None
    carried = False
    if known is None and page is not None:
        known = previous_run(page)
        carried = known is not None
    return {
        "title": f"lrp explain: {Path(str(known.get('model'))).name if known and known.get('model') else path.name}",
        "source": path.name,
        "run": known or {},
        "run_carried": carried,
        "total": stats.rows,
        "sampled": sampled,
        "is_sample": sampled < stats.rows,
        "features": features,
        "chart_features": len(shown),
        "bar_chart": _bar_chart(chart_names, np.array([mean_abs[j] for j in shown])) if shown else None,
        "swarm_chart": _swarm_chart(chart_names, stats.sample[:, shown]) if shown and sampled else None,
        "targets": sorted(str(t) for t in stats.targets),
        "rows_json": rows,
        "has_label": any(r["label"] not in (None, "") for r in rows),
        "page_size": PAGE_SIZE,
    }


def write_table_report(path: Path, page: Path | None = None, run: dict[str, Any] | None = None, sample_size: int = SAMPLE_SIZE) -> Path:
    """Write the page of the rows result file ``path`` (default: beside it, ``rel.report.html``) and return its path."""
    path = Path(path)
    page = Path(page) if page else report_path_for(path)
    refuse_inputs_as_outputs([("the page", page)], [("result file it shows", path)])
    data = table_data(path, run, page, sample_size)
    write_output(page, render_page("table.html.j2", **data).encode("utf-8"))  # --report FILE, or beside -o FILE
    return page
