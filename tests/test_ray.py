"""``lrp explain --ray`` (issue 30): the same rows as a plain run, nothing lost when an actor dies, and a message
naming the extra where Ray is missing.

The Ray tests need the extra (``pip install -c constraints.txt -e ".[test,ray]"``) and start one local cluster
(``ray.init(num_cpus=2)``) for the module; without Ray they are skipped, saying so. The missing-extra test runs
everywhere (it blocks ``import ray``).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from cli_support import lrp, refused

SAMPLE = Path(__file__).resolve().parents[1] / "sample_models" / "breast_cancer_mlp"
SPEC, ROWS = SAMPLE / "model.yaml", SAMPLE / "sample.csv"


def test_without_ray_the_message_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    refused(lrp("explain", SPEC, ROWS, "--ray", "-q", "-o", tmp_path / "r.csv"), 4, "needs Ray", "pip install 'lrpcli[ray]'")
    assert not (tmp_path / "r.csv").exists()


def test_ray_refuses_what_it_does_not_take(tmp_path):
    """--resume of rows keeps the finished blocks beside -o FILE: on stdout there is nowhere to keep them."""
    refused(lrp("explain", SPEC, ROWS, "--ray", "--resume", "-q"), 2, "--resume with --ray needs -o FILE")


def _batches_as_read(batches):
    """Each batch as plain data: its row numbers, ids, labels and features (ColumnBatch), or each row (RowBatch)."""
    from lrpcli.data.tabular import ColumnBatch

    out = []
    for batch in batches:
        if isinstance(batch, ColumnBatch):
            labels = batch.labels.to_pylist() if batch.labels is not None else None
            out.append(("columns", batch.numbers.tolist(), batch.ids.to_pylist(), labels, batch.x.tolist()))
        else:
            out.append(("rows", [(r.number, r.id, r.label, r.values, r.error) for r in batch.rows]))
    return out


@pytest.mark.parametrize("kind", ["csv", "crlf", "jsonl", "parquet", "quoted"])
def test_planned_blocks_read_as_the_plain_reader_reads_the_whole_file(tmp_path, kind):
    """The Ray executor cuts a file into blocks without reading its rows on the driver; each actor reads its blocks
    with the plain reader. Together the blocks must give the plain run's batches exactly: the same rows in the same
    batches, bad cells named by their row (or line) in the whole file, not in the block. A CSV with quotes is read on
    the driver (None)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from lrpcli.data import columnar
    from lrpcli.data.tabular import TabularColumns
    from lrpcli.runs.ray_run import plan_blocks, read_block

    rows = [[f"r{i}", str(i % 2), f"{i * 0.5}", f"{i - 3}"] for i in range(23)]
    rows[5][2] = "n/a"  # a bad cell in the second block (batch 4)
    rows[17][3] = "1e400"  # not finite
    path = tmp_path / f"t.{ 'jsonl' if kind == 'jsonl' else 'parquet' if kind == 'parquet' else 'csv'}"
    header = ["id", "label", "a", "b"]
    if kind == "jsonl":
        lines = [json.dumps(dict(zip(header, r))) for r in rows]
        lines[9] = "{not json"
        path.write_text("\n".join(lines[:12]) + "\n\n" + "\n".join(lines[12:]) + "\n")
    elif kind == "parquet":
        table = pa.table({name: [r[k] for r in rows] for k, name in enumerate(header)})
        pq.write_table(table, path, row_group_size=7)  # row groups cut across the batches of 4
    else:
        end = "\r\n" if kind == "crlf" else "\n"
        text = end.join(",".join(r) for r in [header] + rows)
        if kind == "quoted":
            text = text.replace("r3,", '"r3",')
        path.write_bytes(text.encode())  # no newline after the last row
    columns = TabularColumns.resolve(header, id_col="id", label_col="label", source=str(path))
    plain = columnar.open_source(str(path), "t")
    try:
        expected = _batches_as_read(plain.batches(columns, 4))
    finally:
        plain.close()
    plan = plan_blocks(str(path), 4)
    if kind == "quoted":
        assert plan is None
        return
    assert [b["seq"] for b in plan] == list(range(len(plan))) and len(plan) >= 6
    got = [batch for block in plan for batch in _batches_as_read(read_block(str(path), "t", block, columns, 4))]
    assert got == expected
    named = json.dumps(got)
    assert ("row 7" in named or "line 10" in named), named[:300]


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'lrpcli[ray]' to run the Ray tests")
    pytest.importorskip("ray.data", reason="ray.data is not installed: pip install 'lrpcli[ray]'")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def with_bad_row(tmp_path: Path) -> Path:
    """The sample with one cell that is not a number (row 7) and one value that overflows float32 to inf (row 12)."""
    rows = list(csv.reader(ROWS.open(newline="")))
    rows[6][3] = "n/a"
    rows[11][5] = "1e300"
    path = tmp_path / "bad.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return path


