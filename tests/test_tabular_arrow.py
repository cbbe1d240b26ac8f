"""The column-wise (pyarrow) tabular path: same rows and numbers as the careful path, errors still named
by row and column, Parquet in and out."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import torch

import pyarrow as pa
import pyarrow.csv  # noqa: F401  (pa.csv)
import pyarrow.parquet as pq
from click.testing import CliRunner

from lrpcli.cli import main
from lrpcli.data import columnar
from lrpcli.data.tabular import RowBatch, TabularColumns, open_csv, open_rows, read_batches

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def careful_rows(path: Path, columns: TabularColumns, batch_size: int):
    with open_csv(str(path)) as handle:
        header, reader = open_rows(handle, path.name)
        return [row for batch in read_batches(reader, header, columns, batch_size, path.name) for row in batch.rows]


def fast_rows(path: Path, columns: TabularColumns, batch_size: int):
    source = columnar.open_source(str(path), path.name)
    try:
        rows = []
        for batch in source.batches(columns, batch_size):
            rows += (batch.to_rows() if isinstance(batch, columnar.ColumnBatch) else batch).rows
        return rows
    finally:
        source.close()


def columns_for(path: Path, **kwargs) -> TabularColumns:
    with open_csv(str(path)) as handle:
        header, _ = open_rows(handle, path.name)
    return TabularColumns.resolve(header, **kwargs)


@pytest.mark.parametrize("sample,id_col,label_col", [("breast_cancer_mlp", "id", "diagnosis"), ("diabetes_mlp", "id", "progression")])
@pytest.mark.parametrize("batch_size", [7, 1024])
def test_fast_reader_gives_the_careful_readers_rows(sample, id_col, label_col, batch_size):
    path = SAMPLES / sample / "sample.csv"
    with open_csv(str(path)) as handle:
        header, _ = open_rows(handle, path.name)
    label_col = label_col if label_col in header else None
    columns = columns_for(path, id_col=id_col, label_col=label_col)
    careful, fast = careful_rows(path, columns, batch_size), fast_rows(path, columns, batch_size)
    assert [(r.number, r.id, r.label, r.error) for r in fast] == [(r.number, r.id, r.label, r.error) for r in careful]
    assert np.array_equal(np.array([r.values for r in fast], dtype=np.float64), np.array([r.values for r in careful], dtype=np.float64))


def test_a_bad_chunk_is_reread_carefully_and_names_row_and_column(tmp_path):
    lines = ["id,a,b"] + [f"r{i},{i}.5,{i * 2}" for i in range(40)]
    lines[13] = "r12,1.5,x"  # row 14 (header = 1)
    lines[25] = "r24,,3"  # row 26: missing value
    lines[31] = "r30,1,2,3"  # row 32: wrong width
    lines[36] = "r35,nan,1"  # row 37: not finite
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n\n")
    columns = columns_for(path, id_col="id")
    fast, careful = fast_rows(path, columns, 8), careful_rows(path, columns, 8)
    assert [(r.number, r.id, r.error) for r in fast] == [(r.number, r.id, r.error) for r in careful]
    errors = [r.error for r in fast if r.error]
    assert errors == [
        "bad.csv: row 14, column 'b': 'x' is not a number",
        "bad.csv: row 26, column 'a': missing value",
        "bad.csv: row 32: has 4 cells, the header has 3",
        "bad.csv: row 37, column 'a': 'nan' is not a finite number",
    ]
    assert len([r for r in fast if r.error is None]) == 36


def test_quoted_and_crlf_files_read_as_the_careful_reader_does(tmp_path):
    path = tmp_path / "q.csv"
    body = "id,a,b\r\n" + "".join(f"r{i},{i},{i + 1}\r\n" for i in range(20)) + '"r,20",1,2\r\n"multi\nline",3,4\r\nr22,5,6\r\n'
    path.write_bytes(body.encode())
    columns = columns_for(path, id_col="id")
    fast, careful = fast_rows(path, columns, 6), careful_rows(path, columns, 6)
    assert [(r.number, r.id, r.values, r.error) for r in fast] == [(r.number, r.id, r.values, r.error) for r in careful]


def run(*args: str):
    return CliRunner().invoke(main, ["explain", *args, "-q"])


def read(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("sample", ["breast_cancer_mlp", "diabetes_mlp"])
def test_cli_numbers_match_the_careful_path_to_float32(sample, tmp_path):
    spec, data = SAMPLES / sample / "model.yaml", SAMPLES / sample / "sample.csv"
    fast = run(str(spec), str(data))
    assert fast.exit_code == 0, fast.output
    lines = data.read_text().splitlines(keepends=True)
    first = lines[0].split(",", 1)
    quoted = tmp_path / "quoted.csv"  # a quoted header: the careful reader reads every row
    quoted.write_text(f'"{first[0]}",{first[1]}' + "".join(lines[1:]))
    careful = run(str(spec), str(quoted))
    assert careful.exit_code == 0, careful.output
    a, b = read(fast.stdout), read(careful.stdout)
    assert len(a) == len(b) > 0 and list(a[0]) == list(b[0])
    for x, y in zip(a, b):
        for key in x:
            try:
                fx, fy = float(x[key]), float(y[key])
            except ValueError:
                assert x[key] == y[key]
                continue
            if key == "relevance_sum":
                assert fx == pytest.approx(fy, rel=1e-7, abs=1e-6)
            else:
                assert np.float32(fx) == np.float32(fy), (key, x[key], y[key])


def test_cli_bad_cell_names_row_and_column_and_writes_the_rest(tmp_path):
    data = SAMPLES / "diabetes_mlp" / "sample.csv"
    lines = data.read_text().splitlines()
    cells = lines[30].split(",")
    cells[3] = "oops"  # bmi
    lines[30] = ",".join(cells)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    result = run(str(SAMPLES / "diabetes_mlp" / "model.yaml"), str(bad), "--batch-size", "16")
    assert result.exit_code != 0
    assert "row 31, column 'bmi': 'oops' is not a number" in result.stderr
    assert len(read(result.stdout)) == len(lines) - 2


def test_parquet_in_and_out_round_trips_ids_labels_and_feature_names(tmp_path):
    spec, data = SAMPLES / "diabetes_mlp" / "model.yaml", SAMPLES / "diabetes_mlp" / "sample.csv"
    table = pa.csv.read_csv(data, convert_options=pa.csv.ConvertOptions(column_types={"id": pa.string(), "progression": pa.string()}))
    pq.write_table(table, tmp_path / "rows.parquet")
    out = tmp_path / "rel.parquet"
    result = run(str(spec), str(tmp_path / "rows.parquet"), "-o", str(out), "--batch-size", "16")
    assert result.exit_code == 0, result.output
    got = pq.read_table(out)
    features = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert got.column_names == ["id", "label", "prediction", "target", "logit", *features, "relevance_sum"]
    assert got.column("id").to_pylist() == table.column("id").to_pylist()
    assert got.column("label").to_pylist() == table.column("progression").to_pylist()
    from_csv = read(run(str(spec), str(data)).stdout)
    for row, reference in zip(got.to_pylist(), from_csv):
        for name in features + ["logit"]:
            assert np.float32(row[name]) == np.float32(float(reference[name]))


def test_parquet_with_a_null_names_its_row(tmp_path):
    spec = SAMPLES / "diabetes_mlp" / "model.yaml"
    table = pa.csv.read_csv(SAMPLES / "diabetes_mlp" / "sample.csv", convert_options=pa.csv.ConvertOptions(column_types={"id": pa.string()}))
    bmi = table.column("bmi").to_pylist()
    bmi[4] = None
    table = table.set_column(table.column_names.index("bmi"), "bmi", pa.array(bmi, pa.float64()))
    pq.write_table(table, tmp_path / "rows.parquet")
    result = run(str(spec), str(tmp_path / "rows.parquet"), "--batch-size", "16")
    assert result.exit_code != 0
    assert "row 6, column 'bmi': missing value" in result.stderr
    assert len(read(result.stdout)) == table.num_rows - 1


def test_top_k_in_bulk_names_the_row_paths_features_and_values():
    """Ties keep column order, rows with nothing positive (or negative) give an empty cell, values equal
    the row path's .6g text; pyarrow 26 drops rows that are null throughout a join: none may go missing."""
    from lrpcli.runs.rows import top_features, top_features_bulk

    names = [f"f{i}" for i in range(6)]
    rng = np.random.default_rng(3)
    relevance = rng.standard_normal((500, 6)) * np.exp(rng.standard_normal((500, 6)) * 4)
    relevance[3] = np.abs(relevance[3])  # nothing negative
    relevance[4] = 0.0  # nothing either way
    relevance[5, :4] = 2.5  # a four-way tie
    for k in (1, 2, 6, 9):
        for positive in (True, False):
            bulk = top_features_bulk(names, relevance, k, positive).to_pylist()
            assert len(bulk) == len(relevance)
            parsed = [[(p.split("=")[0], float(p.split("=")[1])) for p in cell.split(";") if p] for cell in bulk]
            expected = [[(n, float(f"{v:.6g}")) for n, v in top_features(names, row, k, positive)] for row in relevance.tolist()]
            assert parsed == expected


def test_arrow_stream_carries_the_csv_outputs_columns_and_numbers(tmp_path):
    spec, data = SAMPLES / "diabetes_mlp" / "model.yaml", SAMPLES / "diabetes_mlp" / "sample.csv"
    expected = read(run(str(spec), str(data)).stdout)
    streamed = CliRunner().invoke(main, ["explain", str(spec), str(data), "-q", "--format", "arrow", "--batch-size", "16"])
    assert streamed.exit_code == 0, streamed.output
    reader = pa.ipc.open_stream(streamed.stdout_bytes)
    batches = list(reader)
    assert len(batches) == -(-len(expected) // 16)  # one record batch per batch of rows
    table = pa.Table.from_batches(batches)
    assert table.column_names == list(expected[0])
    assert table.column("id").to_pylist() == [r["id"] for r in expected]
    for name in ("logit", "bmi", "relevance_sum"):
        assert np.allclose(table.column(name).to_numpy(), [float(r[name]) for r in expected], rtol=1e-6)
    out = tmp_path / "rel.arrow"  # the suffix picks the format
    assert run(str(spec), str(data), "-o", str(out)).exit_code == 0
    with pa.ipc.open_stream(out.read_bytes()) as again:
        assert again.read_all().equals(table)
