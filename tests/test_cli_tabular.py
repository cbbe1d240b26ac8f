"""CSV rows in, relevance rows out: pipelines, sums, regression, streaming, bad rows."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lrpcli.cli import main
from lrpcli.sources.files import load_model, load_spec

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
CANCER = SAMPLES / "breast_cancer_mlp"
DIABETES = SAMPLES / "diabetes_mlp"
LRP = [sys.executable, "-m", "lrpcli.cli.__main__"]


def run(*args, input=None):
    return CliRunner().invoke(main, ["explain", *map(str, args)], input=input)


def rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def model_logits(spec_path, csv_path):
    """The model's outputs computed independently: torch on the standardised features."""
    spec = load_spec(spec_path)
    model = load_model(spec.model)
    data = list(csv.DictReader(open(csv_path)))
    x = torch.tensor([[float(r[f]) for f in spec.input["features"]] for r in data], dtype=torch.float64)
    x = (x - torch.tensor(spec.input["mean"], dtype=torch.float64)) / torch.tensor(spec.input["std"], dtype=torch.float64)
    with torch.no_grad():
        return model(x.float()).double(), data


def test_shell_pipeline_has_clean_stdout_and_a_header(tmp_path):
    command = f"head -n 50 {CANCER / 'sample.csv'} | {sys.executable} -m lrpcli.cli.__main__ explain {CANCER / 'model.yaml'} - | cut -d, -f1,5"
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "id,target" and len(lines) == 50  # header + 49 rows, nothing else
    assert all(line.startswith("bc") for line in lines[1:])
    assert "explained 49 result row(s)" in result.stderr


def test_relevance_columns_sum_to_the_sum_column_and_to_the_logit_without_biases():
    result = run(CANCER / "model.yaml", CANCER / "sample.csv", "-c", "lrp_0")
    assert result.exit_code == 0, result.stderr
    out = rows(result.stdout)
    features = load_spec(CANCER / "model.yaml").input["features"]
    logits, data = model_logits(CANCER / "model.yaml", CANCER / "sample.csv")
    assert len(out) == len(data) == 100
    for row, logit_row, source in zip(out, logits, data):
        total = sum(float(row[f]) for f in features)
        assert total == pytest.approx(float(row["relevance_sum"]), rel=1e-6, abs=1e-6)
        assert float(row["logit"]) == pytest.approx(float(logit_row[int(row["target"])]), rel=1e-5)
        assert float(row["relevance_sum"]) == pytest.approx(float(row["logit"]), rel=1e-4)  # bias-free: conserved
        assert row["id"] == source["id"] and row["label"] == source["diagnosis"]
        assert int(row["prediction"]) == int(logit_row.argmax())
        assert row["prediction_label"] in ("malignant", "benign")