def test_parquet_rows_through_ray_equal_a_plain_run(ray, tmp_path):
    import pyarrow.parquet as pq

    plain = lrp("explain", SPEC, ROWS, "-q", "--no-report", "-b", "16", "-o", tmp_path / "plain.parquet")
    run = lrp("explain", SPEC, ROWS, "-q", "--no-report", "-b", "16", "--ray", "--workers", "2", "-o", tmp_path / "ray.parquet")
    assert plain.code == run.code == 0, (plain.describe(), run.describe())
    assert pq.read_table(tmp_path / "ray.parquet").equals(pq.read_table(tmp_path / "plain.parquet"))
    assert pq.read_table(tmp_path / "ray.parquet").num_rows == 100


def test_csv_rows_through_ray_equal_a_plain_run_failing_rows_included(ray, tmp_path):
    """The same bytes (rows in input order, the same float32 relevance texts, --top-k's columns), the same two rows
    failed and named, exit 5 in both."""
    bad = with_bad_row(tmp_path)
    plain = lrp("explain", SPEC, bad, "--no-report", "-b", "8", "--top-k", "3", "-o", tmp_path / "plain.csv")
    run = lrp("explain", SPEC, bad, "--no-report", "-b", "8", "--top-k", "3", "--ray", "--workers", "2", "-o", tmp_path / "ray.csv")
    assert plain.code == run.code == 5, (plain.describe(), run.describe())
    assert "row 7" in run.stderr and "2 of 100 row(s) failed" in run.stderr, run.describe()
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    assert len((tmp_path / "ray.csv").read_text().splitlines()) == 1 + 98


def test_a_csv_the_driver_reads_equals_a_plain_run(ray, tmp_path):
    """A CSV with quoted cells (a record may span lines: not cut into byte ranges) is read by the driver and its batches
    handed to the actors: the same bytes as a plain run, bad rows named in order, resumable like the others."""
    from lrpcli.runs.ray_run import plan_blocks

    rows = list(csv.reader(with_bad_row(tmp_path).open(newline="")))
    path = tmp_path / "quoted.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    assert plan_blocks(str(path), 8) is None
    plain = lrp("explain", SPEC, path, "--no-report", "-b", "8", "-o", tmp_path / "plain.csv")
    run = lrp("explain", SPEC, path, "--no-report", "-b", "8", "--ray", "--workers", "2", "-o", tmp_path / "ray.csv")
    assert plain.code == run.code == 5, (plain.describe(), run.describe())
    assert "row 7" in run.stderr and "2 of 100 row(s) failed" in run.stderr, run.describe()
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()


def test_json_lines_rows_through_ray_equal_a_plain_run(ray, tmp_path):
    """-o FILE.jsonl: the plain run's JSON lines byte for byte (its row path: --top-k's pairs, the failing rows named)."""
    bad = with_bad_row(tmp_path)
    plain = lrp("explain", SPEC, bad, "--no-report", "-b", "8", "--top-k", "3", "-o", tmp_path / "plain.jsonl")
    run = lrp("explain", SPEC, bad, "--no-report", "-b", "8", "--top-k", "3", "--ray", "--workers", "2", "-o", tmp_path / "ray.jsonl")
    assert plain.code == run.code == 5, (plain.describe(), run.describe())
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "plain.jsonl").read_bytes()
    assert len((tmp_path / "ray.jsonl").read_text().splitlines()) == 98


