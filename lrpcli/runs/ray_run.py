"""The Ray executor (issue 30): the rows of a table, or a list of images, explained by a pool of Ray actors and written
as a plain run writes them.

Rows: the driver cuts the file into blocks of ``batch_size`` rows without holding them (byte ranges of a CSV or
JSON-lines file found by counting newlines, row ranges of a Parquet file) and each actor reads its blocks with the plain
run's readers (every bad cell still named by its row and column, numbered as in the whole file), so the driver's memory
does not grow with the table. Stdin and a CSV with quotes (whose records may span lines) are read by the driver. Each
actor builds its own explainer from a small picklable factory (the model and composite are loaded from their files once
per actor; no model is shipped). Actors are created with ``max_restarts``/``max_task_retries``: a killed actor is
replaced and its block redone, and the driver keeps one result per block number, so no row is lost or written twice.
With ``-o FILE`` each finished block is also kept in ``FILE.ray-parts/`` until the run ends, so that ``--resume``
after an interrupted run explains only the blocks it lacks.

ray is an extra (``pip install 'lrpcli[ray]'``), imported only here and only when a Ray run starts.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

from ..data import columnar
from ..data.tabular import ColumnBatch
from ..errors import InputError, LrpError, ModelError, UsageError
from ..outputs import write_atomic
from .choices import Failure, TargetSpec, resolve_device, resolve_dtype
from .rows import RowReport, RowWriter, _Discard, _explain_columns, row_columns
from .shards import fingerprint

INSTALL_HINT = "pip install 'lrpcli[ray]'"
#: a killed or crashed actor is restarted this often, and its batch retried, before the run fails
RETRIES = 3
SCAN = 1 << 22  # bytes of a CSV/JSON-lines file read at a time while cutting it into blocks


def require_ray() -> Any:
    """The ray module, or a ModelError naming the extra (as the hf and onnx extras report theirs)."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ModelError("--ray needs Ray (ray[data]), which is not installed", hint=INSTALL_HINT) from exc
    return ray


def connect(ray: Any) -> None:
    """Join the cluster RAY_ADDRESS names (Ray's own convention), else start a local one (once per process)."""
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
    import logging
    import warnings

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the library never prints: no bars, no plan at each start
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")  # max_restarts= as map_batches takes it


def actor_options(ray: Any, workers: int | None, device: str) -> dict[str, Any]:
    """The map_batches options of an actor pool: ``workers`` actors (default 1), each restarted and its batch
    retried RETRIES times; a GPU per actor for ``--device cuda`` (refused at once where the cluster has fewer GPUs than
    actors: Ray would wait for them forever), and for ``auto`` where it has enough, else one CPU each."""
    size = max(1, workers or 1)
    gpus = float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else None  # None: not joined yet
    name = (device or "auto").lower()
    if name.startswith("cuda") and gpus is not None and gpus < size:
        raise UsageError(
            f"--device {device} with --ray asks each of the {size} actor(s) for a GPU, and the Ray cluster has {gpus:g}",
            hint="use --device cpu (or auto), fewer --workers, or a cluster with GPUs (RAY_ADDRESS)",
        )
    wants_gpu = name.startswith("cuda") or (name == "auto" and gpus is not None and gpus >= size)
    resources = {"num_gpus": 1} if wants_gpu else {"num_cpus": 1}
    return {"compute": ray.data.ActorPoolStrategy(size=size), **resources, "max_restarts": RETRIES, "max_task_retries": RETRIES}


