"""``lrp explain --ray`` (issue 30): the same rows as a plain run, nothing lost when an actor dies, and a message
naming the extra where Ray is missing.

The Ray tests need the extra (``pip install -c constraints.txt -e ".[test,ray]"``) and start one local cluster
(``ray.init(num_cpus=2)``) for the module; without Ray they are skipped, saying so. The missing-extra test runs
everywhere (it blocks ``import ray``).
"""

from __future__ import annotations

import csv
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


def test_ray_refuses_what_it_does_not_take_yet(tmp_path):
    shapes = SAMPLE.parent / "shapes_minivgg"
    run = lrp("explain", shapes / "model.yaml", shapes / "images", "--ray", "--resume", "-q", "-o", tmp_path / "o")
    refused(run, 2, "--ray does not take --resume")


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
    plain = lrp("explain", shapes / "model.yaml", bad, "-q", "-b", "5", "--no-report", "-o", tmp_path / "plain")
    run = lrp("explain", shapes / "model.yaml", bad, "-q", "-b", "5", "--no-report", "--ray", "--workers", "2", "-o", tmp_path / "ray")
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
    assert (tmp_path / "ray" / "run.json").is_file() and (tmp_path / "ray" / "manifest.jsonl").is_file()
    assert not list((tmp_path / "ray").rglob("*.tmp*")), "a temporary file was left"