class SlowExplainer:
    """The sample's explainer, a little slow per batch, so that a test can kill an actor mid-run; each actor that
    builds one appends its process id to ``pids``."""

    def __init__(self, pids: str):
        from lrpcli.cli.ray_hooks import ExplainerFactory

        with open(pids, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        options = {"composite": None, "params": (), "arch": None, "arch_kwargs": None, "allow_pickle": False, "allow_code": False, "no_cache": True}
        self.inner = ExplainerFactory(str(SPEC), options, default="epsilon")()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def explain(self, *args, **kwargs):
        time.sleep(0.05)
        return self.inner.explain(*args, **kwargs)


def test_an_actor_killed_mid_run_changes_no_row(ray, tmp_path):
    import ray.cloudpickle

    from lrpcli.runs.ray_run import explain_rows_ray
    from lrpcli.runs.rows import explain_rows

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    import functools

    pids = tmp_path / "pids"
    explainer = SlowExplainer(str(tmp_path / "driver-pid"))
    kwargs = dict(batch_size=2, optional_columns=("id", "diagnosis"), id_col="id", label_col="diagnosis")
    from lrpcli.sources.files import load_spec

    spec = load_spec(SPEC)
    kwargs.update(features=spec.input["features"], mean=spec.input["mean"], std=spec.input["std"], classes=spec.classes)
    with (tmp_path / "plain.csv").open("w", newline="") as handle:
        explain_rows(explainer.inner, None, str(ROWS), handle, path=str(ROWS), **kwargs)
    killed = []

    def kill_one():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            if pids.exists() and pids.read_text().strip():
                time.sleep(0.5)  # some batches done (50 of them take 2.5 s), others not yet
                pid = int(pids.read_text().split()[0])
                os.kill(pid, 9)  # as the OOM killer or a lost node would
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one)
    killer.start()
    with (tmp_path / "ray.csv").open("w", newline="") as handle:
        report = explain_rows_ray(functools.partial(SlowExplainer, str(pids)), explainer.inner.model, str(ROWS), str(ROWS), handle, workers=1, **kwargs)
    killer.join()
    assert killed, "no actor was found to kill"
    assert len(pids.read_text().split()) == 2, "the killed actor was not replaced"
    assert report.rows_out == 100 and not report.failures
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()