def test_regression_explains_the_predicted_value():
    result = run(DIABETES / "model_state_dict.yaml", DIABETES / "sample.csv", "--format", "jsonl")
    assert result.exit_code == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    predictions, _ = model_logits(DIABETES / "model.yaml", DIABETES / "sample.csv")
    assert len(out) == 60
    for row, predicted in zip(out, predictions[:, 0]):
        assert row["target"] == 0
        assert row["prediction"] == pytest.approx(float(predicted), rel=1e-5)
        assert row["logit"] == row["prediction"]
        assert sum(row[f] for f in ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")) == pytest.approx(row["relevance_sum"], rel=1e-6, abs=1e-6)


def test_top_k_lists_the_most_positive_and_negative_features():
    result = run(CANCER / "model.yaml", CANCER / "sample.csv", "--top-k", 3)
    features = load_spec(CANCER / "model.yaml").input["features"]
    for row in rows(result.stdout)[:10]:
        values = {f: float(row[f]) for f in features}
        expected_pos = [f for f, v in sorted(values.items(), key=lambda p: -p[1])[:3] if v > 0]
        expected_neg = [f for f, v in sorted(values.items(), key=lambda p: p[1])[:3] if v < 0]
        assert [item.split("=")[0] for item in row["top_positive"].split(";") if item] == expected_pos
        assert [item.split("=")[0] for item in row["top_negative"].split(";") if item] == expected_neg


def test_column_selection_and_output_file(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("key,a,b,extra,y\nk1,1,2,9,0\nk2,3,4,9,1\n")
    model = tmp_path / "m.ts"
    torch.manual_seed(0)
    from lrpcli.sources.architectures import MLP

    torch.jit.save(torch.jit.script(MLP(2, (4,), 2).eval()), str(model))
    out = tmp_path / "out.csv"
    result = run(model, data, "--id-col", "key", "--label-col", "y", "--drop", "extra", "-o", out)
    assert result.exit_code == 0, result.stderr
    written = rows(out.read_text())
    assert [r["id"] for r in written] == ["k1", "k2"] and [r["label"] for r in written] == ["0", "1"]
    assert {"a", "b"} <= set(written[0]) and "extra" not in written[0]
    reordered = run(model, data, "--features", "b,a", "--id-col", "key")
    assert reordered.exit_code == 0
    keys = list(rows(reordered.stdout)[0])
    assert keys.index("b") < keys.index("a")
    all_targets = run(model, data, "--id-col", "key", "--drop", "extra,y", "--target", "all")
    assert [(r["id"], r["target"]) for r in rows(all_targets.stdout)] == [("k1", "0"), ("k1", "1"), ("k2", "0"), ("k2", "1")]


BAD = "id,a,b\nr1,1,2\nr2,1,x\nr3,,2\nr4,5,6\n"


@pytest.fixture
def tiny(tmp_path):
    from lrpcli.sources.architectures import MLP

    torch.manual_seed(0)
    path = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(MLP(2, (4,), 2).eval()), str(path))
    return path


def test_bad_cells_are_reported_with_row_and_column_and_good_rows_written(tiny, tmp_path):
    data = tmp_path / "bad.csv"
    data.write_text(BAD)
    result = run(tiny, data, "--id-col", "id")
    assert result.exit_code == 5
    assert [r["id"] for r in rows(result.stdout)] == ["r1", "r4"]
    assert "row 3, column 'b': 'x' is not a number" in result.stderr
    assert "row 4, column 'a': missing value" in result.stderr
    assert "2 of 4 row(s) failed" in result.stderr


def test_on_error_fail_stops_at_the_first_bad_row(tiny, tmp_path):
    data = tmp_path / "bad.csv"
    data.write_text(BAD)
    result = run(tiny, data, "--id-col", "id", "--on-error", "fail", "--batch-size", 1)
    assert result.exit_code == 5
    assert "row 3, column 'b'" in result.stderr and "row 4" not in result.stderr
    assert [r["id"] for r in rows(result.stdout)] == ["r1"]


def test_missing_columns_and_wrong_feature_counts(tiny, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("id,a,b,c\nr1,1,2,3\n")
    wrong = run(tiny, data, "--id-col", "id")
    assert wrong.exit_code == 5 and "3 feature columns (a, b, c) but the model takes 2" in wrong.stderr
    missing = run(CANCER / "model.yaml", data)
    assert missing.exit_code == 5 and "missing column(s) the model needs: mean radius" in missing.stderr
    bad_id = run(tiny, data, "--id-col", "ident")
    assert bad_id.exit_code == 5 and "--id-col 'ident' is not a column" in bad_id.stderr
    ragged = tmp_path / "r.csv"
    ragged.write_text("id,a,b\nr1,1,2,3\n")
    assert "row 2: has 4 cells, the header has 3" in run(tiny, ragged, "--id-col", "id").stderr
    empty = tmp_path / "e.csv"
    empty.write_text("")
    assert run(tiny, empty).exit_code == 5


def test_output_streams_while_input_is_still_arriving():
    process = subprocess.Popen(
        LRP + ["explain", str(CANCER / "model.yaml"), "-", "--batch-size", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = (CANCER / "sample.csv").read_text().splitlines()
    process.stdin.write("\n".join(lines[:3]) + "\n")  # the header and one batch, input stays open
    process.stdin.flush()
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend([process.stdout.readline(), process.stdout.readline(), process.stdout.readline()]))
    reader.start()
    reader.join(timeout=90)
    try:
        assert not reader.is_alive(), "no output before the input ended"
        assert got[0].startswith("id,") and got[1].startswith("bc") and got[2].startswith("bc")
    finally:
        process.stdin.close()
        process.wait(timeout=60)


def _peak_rss_kib(csv_path: Path) -> int:
    script = (
        "import resource, subprocess, sys;"
        f"subprocess.run({LRP + ['explain', str(DIABETES / 'model.yaml'), str(csv_path), '-q']!r}, stdout=subprocess.DEVNULL, check=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    return int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600).stdout)


def test_memory_stays_flat_for_a_large_csv(tmp_path):
    header = (DIABETES / "sample.csv").read_text().splitlines()[0]
    row = "r,50,1,25,90,180,110,50,4,4.6,90,100"

    def write(path, n):
        with open(path, "w") as handle:
            handle.write(header + "\n")
            for _ in range(n // 1000):
                handle.write((row + "\n") * 1000)

    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    write(small, 20_000)
    write(large, 200_000)
    peak_small, peak_large = _peak_rss_kib(small), _peak_rss_kib(large)
    # ten times the rows, (almost) the same memory: rows are streamed, not collected
    assert peak_large < peak_small + 40 * 1024, (peak_small, peak_large)