def plan_blocks(path: str, batch_size: int) -> list[dict[str, Any]] | None:
    """Blocks of ``batch_size`` rows (the plain run's batches), each as the part of the file an actor reads: a byte
    range of a CSV or JSON-lines file (found by counting newlines, one chunk of the file in memory at a time) or a row
    range of a Parquet file, with the rows before it (``done``) so that its rows are numbered as in the whole file.
    None where the driver must read the rows itself: stdin, and a CSV with a quote (a record may span lines) or a
    lone carriage return (csv's line end, not ours)."""
    if path == "-":
        return None
    if columnar.is_parquet(path):
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as handle:
            total = handle.metadata.num_rows
        return [{"seq": k, "kind": "parquet", "start": s, "stop": min(s + batch_size, total), "done": 0} for k, s in enumerate(range(0, total, batch_size))]
    from ..data.jsonl import is_jsonl

    jsonl = is_jsonl(path)
    starts: list[int] = []
    with open(path, "rb") as handle:
        base = 0
        if not jsonl:
            header = handle.readline()
            body = header[:-2] if header.endswith(b"\r\n") else header
            if b'"' in header or b"\r" in body:  # as CsvSource: the careful reader, for all of the file
                return None
            base = len(header)
        starts.append(base)
        lines = 0
        while True:
            chunk = handle.read(SCAN)
            if not chunk:
                break
            if chunk.endswith(b"\r"):
                chunk += handle.read(1)
            if not jsonl and (b'"' in chunk or chunk.count(b"\r") != chunk.count(b"\r\n")):
                return None
            ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
            counts = lines + 1 + np.arange(len(ends))
            starts += (base + ends[counts % batch_size == 0] + 1).tolist()
            lines += len(ends)
            base += len(chunk)
    if starts[-1] >= base:  # the file ends with a whole block
        starts.pop()
    first = 0 if jsonl else 1
    kind = "jsonl" if jsonl else "csv"
    return [
        {"seq": k, "kind": kind, "start": start, "stop": (starts[k + 1] if k + 1 < len(starts) else base), "done": first + k * batch_size}
        for k, start in enumerate(starts)
    ]


def read_block(path: str, source: str, block: dict[str, Any], columns: Any, batch_size: int) -> Any:
    """The batches of one planned block, read by the plain run's reader (bad cells named by their row in the file)."""
    from ..data.chunks import LineChunks

    table = columnar.open_source(path, source)  # the header (CSV) or first object (JSON lines), as the plain run reads it
    try:
        if block["kind"] == "parquet":
            table.rows = (block["start"], block["stop"])
        else:
            with open(path, "rb") as handle:
                handle.seek(block["start"])
                data = handle.read(block["stop"] - block["start"])
            table.lines, table.done = LineChunks(io.BytesIO(data)), block["done"]
        yield from table.batches(columns, batch_size)
    finally:
        table.close()