def test_explain_dataset_gives_relevance_columns_equal_to_explain(ray):
    """The Python API: LRP-0 relevance equals gradient x input (the LRP-0 identity on a bias-free ReLU net), and the
    rows come back with the input columns beside prediction, target, logit and relevance."""
    import numpy as np
    import torch

    from lrpcli.ray import explain_dataset

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5, bias=False), torch.nn.ReLU(), torch.nn.Linear(5, 2, bias=False)).eval()
    x = torch.randn(40, 3, dtype=torch.float64)
    ds = ray.data.from_items([{"id": i, "a": float(r[0]), "b": float(r[1]), "c": float(r[2])} for i, r in enumerate(x)])
    rows = explain_dataset(ds, net.double(), "lrp_0", features=["a", "b", "c"], target=1, dtype="float64", batch_size=8, workers=2).take_all()
    rows.sort(key=lambda row: row["id"])
    xg = x.clone().requires_grad_(True)
    net(xg)[:, 1].sum().backward()
    expected = (xg.grad * x).numpy()
    got = np.array([[row["relevance_a"], row["relevance_b"], row["relevance_c"]] for row in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert [row["id"] for row in rows] == list(range(40)) and all(row["target"] == 1 for row in rows)
    np.testing.assert_allclose([row["logit"] for row in rows], net(x)[:, 1].detach().numpy(), rtol=1e-12)


def test_explain_dataset_refuses_no_features(ray):
    from lrpcli.errors import UsageError
    from lrpcli.ray import explain_dataset

    with pytest.raises(UsageError, match="needs features"):
        explain_dataset(ray.data.from_items([{"a": 1.0}]), "model.ts", features=[])


def test_explain_dataset_names_a_bad_composite_before_it_starts(ray):
    from lrpcli.errors import ConfigError
    from lrpcli.ray import explain_dataset

    with pytest.raises(ConfigError, match="unknown composite 'z'"):
        explain_dataset(ray.data.from_items([{"a": 1.0}]), "model.ts", "z", features=["a"])


def test_images_through_ray_equal_a_plain_run(ray, tmp_path):
    """The shapes sample's images: the same summary rows in the same order, the same relevance arrays (to float32
    rounding: actors run torch with other thread counts), a heatmap per input, one run.json."""
    import numpy as np

    shapes = SAMPLE.parent / "shapes_minivgg"
    bad = tmp_path / "images"
    bad.mkdir()
    for image in sorted((shapes / "images").iterdir())[:12]:
        (bad / image.name).write_bytes(image.read_bytes())
    (bad / "broken.png").write_bytes(b"not a png")
    count = len(list(bad.iterdir()))
    more = ("--layers", "features.3", "--scale", "shared")
    plain = lrp("explain", shapes / "model.yaml", bad, "-q", "-b", "5", "--no-report", *more, "-o", tmp_path / "plain")
    run = lrp("explain", shapes / "model.yaml", bad, "-q", "-b", "5", "--no-report", *more, "--ray", "--workers", "2", "-o", tmp_path / "ray")
    assert plain.code == run.code == 5, (plain.describe(), run.describe())
    assert "broken.png" in run.stderr and f"1 of {count} input(s) failed" in run.stderr, run.describe()
    with (tmp_path / "plain" / "summary.csv").open() as a, (tmp_path / "ray" / "summary.csv").open() as b:
        rows_a, rows_b = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert len(rows_a) == count - 1 > 4 and [r["input"] for r in rows_b] == [r["input"] for r in rows_a]
    for ra, rb in zip(rows_a, rows_b):
        assert {k: ra[k] for k in ("prediction", "target", "heatmap", "relevance")} == {k: rb[k] for k in ("prediction", "target", "heatmap", "relevance")}
        np.testing.assert_allclose(float(rb["relevance_sum"]), float(ra["relevance_sum"]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.load(tmp_path / "ray" / rb["relevance"]), np.load(tmp_path / "plain" / ra["relevance"]), rtol=1e-4, atol=1e-6)
        assert (tmp_path / "ray" / rb["heatmap"]).is_file()
        layer = "layers/features.3/" + ra["relevance"].split("/", 1)[1]
        np.testing.assert_allclose(np.load(tmp_path / "ray" / layer), np.load(tmp_path / "plain" / layer), rtol=1e-4, atol=1e-6)
    scales = [json.loads((tmp_path / name / "run.json").read_text())["heatmaps"]["scale"]["value"] for name in ("plain", "ray")]
    assert scales[0] > 0 and np.isclose(scales[1], scales[0], rtol=1e-5), scales  # one shared scale over all inputs
    assert json.loads((tmp_path / "ray" / "run.json").read_text())["device"] == "cpu"  # where the actors ran
    assert (tmp_path / "ray" / "run.json").is_file() and (tmp_path / "ray" / "manifest.jsonl").is_file()
    assert not list((tmp_path / "ray").rglob("*.tmp*")), "a temporary file was left"


def _interrupt_after(monkeypatch, owner, name: str, count: int) -> list:
    """``owner.name`` (a method) still does its work, and raises KeyboardInterrupt (as Ctrl-C would) after the
    ``count``-th call; returns the list of calls' first arguments."""
    real, calls = getattr(owner, name), []

    def wrapper(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        calls.append(args[0] if args else None)
        if len(calls) == count:
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def test_rows_resume_after_an_interrupted_ray_run(ray, tmp_path, monkeypatch):
    """A Ray run of 13 blocks interrupted after 4 finished keeps them in OUT.ray-parts/ and writes no output; --resume
    explains only the other 9 blocks and writes the rows of one plain run (byte-equal: each row once, in input order,
    the failing rows named as before, exit 5); the parts are gone at the end. A resume with other settings is refused."""
    from lrpcli.runs import ray_run

    bad = with_bad_row(tmp_path)
    out, parts = tmp_path / "ray.csv", tmp_path / "ray.csv.ray-parts"
    plain = lrp("explain", SPEC, bad, "--no-report", "-b", "8", "-o", tmp_path / "plain.csv")
    first = _interrupt_after(monkeypatch, ray_run.Parts, "add", 4)
    run = lrp("explain", SPEC, bad, "--no-report", "-b", "8", "--ray", "--workers", "2", "-o", out)
    assert run.code == 130 and "interrupted" in run.stderr, run.describe()
    assert not out.exists() and len(list(parts.glob("*.json"))) == 1 + 4  # settings.json and 4 blocks
    refused(lrp("explain", SPEC, bad, "--no-report", "-b", "8", "--top-k", "2", "--ray", "--resume", "-o", out), 2, "other settings", "top_k")
    monkeypatch.undo()
    second = _interrupt_after(monkeypatch, ray_run.Parts, "add", 99)
    resumed = lrp("explain", SPEC, bad, "--no-report", "-b", "8", "--ray", "--workers", "2", "--resume", "-o", out)
    assert plain.code == resumed.code == 5, (plain.describe(), resumed.describe())
    assert sorted(first + second) == list(range(13)), (first, second)  # each block explained once over both runs
    assert out.read_bytes() == (tmp_path / "plain.csv").read_bytes()
    assert "row 7" in resumed.stderr and "2 of 100 row(s) failed" in resumed.stderr, resumed.describe()
    assert "(4 batch(es) from the interrupted run)" in resumed.stderr, resumed.describe()
    assert not parts.exists()


def test_images_resume_after_an_interrupted_ray_run(ray, tmp_path, monkeypatch):
    """An image run on Ray interrupted after its first batch keeps that batch's files and summary rows; --resume
    explains the rest only and the folder ends as one plain run's (the same summary rows, arrays to float32 rounding)."""
    import numpy as np

    from lrpcli import outputs

    shapes = SAMPLE.parent / "shapes_minivgg"
    images = tmp_path / "images"
    images.mkdir()
    for image in sorted((shapes / "images").iterdir())[:8]:
        (images / image.name).write_bytes(image.read_bytes())
    plain = lrp("explain", shapes / "model.yaml", images, "-q", "-b", "3", "--no-report", "-o", tmp_path / "plain")
    _interrupt_after(monkeypatch, outputs.SummaryLog, "add", 1)
    run = lrp("explain", shapes / "model.yaml", images, "-b", "3", "--no-report", "--ray", "-o", tmp_path / "ray")
    assert run.code == 130, run.describe()
    assert len(read_rows(tmp_path / "ray" / "summary.partial.csv")) == 3 and not (tmp_path / "ray" / "summary.csv").exists()
    monkeypatch.undo()
    resumed = lrp("explain", shapes / "model.yaml", images, "-b", "3", "--no-report", "--ray", "--resume", "-o", tmp_path / "ray")
    assert plain.code == resumed.code == 0, resumed.describe()
    assert "explained 5 of 8 input(s), 3 already done" in resumed.stderr, resumed.describe()
    rows_a, rows_b = read_rows(tmp_path / "plain" / "summary.csv"), read_rows(tmp_path / "ray" / "summary.csv")
    assert [r["input"] for r in rows_b] == [r["input"] for r in rows_a] and len(rows_a) == 8
    for ra, rb in zip(rows_a, rows_b):
        assert (ra["prediction"], ra["target"], ra["relevance"]) == (rb["prediction"], rb["target"], rb["relevance"])
        np.testing.assert_allclose(np.load(tmp_path / "ray" / rb["relevance"]), np.load(tmp_path / "plain" / ra["relevance"]), rtol=1e-4, atol=1e-6)
    assert not (tmp_path / "ray" / "summary.partial.csv").exists()


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_shard_through_ray_equals_the_plain_shard(ray, tmp_path):
    """--shard K/N with --ray takes the same rows as without Ray (rows by number), so `lrp merge` and shards run
    as separate Ray jobs work as before."""
    plain = lrp("explain", SPEC, ROWS, "--no-report", "-q", "-b", "16", "--shard", "2/3", "-o", tmp_path / "plain.csv")
    run = lrp("explain", SPEC, ROWS, "--no-report", "-q", "-b", "16", "--shard", "2/3", "--ray", "-o", tmp_path / "ray.csv")
    assert plain.code == run.code == 0, run.describe()
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    assert 10 < len((tmp_path / "ray.csv").read_text().splitlines()) - 1 < 60
    images = SAMPLE.parent / "shapes_minivgg"
    common = ("explain", images / "model.yaml", images / "images", "-q", "--no-report", "-b", "2", "--shard", "1/2")
    plain, run = lrp(*common, "-o", tmp_path / "plain"), lrp(*common, "--ray", "-o", tmp_path / "ray")
    assert plain.code == run.code == 0, run.describe()
    name = "summary.shard-1-of-2.csv"
    chosen = [(r["input"], r["prediction"]) for r in read_rows(tmp_path / "plain" / name)]
    assert [(r["input"], r["prediction"]) for r in read_rows(tmp_path / "ray" / name)] == chosen and 0 < len(chosen) < 8
    assert (tmp_path / "ray" / "run.shard-1-of-2.json").is_file() and (tmp_path / "ray" / "manifest.shard-1-of-2.jsonl").is_file()


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl"])
def test_texts_through_ray_equal_a_plain_run(ray, tmp_path, fmt):
    """Texts (a .txt file, a CSV with --text-col, JSON lines) through --ray: the same JSON lines as a plain run, byte
    for byte (rows in input order, --top-k's words), the same failing text named, exit 5 in both."""
    texts = SAMPLE.parent / "text_sentiment"
    source = {"txt": texts / "texts.txt", "csv": texts / "reviews.csv", "jsonl": texts / "planted.jsonl"}[fmt]
    lines = source.read_text().splitlines(keepends=True)
    head = 1 if fmt == "csv" else 0
    chosen = lines[: head + 30]
    if fmt == "jsonl":
        chosen[12] = "{not json\n"  # a bad line: named, the others written
    path = tmp_path / f"in.{fmt}"
    path.write_text("".join(chosen))
    extra = ("--text-col", "text") if fmt != "txt" else ()
    common = ("explain", texts / "bag.yaml", path, "--no-report", "-b", "4", "--top-k", "2", *extra)
    plain = lrp(*common, "-o", tmp_path / "plain.jsonl")
    run = lrp(*common, "--ray", "--workers", "2", "-o", tmp_path / "ray.jsonl")
    assert plain.code == run.code == (5 if fmt == "jsonl" else 0), (plain.describe(), run.describe())
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "plain.jsonl").read_bytes()
    assert len((tmp_path / "ray.jsonl").read_text().splitlines()) == (29 if fmt == "jsonl" else 30)
    if fmt == "jsonl":
        assert "line 13" in run.stderr and "1 of 30 text(s) failed" in run.stderr, run.describe()


class FakeRay:
    """What actor_options asks of ray: the cluster's resources and the actor pool (no cluster started)."""

    def __init__(self, gpus: float | None):
        import types

        self.gpus = gpus
        self.data = types.SimpleNamespace(ActorPoolStrategy=lambda size: ("pool", size))

    def is_initialized(self):
        return self.gpus is not None

    def cluster_resources(self):
        return {"CPU": 8.0, **({"GPU": self.gpus} if self.gpus else {})}


def test_device_cuda_asks_each_actor_for_a_gpu():
    """--device cuda: num_gpus=1 per actor (and no CPU share); auto takes GPUs only where the cluster has one per
    actor; cpu never. A cluster without enough GPUs is refused at once, naming the counts (Ray would wait forever)."""
    from lrpcli.errors import UsageError
    from lrpcli.ray import with_gpus
    from lrpcli.runs.ray_run import RETRIES, actor_options

    options = actor_options(FakeRay(2), 2, "cuda")
    assert options == {"compute": ("pool", 2), "num_gpus": 1, "max_restarts": RETRIES, "max_task_retries": RETRIES}
    assert actor_options(FakeRay(2), 2, "auto")["num_gpus"] == 1
    assert "num_gpus" not in actor_options(FakeRay(1), 2, "auto") and actor_options(FakeRay(1), 2, "auto")["num_cpus"] == 1
    assert "num_gpus" not in actor_options(FakeRay(4), 1, "cpu")
    assert actor_options(FakeRay(None), 3, "cuda:0")["num_gpus"] == 1  # not joined yet (the Python API): asked, not checked
    with pytest.raises(UsageError, match=r"asks each of the 3 actor\(s\) for a GPU, and the Ray cluster has 2") as caught:
        actor_options(FakeRay(2), 3, "cuda")
    assert "--device cpu" in caught.value.hint
    with pytest.raises(UsageError, match="the Ray cluster has 0"):
        actor_options(FakeRay(0), 1, "cuda")
    assert with_gpus(options, 0.5)["num_gpus"] == 0.5 and with_gpus(options, 0) == {**{k: v for k, v in options.items() if k != "num_gpus"}, "num_cpus": 1}


def test_device_cuda_on_a_cluster_without_gpus_is_refused(ray, tmp_path):
    run = lrp("explain", SPEC, ROWS, "--ray", "--device", "cuda", "-q", "--no-report", "-o", tmp_path / "r.csv")
    refused(run, 2, "--device cuda", "GPU")
    assert not (tmp_path / "r.csv").exists()


def test_run_wide_means_weigh_blocks_by_their_rows(ray, tmp_path):
    """The rows page's feature means after a Ray run of unequal blocks (100 rows, -b 30: blocks of 30, 30, 30 and 10):
    each feature's mean relevance is the mean over all rows (numpy over the plain run's rows, independently), not the
    mean of the blocks' means, which differs here by more than the tolerance (so a per-block average would fail)."""
    import numpy as np

    from lrpcli.report.table import table_data

    plain = lrp("explain", SPEC, ROWS, "-q", "--no-report", "-b", "30", "-o", tmp_path / "plain.csv")
    run = lrp("explain", SPEC, ROWS, "-q", "-b", "30", "--ray", "--workers", "2", "-o", tmp_path / "ray.csv")
    assert plain.code == run.code == 0, run.describe()
    assert (tmp_path / "ray.report.html").is_file(), run.describe()  # the page the run wrote, from the same data
    rows = read_rows(tmp_path / "plain.csv")
    names = [name for name in rows[0] if name not in ("id", "label", "prediction", "prediction_label", "target", "target_label", "logit", "relevance_sum")]
    values = np.array([[float(r[name]) for name in names] for r in rows])
    blocks = [values[s : s + 30] for s in range(0, 100, 30)]
    assert [len(b) for b in blocks] == [30, 30, 30, 10]
    true_mean, per_block = values.mean(0), np.mean([b.mean(0) for b in blocks], axis=0)
    page = {f["name"]: f for f in table_data(tmp_path / "ray.csv")["features"]}
    got = np.array([page[name]["mean"] for name in names])
    np.testing.assert_allclose(got, true_mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose([page[name]["mean_abs"] for name in names], np.abs(values).mean(0), rtol=1e-6, atol=1e-9)
    assert np.max(np.abs(per_block - true_mean) / (np.abs(true_mean) + 1e-12)) > 1e-3  # the test can tell them apart
