"""The Ray executor (issue 30): the rows of a table explained by a pool of Ray actors, written as a plain run writes them.

The driver reads the table with the plain run's reader (so every bad cell is still named by its row and column), hands
each batch to Ray as one block, and writes the results back in input order. Each actor builds its own explainer from a
small picklable factory (the model and composite are loaded from their files once per actor; no model is shipped).
Actors are created with ``max_restarts``/``max_task_retries``: a killed actor is replaced and its batch redone, and the
driver keeps one result per batch number, so no row is lost or written twice.

ray is an extra (``pip install 'lrpcli[ray]'``), imported only here and only when a Ray run starts.
"""

from __future__ import annotations

import json
import os
from typing import IO, Any, Callable

import numpy as np

from ..data import columnar
from ..data.tabular import ColumnBatch
from ..errors import InputError, LrpError, ModelError, UsageError
from .choices import Failure, TargetSpec, resolve_device, resolve_dtype
from .rows import RowReport, RowWriter, _Discard, _explain_columns, row_columns

INSTALL_HINT = "pip install 'lrpcli[ray]'"
#: a killed or crashed actor is restarted this often, and its batch retried, before the run fails
RETRIES = 3


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


class RowActor:
    """One actor of the pool: its explainer is built once, then each call explains the batches in a block."""

    def __init__(self, make_explainer: Callable[[], Any], columns: Any, options: dict[str, Any]):
        self.explainer = make_explainer()
        self.columns, self.options = columns, options

    def __call__(self, block: Any) -> dict[str, Any]:
        import pyarrow as pa

        out: dict[str, list[Any]] = {"seq": [], "payload": [], "failures": [], "notes": []}
        o = self.options
        seqs = block.column("seq").to_numpy()
        for seq in dict.fromkeys(seqs.tolist()):  # a block may hold several input batches
            part = block.filter(pa.array(seqs == seq))
            labels = part.column("label").combine_chunks() if self.columns.label_col else None
            x = np.stack(part.column("x").to_numpy(zero_copy_only=False)).astype(np.float64).reshape(part.num_rows, -1)
            import torch

            batch = ColumnBatch(part.column("number").to_numpy(), part.column("id").combine_chunks(), labels, torch.from_numpy(x))
            report = RowReport()
            data = _explain_columns(
                self.explainer, batch, self.columns, o["targets"], o["classes"], resolve_device(o["device"]),
                resolve_dtype(o["dtype"]), o["init"], report, o["source"], o["top_k"],
            )
            sink = pa.BufferOutputStream()
            table = pa.table({k: v for k, v in data.items() if v is not None})
            with pa.ipc.new_stream(sink, table.schema) as stream:
                stream.write_table(table)
            out["seq"].append(seq)
            out["payload"].append(sink.getvalue().to_pybytes())
            out["failures"].append(json.dumps([[f.input, f.message] for f in report.failures]))
            out["notes"].append(json.dumps(report.notes))
        return out


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
    progress: Callable[[int], None] | None = None,
) -> RowReport:
    """:func:`lrpcli.runs.rows.explain_rows` for a file at ``path``, explained on Ray by ``workers`` actors (default 1),
    each building its explainer with ``make_explainer()``. ``model`` is the driver's model, used only to check the
    table's width before anything starts. Writes the same CSV, Parquet or Arrow output as the plain run."""
    if fmt == "jsonl":
        raise UsageError("--ray writes rows as csv, parquet or arrow", hint="drop --ray for JSON lines, or give -o FILE.csv / FILE.parquet")
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
        blocks = []
        for batch in table.batches(columns, batch_size):
            if not isinstance(batch, ColumnBatch):  # rows with a bad cell: named here, as the plain run names them
                if shard is not None:
                    batch.rows = [row for row in batch.rows if shard.owns(str(row.number))]
                for row in batch.rows:
                    if row.error is not None:
                        if on_error == "fail":
                            raise InputError(row.error)
                        report.failures.append(Failure(f"row {row.number}", row.error))
                report.rows_in += len(batch.rows)
                batch = ColumnBatch.from_rows(batch.good, columns)
            else:
                if shard is not None:
                    batch = batch.take(np.array([shard.owns(str(n)) for n in batch.numbers.tolist()], dtype=bool))
                report.rows_in += len(batch)
            if len(batch):  # into the object store at once: the driver keeps a reference per batch, not the rows
                blocks.append(ray.put(_block(len(blocks), batch)))
    finally:
        table.close()
    fields = RowWriter(_Discard(), "jsonl", columns, top_k, classes)
    bulk = columnar.ArrowWriter(output, fmt, fields.fields, fields.relevance_names, classes, resolve_dtype(dtype).itemsize <= 4)
    if blocks:
        options = dict(targets=targets, classes=classes, device=device, dtype=dtype, init=init, source=source, top_k=top_k)
        results = ray.data.from_arrow_refs(blocks).map_batches(
            RowActor,
            fn_constructor_args=(make_explainer, columns, options),
            batch_size=None,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=max(1, workers or 1)),
            num_cpus=1,
            max_restarts=RETRIES,
            max_task_retries=RETRIES,
        )
        pending: dict[int, tuple[bytes, str, str]] = {}
        following = 0
        for part in _surfacing(results.iter_batches(batch_size=None, batch_format="pyarrow")):
            for seq, payload, failures, notes in zip(*(part.column(k).to_pylist() for k in ("seq", "payload", "failures", "notes"))):
                pending.setdefault(seq, (payload, failures, notes))  # a batch redone after a restart counts once
            while following in pending:  # written in input order, as soon as the batches before have come
                payload, failures, notes = pending.pop(following)
                following += 1
                data = pa.ipc.open_stream(payload).read_all()
                rows = data.num_rows
                report.failures += [Failure(name, message) for name, message in json.loads(failures)]
                report.notes += [n for n in json.loads(notes) if n not in report.notes]
                if on_error == "fail" and report.failures:
                    raise InputError(report.failures[-1].message)
                bulk.write({name: _plain(data.column(name)) for name in fields.fields if name in data.column_names})
                report.rows_out += rows
                if progress:
                    progress(rows)
        if following != len(blocks):
            raise ModelError(f"the Ray run returned {following} of {len(blocks)} batches", hint="run again; report it if it repeats")
    bulk.close()
    return report


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
                    _, found, non_finite = _explain_batch(self.explainer, good, self.targets, self.classes, o, device, dtype, o.out, _Inline(), report, self.preprocessing)
                except LrpError:
                    raise
                except RuntimeError as exc:
                    why = _first_line(exc)
                    failed += [(item.name, f"{item.path}: the model does not take a {'x'.join(map(str, shape))} input ({why}); pass --size H,W to resize images") for item, _, _ in good]
                    continue
                rows += found
                failed += [(item.name, message) for item, message in non_finite]
            out["seq"].append(seq)
            out["result"].append(pickle.dumps((rows, failed, report.notes, report.explained)))
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
    ``workers`` actors (default 1) that write the heatmaps and arrays; the driver keeps the manifest and writes one
    summary.csv (rows in input order) and run.json at the end. ``explainer`` is the driver's (for run.json)."""
    import pickle
    import time

    from ..outputs import output_errors, write_json, write_summary
    from .image_files import input_roots, remove_stale_temporaries, result_settings, run_json
    from .images import RunReport
    from .shards import Manifest, fingerprint, output_lock
    from ..render.heatmaps import Scale

    options.scale = Scale.parse(options.scale)
    if options.resume or options.shard is not None or options.scale.found_by_run or options.layers:
        raise UsageError("--ray does not take --resume, --shard, --layers or --scale shared (found by the run) yet", hint="drop --ray for them, or give the scale: --scale shared:VALUE")
    out = options.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out} is a file: image results go to a folder")
    ray = require_ray()
    connect(ray)
    started = time.perf_counter()
    run_info = {**(run_info or {}), **input_roots(items, out)}
    report = RunReport(out=out, total=len(items))
    with output_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        with output_lock(out, None):
            manifest = Manifest(out, None)
            manifest.open(options.model_sha256, fingerprint(explainer.composite.to_dict()), len(items), resume=False, overwrite=options.overwrite, settings=result_settings(preprocessing, options, targets, classes))
            try:
                remove_stale_temporaries(out, items, targets)
                starts = list(range(0, len(items), options.batch_size))
                rows: list[dict[str, Any]] = []
                if starts:
                    results = ray.data.from_items([{"seq": k, "start": s} for k, s in enumerate(starts)]).map_batches(
                        ImageActor,
                        fn_constructor_args=(make_explainer, ray.put(items), preprocessing, options, targets, classes),
                        batch_size=1,
                        batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=max(1, workers or 1)),
                        num_cpus=1,
                        max_restarts=RETRIES,
                        max_task_retries=RETRIES,
                    )
                    pending: dict[int, bytes] = {}
                    following = 0
                    for part in _surfacing(results.iter_batches(batch_size=None, batch_format="numpy")):
                        for seq, result in zip(part["seq"].tolist(), part["result"]):
                            pending.setdefault(seq, result)  # a batch redone after a restart counts once
                        while following in pending:
                            found, failed, notes, explained = pickle.loads(pending.pop(following))
                            following += 1
                            report.notes += [n for n in notes if n not in report.notes]
                            for name, message in failed:
                                manifest.record([name], "failed")
                                if options.on_error == "fail":
                                    raise InputError(message)
                                report.failures.append(Failure(name, message))
                            manifest.record(dict.fromkeys(row["input"] for row in found), "done")
                            rows += found
                            report.explained += explained
                            if progress:
                                progress(min(options.batch_size, len(items) - starts[following - 1]))
                    if following != len(starts):
                        raise ModelError(f"the Ray run returned {following} of {len(starts)} batches", hint="run again; report it if it repeats")
            finally:
                manifest.close()
            by_input: dict[str, list[dict[str, Any]]] = {}
            for row in rows:  # in input order, as a plain run writes them (a batch of mixed sizes is explained per size)
                by_input.setdefault(row["input"], []).append(row)
            rows = [row for item in items for row in by_input.get(item.name, [])]
            report.rows = rows
            if options.heatmaps and options.scale.mode == "shared":
                report.scale = options.scale.value
            write_summary(out / "summary.csv", rows)
            report.seconds = time.perf_counter() - started
            info = run_json(explainer, preprocessing, options, targets, report, run_info)
            info["runs"] = manifest.runs()
            write_json(out / "run.json", info)
    return report