class RowActor:
    """One actor of the pool: its explainer is built once, then each call explains blocks (read from the file by
    their plan, or handed over by the driver) and returns each block's result columns and failures."""

    def __init__(self, make_explainer: Callable[[], Any], columns: Any, options: dict[str, Any]):
        self.explainer = make_explainer()
        self.columns, self.options = columns, options

    def _batches(self, block: Any) -> Any:
        """(seq, batches) of each block in ``block`` (a table of plans, or of rows the driver read)."""
        import pyarrow as pa
        import torch

        o = self.options
        if "x" not in block.column_names:
            for plan in block.to_pylist():
                yield plan["seq"], read_block(o["path"], o["source"], plan, self.columns, o["batch_size"])
            return
        seqs = block.column("seq").to_numpy()
        for seq in dict.fromkeys(seqs.tolist()):
            part = block.filter(pa.array(seqs == seq))
            labels = part.column("label").combine_chunks() if self.columns.label_col else None
            x = np.stack(part.column("x").to_numpy(zero_copy_only=False)).astype(np.float64).reshape(part.num_rows, -1)
            yield seq, [ColumnBatch(part.column("number").to_numpy(), part.column("id").combine_chunks(), labels, torch.from_numpy(x))]

    def __call__(self, block: Any) -> dict[str, Any]:
        out: dict[str, list[Any]] = {"seq": [], "payload": [], "meta": []}
        for seq, batches in self._batches(block):
            payload, meta = self._explain(batches)
            out["seq"].append(seq)
            out["payload"].append(payload)
            out["meta"].append(json.dumps(meta))
        return out

    def _explain(self, batches: Any) -> tuple[bytes, dict[str, Any]]:
        """One block's result columns as an Arrow IPC stream (b"" for none), and its rows in, failures and notes."""
        import pyarrow as pa

        o, shard = self.options, self.options["shard"]
        report = RowReport()
        tables = []
        for batch in batches:
            if not isinstance(batch, ColumnBatch):  # rows with a bad cell, each named as the plain run names it
                if shard is not None:
                    batch.rows = [row for row in batch.rows if shard.owns(str(row.number))]
                report.rows_in += len(batch.rows)
                report.failures += [Failure(f"row {row.number}", row.error) for row in batch.rows if row.error is not None]
                batch = ColumnBatch.from_rows(batch.good, self.columns)
            else:
                if shard is not None:
                    batch = batch.take(np.array([shard.owns(str(n)) for n in batch.numbers.tolist()], dtype=bool))
                report.rows_in += len(batch)
            if len(batch):
                data = _explain_columns(
                    self.explainer, batch, self.columns, o["targets"], o["classes"], resolve_device(o["device"]),
                    resolve_dtype(o["dtype"]), o["init"], report, o["source"], o["top_k"],
                )
                tables.append(pa.table({k: v for k, v in data.items() if v is not None}))
        payload = b""
        if tables and sum(t.num_rows for t in tables):
            sink = pa.BufferOutputStream()
            table = pa.concat_tables(tables)
            with pa.ipc.new_stream(sink, table.schema) as stream:
                stream.write_table(table)
            payload = sink.getvalue().to_pybytes()
        meta = {"rows_in": report.rows_in, "failures": [[f.input, f.message] for f in report.failures], "notes": report.notes}
        return payload, meta


def _block(seq: int, batch: ColumnBatch) -> Any:
    import pyarrow as pa

    n = len(batch)
    x = batch.x.numpy().astype(np.float64)
    columns = {
        "seq": pa.array(np.full(n, seq, dtype=np.int64)),
        "number": pa.array(batch.numbers.astype(np.int64)),
        "id": batch.ids,
        "label": batch.labels if batch.labels is not None else pa.nulls(n, pa.string()),
        "x": pa.array(list(x)) if n else pa.array([], pa.list_(pa.float64())),
    }
    return pa.table(columns)


def _surfacing(parts: Any) -> Any:
    """``parts``, with an lrpcli error raised in an actor re-raised as itself (not as Ray's wrapper of it)."""
    try:
        yield from parts
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, LrpError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if cause is None:
            raise
        raise cause from None


def _plain(column: Any) -> Any:
    """A result column as the plain run hands it to the writer: numbers as NumPy (so float32 runs write float32)."""
    import pyarrow as pa

    array = column.combine_chunks()
    return array.to_numpy() if pa.types.is_floating(array.type) or pa.types.is_integer(array.type) else array


