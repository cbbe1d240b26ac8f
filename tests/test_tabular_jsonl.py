"""Rows as JSON lines (a file or stdin) and stdin read column-wise: the same numbers as the CSV path,
bad values named by line and key with the rest written, output that keeps up with a pipe that pauses."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from click.testing import CliRunner

from lrpcli.cli import main
from lrpcli.data import columnar, jsonl
from lrpcli.data.chunks import LineChunks
from lrpcli.data.jsonl import JsonlSource, read_json_batches
from lrpcli.data.tabular import TabularColumns

DIABETES = Path(__file__).resolve().parents[1] / "sample_models" / "diabetes_mlp"
LRP = [sys.executable, "-m", "lrpcli.cli.__main__"]
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def run(*args: str, input: str | None = None):
    result = CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)
    return result


def read(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def sample_rows() -> list[dict[str, str]]:
    return list(csv.DictReader((DIABETES / "sample.csv").open()))


def as_jsonl(rows: list[dict[str, str]], numeric_ids: bool = False) -> str:
    lines = []
    for i, row in enumerate(rows):
        record = {k: (v if k == "id" else float(v)) for k, v in row.items()}
        if numeric_ids:
            record["id"] = 1000 + i
        lines.append(json.dumps(record))
    return "\n".join(lines) + "\n"


def relevance(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([[float(r[f]) for f in FEATURES] + [float(r["logit"])] for r in rows])


@pytest.fixture(params=["pyarrow", "careful"])
def arrow(request, monkeypatch):
    """Every test runs with pyarrow's column-wise reader and with every chunk refused by it, so that the
    line-by-line reader (the one that names bad lines) reads all of them."""
    if request.param == "careful":
        monkeypatch.setattr(jsonl._FastJson, "__call__", lambda self, chunk, lines, done: None)
    return request.param


def test_jsonl_file_gives_the_csv_files_numbers(tmp_path, arrow):
    rows = sample_rows()
    path = tmp_path / "rows.jsonl"
    path.write_text(as_jsonl(rows))
    spec = DIABETES / "model.yaml"
    from_csv = read(run("explain", spec, DIABETES / "sample.csv", "-q").stdout)
    from_jsonl = read(run("explain", spec, path, "-q").stdout)
    assert [r["id"] for r in from_jsonl] == [r["id"] for r in rows]
    assert [float(r["label"]) for r in from_jsonl] == [float(r["progression"]) for r in rows]
    np.testing.assert_allclose(relevance(from_jsonl).astype(np.float32), relevance(from_csv).astype(np.float32), rtol=1e-6)
    # and through stdin, recognised by its first line
    piped = read(run("explain", spec, "-", "-q", input=as_jsonl(rows)).stdout)
    assert [r["id"] for r in piped] == [r["id"] for r in rows]
    np.testing.assert_allclose(relevance(piped).astype(np.float32), relevance(from_csv).astype(np.float32), rtol=1e-6)


def test_numeric_ids_and_a_missing_id_column_give_text_ids(tmp_path, arrow):
    rows = sample_rows()[:5]
    path = tmp_path / "rows.jsonl"
    path.write_text(as_jsonl(rows, numeric_ids=True))
    got = read(run("explain", DIABETES / "model.yaml", path, "-q").stdout)
    assert [r["id"] for r in got] == [str(1000 + i) for i in range(5)]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({f: float(r[f]) for f in FEATURES}) + "\n" for r in rows))
    got = read(run("explain", DIABETES / "model.ts", plain, "--mean", ",".join(["0"] * 10), "-q").stdout)
    assert [r["id"] for r in got] == ["1", "2", "3", "4", "5"]  # line numbers, as the CSV path numbers rows


def test_bad_lines_are_named_by_line_and_key_and_the_rest_is_written(tmp_path, arrow):
    rows = sample_rows()[:30]
    lines = as_jsonl(rows).splitlines()
    record = json.loads(lines[4])
    del record["bmi"]
    lines[4] = json.dumps(record)  # line 5: a key missing
    record = json.loads(lines[9])
    record["s1"] = None
    lines[9] = json.dumps(record)  # line 10: null
    record = json.loads(lines[14])
    record["bp"] = "high"
    lines[14] = json.dumps(record)  # line 15: not a number
    record = json.loads(lines[17])
    record["age"] = True
    lines[17] = json.dumps(record)  # line 18: a boolean
    lines[19] = lines[19].replace('"s2": ', '"s2": NaN, "x": ')  # line 20: not finite
    lines[21] = "[1, 2, 3]"  # line 22: not an object
    lines[23] = lines[23][:-5]  # line 24: cut short
    lines.insert(26, "")  # line 27: blank, skipped
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = run("explain", DIABETES / "model.yaml", path, "-q", "--batch-size", "8")
    assert result.exit_code == 5
    errors = [line for line in result.stderr.splitlines() if "bad.jsonl: line" in line]
    expected = [
        "line 5, key 'bmi': missing value",
        "line 10, key 's1': missing value",
        "line 15, key 'bp': 'high' is not a number",
        "line 18, key 'age': true is not a number",
        "line 20, key 's2': NaN is not a finite number",
        "line 22: a JSON list, expected an object of features",
        "line 24: not JSON",
    ]
    assert len(errors) == len(expected), result.stderr
    for message, line in zip(expected, errors):
        assert message in line, (message, line)
    written = read(result.stdout)
    bad_ids = {rows[i]["id"] for i in (4, 9, 14, 17, 19, 21, 23)}
    assert [r["id"] for r in written] == [r["id"] for r in rows if r["id"] not in bad_ids]


def test_rows_after_a_blank_line_keep_their_line_numbers():
    columns = TabularColumns(features=["a", "b"], id_col="id")
    lines = [b'{"id": "x", "a": 1, "b": 2}', b"", b'{"id": "y", "a": 1}', b'{"a": 3, "b": 4}']
    rows = [r for batch in read_json_batches(iter(lines), columns, 2, "t.jsonl") for r in batch.rows]
    assert [(r.number, r.id, r.values, r.error) for r in rows] == [
        (1, "x", [1.0, 2.0], None),
        (3, "y", None, "t.jsonl: line 3, key 'b': missing value"),
        (4, "4", [3.0, 4.0], None),
    ]


def test_fast_jsonl_reader_gives_the_line_readers_rows(tmp_path):
    text = as_jsonl(sample_rows())
    columns = TabularColumns(features=FEATURES, id_col="id", label_col="progression")

    def rows_of(fast: bool) -> list:
        raw = io.BytesIO(text.encode())
        lines = LineChunks(raw)
        source = JsonlSource(lines, lines.readline(), "rows.jsonl")
        if not fast:
            return [r for b in read_json_batches(iter(text.encode().split(b"\n")[:-1]), columns, 7, "rows.jsonl") for r in b.rows]
        out = []
        for batch in source.batches(columns, 7):
            assert isinstance(batch, columnar.ColumnBatch), "a clean chunk takes the column-wise path"
            out += batch.to_rows().rows
        return out

    fast, careful = rows_of(True), rows_of(False)
    assert [(r.number, r.id, r.label) for r in fast] == [(r.number, r.id, r.label) for r in careful]
    assert np.array_equal(np.array([r.values for r in fast]), np.array([r.values for r in careful]))


def test_a_text_model_given_jsonl_without_a_tokenizer_is_told_how(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"a": 1, "b": 2, "c": 3}\n')
    result = run("explain", DIABETES / "model.ts", path)
    assert result.exit_code == 5 and "--tokenizer and --text-col" in result.stderr


def test_a_jsonl_file_that_does_not_open_with_an_object_is_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("\n\n[1, 2]\n")
    result = run("explain", DIABETES / "model.yaml", path)
    assert result.exit_code == 5 and "x.jsonl: line 3: not a JSON object" in result.stderr


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_pipe_that_pauses_gets_its_rows_explained_before_it_ends(kind):
    """With a batch of 1024 rows, a writer that sends one row and waits still gets that row back."""
    process = subprocess.Popen(
        LRP + ["explain", str(DIABETES / "model.yaml"), "-", "-q"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    rows = sample_rows()
    first = (DIABETES / "sample.csv").read_text().splitlines()[:2] if kind == "csv" else as_jsonl(rows[:1]).splitlines()
    process.stdin.write("\n".join(first) + "\n")
    process.stdin.flush()
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend([process.stdout.readline(), process.stdout.readline()]))
    reader.start()
    reader.join(timeout=90)
    try:
        assert not reader.is_alive(), "no output while the pipe paused"
        assert got[0].startswith("id,") and got[1].startswith(rows[0]["id"] + ",")
    finally:
        process.stdin.close()
        process.wait(timeout=60)


def test_hostile_values_are_named_not_raised():
    columns = TabularColumns(features=["a"])
    lines = [b'{"a": 1' + b"0" * 400 + b"}", b"[" * 100_000 + b"]" * 100_000, b'{"a": "' + b"x" * 5000 + b'"}']
    rows = [r for batch in read_json_batches(iter(lines), columns, 8, "h.jsonl") for r in batch.rows]
    assert [r.error for r in rows] == [
        "h.jsonl: line 1, key 'a': 1" + "0" * 39 + " is not a finite number",
        "h.jsonl: line 2: nested too deeply to read",
        "h.jsonl: line 3, key 'a': '" + "x" * 40 + "' is not a number",
    ]