class Parts:
    """``FILE.ray-parts/``: each finished block's results (``<seq>.arrow``) and rows in and failures (``<seq>.json``,
    written last: a block is finished when it exists), and ``settings.json``. A run starts it over; ``--resume`` keeps
    what it holds when the settings are the same (else refused); the finished run removes it."""

    def __init__(self, folder: Path, settings: dict[str, Any], resume: bool):
        self.folder = folder
        mark = {"fingerprint": fingerprint(settings), "settings": settings}
        found = None
        if resume and (folder / "settings.json").is_file():
            try:
                found = json.loads((folder / "settings.json").read_text())
            except (OSError, ValueError):
                found = None
        if found is not None and found.get("fingerprint") != mark["fingerprint"]:
            before = found.get("settings", {})
            changed = sorted(k for k in set(before) | set(settings) if json.dumps(before.get(k), default=str) != json.dumps(settings.get(k), default=str))
            raise UsageError(
                f"--resume: the finished blocks in {folder} were made with other settings ({', '.join(changed) or 'unknown'} changed)",
                hint="run again with the same options, or without --resume to start over",
            )
        if found is None:
            ours = (folder / "settings.json").is_file()
            if folder.is_symlink() or (folder.exists() and not ours and (not folder.is_dir() or any(folder.iterdir()))):
                raise UsageError(f"{folder} exists and is not a Ray run's parts folder", hint="move it away: a --ray run keeps its finished blocks there")
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / "settings.json", json.dumps(mark, default=str).encode("utf-8"))
        self.done = {int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()}

    def add(self, seq: int, payload: bytes, meta: str) -> None:
        if payload:
            write_atomic(self.folder / f"{seq}.arrow", payload)
        write_atomic(self.folder / f"{seq}.json", meta.encode("utf-8"))

    def get(self, seq: int) -> tuple[bytes, str]:
        meta = (self.folder / f"{seq}.json").read_text()
        arrow = self.folder / f"{seq}.arrow"
        return (arrow.read_bytes() if arrow.is_file() else b""), meta

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def explain_rows_ray(
    make_explainer: Callable[[], Any],
    model: Any,
    path: str,
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
    init: Any = "value",
    shard: Any = None,
    workers: int | None = None,
    parts: Path | None = None,
    resume: bool = False,
    settings: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RowReport:
    """:func:`lrpcli.runs.rows.explain_rows` for a file at ``path``, explained on Ray by ``workers`` actors (default 1),
    each building its explainer with ``make_explainer()``. ``model`` is the driver's model, used only to check the
    table's width before anything starts. Writes the same CSV, JSON-lines, Parquet or Arrow output as the plain run. With
    ``parts`` (a folder beside the output) finished blocks are kept there until the end, and ``resume`` explains only
    the blocks it lacks (``settings``: what must be the same for that, beside the run's own options)."""
    if resume and parts is None:
        raise UsageError("--resume with --ray needs -o FILE: the finished blocks are kept beside it (FILE.ray-parts/)", hint="give -o FILE.csv or FILE.parquet")
    ray = require_ray()
    connect(ray)
    import pyarrow as pa

    report = RowReport()
    table = columnar.open_source(path, source)
    try:
        columns = row_columns(
            table.header, model, source, features=features, drop=drop, id_col=id_col, label_col=label_col, mean=mean,
            std=std, optional=optional_columns,
        )
        plan = plan_blocks(path, batch_size)
        if plan is None and resume and path == "-":
            raise UsageError("--resume with --ray reads the input again: give a file, not stdin")
        where = os.path.abspath(path) if path != "-" else path  # the same file on every node, not relative to an actor's folder
        options = dict(targets=targets, classes=classes, device=device, dtype=dtype, init=init, source=source, top_k=top_k, path=where, batch_size=batch_size, shard=shard)
        stat = os.stat(path) if path != "-" else None
        key = {**(settings or {}), "input": where, "input_size": stat and stat.st_size, "input_mtime_ns": stat and stat.st_mtime_ns, "columns": columns}
        key.update({k: options[k] for k in ("targets", "classes", "dtype", "init", "top_k", "batch_size", "shard")})
        kept = Parts(parts, key, resume) if parts is not None else None
        finished = kept.done if kept else set()
        inline: dict[int, dict[str, Any]] = {}  # the rows in and bad rows of each batch the driver read
        if plan is not None:
            blocks = [ray.data.from_items([b for b in plan if b["seq"] not in finished])] if len(finished) < len(plan) else []
            count = len(plan)
        else:  # read here: each batch into the object store at once (a reference per batch held, not the rows)
            refs, count = [], 0
            for batch in table.batches(columns, batch_size):
                if count not in finished:
                    batch, inline[count] = _driver_batch(batch, columns, shard)
                    if len(batch):
                        refs.append(ray.put(_block(count, batch)))
                count += 1
            blocks = [ray.data.from_arrow_refs(refs)] if refs else []
    finally:
        table.close()
    report.skipped = len(finished)
    fields = RowWriter(_Discard(), "jsonl", columns, top_k, classes)
    if fmt == "jsonl":  # row by row, as the plain run writes JSON lines
        bulk: Any = _JsonLines(RowWriter(output, "jsonl", columns, top_k, classes))
    else:
        bulk = _Columns(columnar.ArrowWriter(output, fmt, fields.fields, fields.relevance_names, classes, resolve_dtype(dtype).itemsize <= 4), fields.fields)
    pending: dict[int, tuple[bytes, str]] = {}
    following = 0

    def drain() -> None:
        """Write the blocks that are next in input order (new, or kept by an earlier run)."""
        nonlocal following
        while following < count and (following in pending or following in finished):
            payload, meta = pending.pop(following) if following in pending else kept.get(following)
            following += 1
            found = json.loads(meta)
            report.rows_in += found["rows_in"]
            report.failures += [Failure(name, message) for name, message in found["failures"]]
            report.notes += [n for n in found["notes"] if n not in report.notes]
            if on_error == "fail" and report.failures:
                raise InputError(report.failures[-1].message)
            if payload:
                data = pa.ipc.open_stream(payload).read_all()
                bulk.write(data)
                report.rows_out += data.num_rows
            if progress:
                progress(found["rows_in"])

    def receive(seq: int, payload: bytes, meta: str) -> None:
        if seq in inline:  # the bad rows the driver found before the actor's own failures, as a plain run lists them
            found, known = json.loads(meta), inline.pop(seq)
            meta = json.dumps({**found, "rows_in": known["rows_in"], "failures": known["failures"] + found["failures"]})
        pending[seq] = (payload, meta)
        if kept is not None:
            kept.add(seq, payload, meta)

    for seq in [seq for seq, known in inline.items() if not known["good"]]:  # no row for an actor
        receive(seq, b"", json.dumps({"rows_in": 0, "failures": [], "notes": []}))
    drain()
    if blocks:
        results = blocks[0].map_batches(
            RowActor, fn_constructor_args=(make_explainer, columns, options), batch_size=1 if plan is not None else None,
            batch_format="pyarrow", **actor_options(ray, workers, device),
        )
        for part in _surfacing(results.iter_batches(batch_size=None, batch_format="pyarrow")):
            for seq, payload, meta in zip(*(part.column(k).to_pylist() for k in ("seq", "payload", "meta"))):
                if seq not in pending and seq >= following:  # a block redone after a restart counts once
                    receive(seq, payload, meta)
            drain()
    if following != count:
        raise ModelError(f"the Ray run returned {following} of {count} blocks", hint="run again; report it if it repeats")
    bulk.close()
    if kept is not None:
        kept.remove()
    return report


class _Columns:
    """Result tables handed to the plain run's ArrowWriter (CSV, Parquet, Arrow) as it takes them."""

    def __init__(self, writer: Any, fields: list[str]):
        self.writer, self.fields = writer, fields

    def write(self, table: Any) -> None:
        self.writer.write({name: _plain(table.column(name)) for name in self.fields if name in table.column_names})

    def close(self) -> None:
        self.writer.close()


class _JsonLines:
    """Result tables written as the plain run's JSON lines: each row as its row path builds it, by its RowWriter."""

    def __init__(self, writer: RowWriter):
        self.writer = writer

    def write(self, table: Any) -> None:
        names = self.writer.relevance_names
        rows = []
        for row in table.to_pylist():
            rows.append({k: v for k, v in row.items() if k not in names and k not in ("top_positive", "top_negative")} | {"_relevance": [row[n] for n in names]})
        self.writer.write(rows)

    def close(self) -> None:
        pass


def _driver_batch(batch: Any, columns: Any, shard: Any) -> tuple[ColumnBatch, dict[str, Any]]:
    """A batch the driver read: its good rows (this shard's), and its rows in and bad rows named as a plain run names them."""
    if not isinstance(batch, ColumnBatch):
        if shard is not None:
            batch.rows = [row for row in batch.rows if shard.owns(str(row.number))]
        failures = [[f"row {row.number}", row.error] for row in batch.rows if row.error is not None]
        rows_in = len(batch.rows)
        batch = ColumnBatch.from_rows(batch.good, columns)
        return batch, {"rows_in": rows_in, "failures": failures, "good": len(batch)}
    if shard is not None:
        batch = batch.take(np.array([shard.owns(str(n)) for n in batch.numbers.tolist()], dtype=bool))
    return batch, {"rows_in": len(batch), "failures": [], "good": len(batch)}


class ImageActor:
    """One actor of an image run: its explainer built once; each call decodes and explains whole batches of the
    input list and writes their heatmaps and arrays itself (atomically, as the plain run does)."""

    def __init__(self, make_explainer: Callable[[], Any], items: Any, preprocessing: Any, options: Any, targets: Any, classes: Any):
        import ray

        self.explainer = make_explainer()
        items = ray.get(items) if isinstance(items, ray.ObjectRef) else items  # the input list, shipped once per run
        self.items, self.preprocessing, self.options, self.targets, self.classes = items, preprocessing, options, targets, classes

    def __call__(self, block: dict[str, Any]) -> dict[str, Any]:
        import pickle

        from ..data.images import ImageDataset
        from .images import RunReport, _explain_batch, _first_line, _Inline

        o = self.options
        device, dtype = resolve_device(o.device), resolve_dtype(o.dtype)
        out: dict[str, list[Any]] = {"seq": [], "result": []}
        for seq, start in zip(block["seq"].tolist(), block["start"].tolist()):
            items = self.items[start : start + o.batch_size]
            data = ImageDataset(items, self.preprocessing, originals=o.heatmaps and o.heatmap_size == "input")
            report = RunReport(out=o.out, total=len(items))
            rows: list[dict[str, Any]] = []
            failed: list[tuple[str, str]] = []
            groups: dict[tuple[int, ...], list[Any]] = {}
            for k in range(len(items)):
                _, tensor, pixels, error = data[k]
                if error is not None:
                    failed.append((items[k].name, error))
                else:
                    groups.setdefault(tuple(tensor.shape), []).append((items[k], tensor, pixels))
            for shape, good in groups.items():  # images of other sizes are tried as their own batch, as in a plain run
                try:
                    written, found, non_finite = _explain_batch(self.explainer, good, self.targets, self.classes, o, device, dtype, o.out, _Inline(), report, self.preprocessing)
                    for future in written:  # written at once (_Inline): a file that could not be written fails the run
                        future.result()
                except LrpError:
                    raise
                except RuntimeError as exc:
                    why = _first_line(exc)
                    failed += [(item.name, f"{item.path}: the model does not take a {'x'.join(map(str, shape))} input ({why}); pass --size H,W to resize images") for item, _, _ in good]
                    continue
                rows += found
                failed += [(item.name, message) for item, message in non_finite]
            out["seq"].append(seq)
            out["result"].append(pickle.dumps((rows, failed, report.notes, report.explained, str(device))))
        return out


def explain_images_ray(
    make_explainer: Callable[[], Any],
    explainer: Any,
    items: list[Any],
    preprocessing: Any,
    options: Any,
    targets: TargetSpec,
    classes: list[str] | None = None,
    run_info: dict[str, Any] | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Any:
    """:func:`lrpcli.runs.images.explain_images` on Ray: batches of ``options.batch_size`` inputs explained by
    ``workers`` actors (default 1) that write the heatmaps, arrays and ``--layers`` maps; the driver keeps the lock,
    the manifest and the partial summary (so ``--resume`` skips what a run finished, as in a plain run), and writes one
    summary.csv (rows in input order) and run.json at the end. ``--shard K/N`` takes the shard's inputs, as a plain
    run does. ``--scale shared`` is found from the arrays on disk after the last batch (the largest |R| of all of
    them) and the heatmaps drawn again, as in a plain run. ``explainer`` is the driver's (for run.json)."""
    import dataclasses
    import pickle
    import time

    from ..outputs import SummaryLog, output_errors, write_json, write_summary
    from ..render.heatmaps import Scale
    from .image_files import input_roots, result_settings, run_json
    from .images import RunReport, inputs_to_do, render_shared
    from .shards import Manifest, output_lock, suffix

    options.scale = Scale.parse(options.scale)
    if options.scale.found_by_run and options.heatmaps and not options.arrays:
        raise UsageError(
            "--scale shared finds the run's largest |relevance| in its relevance arrays, and --no-arrays writes none",
            hint="drop --no-arrays, or give the scale: --scale shared:VALUE",
        )
    out = options.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file: image results go to a folder")
    ray = require_ray()
    connect(ray)
    started = time.perf_counter()
    run_info = {**(run_info or {}), **input_roots(items, out)}
    if options.shard is not None:
        items = options.shard.select(items)
    sfx = suffix(options.shard)
    report = RunReport(out=out, total=len(items))
    with output_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        with output_lock(out, options.shard):
            manifest = Manifest(out, options.shard)
            manifest.open(options.model_sha256, fingerprint(explainer.composite.to_dict()), len(items), resume=options.resume, overwrite=options.overwrite, settings=result_settings(preprocessing, options, targets, classes))
            partial, log = out / f"summary{sfx}.partial.csv", None
            try:
                todo, done = inputs_to_do(out, items, targets, sfx, options.resume, partial, report, progress)
                log = SummaryLog(partial)
                starts = list(range(0, len(todo), options.batch_size))
                new_rows: dict[str, list[dict[str, Any]]] = {}
                devices: set[str] = set()  # where the actors explained (a head node may have no GPU)
                if starts:
                    results = ray.data.from_items([{"seq": k, "start": s} for k, s in enumerate(starts)]).map_batches(
                        ImageActor,
                        fn_constructor_args=(make_explainer, ray.put(todo), preprocessing, options, targets, classes),
                        batch_size=1,
                        batch_format="numpy",
                        **actor_options(ray, workers, options.device),
                    )
                    received: set[int] = set()
                    for part in _surfacing(results.iter_batches(batch_size=None, batch_format="numpy")):
                        for seq, result in zip(part["seq"].tolist(), part["result"]):
                            if seq in received:
                                continue  # a batch redone after a restart counts once
                            received.add(seq)
                            found, failed, notes, explained, device = pickle.loads(result)
                            devices.add(device)
                            report.notes += [n for n in notes if n not in report.notes]
                            for name, message in failed:
                                manifest.record([name], "failed")
                                if options.on_error == "fail":
                                    raise InputError(message)
                                report.failures.append(Failure(name, message))
                            log.add(found)  # its files are on disk: safe to resume from
                            manifest.record(dict.fromkeys(row["input"] for row in found), "done")
                            for row in found:
                                new_rows.setdefault(row["input"], []).append(row)
                            report.explained += explained
                            if progress:
                                progress(min(options.batch_size, len(todo) - starts[seq]))
                    if len(received) != len(starts):
                        raise ModelError(f"the Ray run returned {len(received)} of {len(starts)} batches", hint="run again; report it if it repeats")
            finally:
                manifest.close()
                if log is not None:
                    log.close()
            rows: list[dict[str, Any]] = []
            for item in items:  # in input order, as a plain run writes them (a batch of mixed sizes is explained per size)
                rows += done.get(item.name, []) or new_rows.get(item.name, [])
            report.rows = rows
            if options.heatmaps and options.scale.mode == "shared":
                report.scale = options.scale.value
                if options.scale.found_by_run:  # the largest |R| of every array on disk, then each heatmap redrawn
                    report.scale = render_shared(out, rows, {item.name: item for item in items}, preprocessing, options, resolve_device("cpu"), report)
            write_summary(out / f"summary{sfx}.csv", rows)
            partial.unlink(missing_ok=True)
            report.seconds = time.perf_counter() - started
            info = run_json(explainer, preprocessing, dataclasses.replace(options, device="cpu"), targets, report, run_info)
            info["device"] = ", ".join(sorted(devices)) or str(options.device)  # the actors', not this node's
            info["runs"] = manifest.runs()
            write_json(out / f"run{sfx}.json", info)
    return report


class _Rows:
    """A writer that keeps the rows it is handed (an actor's texts, returned to the driver)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.rows += rows


class TextActor:
    """One actor of a text run: its explainer and tokenizer built once; each call explains whole batches of texts as
    the plain run does (:func:`lrpcli.runs.texts.explain_texts` on one batch) and returns their rows and report."""

    def __init__(self, make_explainer: Callable[[], Any], make_tokenizer: Callable[[], Any], options: dict[str, Any]):
        self.explainer, self.tokenizer, self.options = make_explainer(), make_tokenizer(), options

    def __call__(self, block: dict[str, Any]) -> dict[str, Any]:
        import pickle

        from .texts import explain_texts

        out: dict[str, list[Any]] = {"seq": [], "result": []}
        for seq, records in zip(block["seq"].tolist(), block["records"]):
            records = pickle.loads(records)
            rows = _Rows()
            report = explain_texts(self.explainer, records, self.tokenizer, [rows], batch_size=max(1, len(records)), on_error="skip", **self.options)
            out["seq"].append(seq)
            out["result"].append(pickle.dumps((rows.rows, report)))
        return out


def explain_texts_ray(
    make_explainer: Callable[[], Any],
    make_tokenizer: Callable[[], Any],
    records: Any,
    writers: list[Any],
    *,
    batch_size: int = 32,
    on_error: str = "skip",
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    **options: Any,
) -> Any:
    """:func:`lrpcli.runs.texts.explain_texts` on Ray: the driver reads the texts and hands each batch of
    ``batch_size`` to a pool of ``workers`` actors (default 1); each batch's rows come back and are handed to every
    writer in input order, so the output equals a plain run's. ``options`` are explain_texts' (targets, classes,
    top_k, device, dtype, init, mask, shard)."""
    import pickle

    from .texts import TextReport, batches

    ray = require_ray()
    connect(ray)
    items = [{"seq": seq, "records": pickle.dumps(batch)} for seq, batch in enumerate(batches(records, batch_size))]
    report = TextReport()
    if not items:
        return report
    dataset = ray.data.from_items(items).map_batches(
        TextActor, fn_constructor_args=(make_explainer, make_tokenizer, options), batch_size=1, batch_format="numpy",
        **actor_options(ray, workers, options.get("device", "auto")),
    )
    count = len(items)
    del items
    pending: dict[int, bytes] = {}
    following = 0
    for part in _surfacing(dataset.iter_batches(batch_size=None, batch_format="numpy")):
        for seq, result in zip(part["seq"].tolist(), part["result"]):
            if seq >= following:
                pending.setdefault(seq, result)  # a batch redone after a restart counts once
        while following in pending:
            rows, found = pickle.loads(pending.pop(following))
            following += 1
            report.texts_in += found.texts_in
            report.truncated += found.truncated
            for line in found.notes:
                report.note(line)
            if on_error == "fail" and found.failures:
                raise InputError(found.failures[0].message)
            report.failures += found.failures
            for writer in writers:
                writer.write(rows)
            report.rows_out += len(rows)
            if progress:
                progress(found.texts_in)
    if following != count:
        raise ModelError(f"the Ray run returned {following} of {count} batches", hint="run again; report it if it repeats")
    return report
