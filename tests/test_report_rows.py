"""The report pages of CSV-row runs (rel.report.html: features by mean |relevance|, their spread, the
rows) and of text runs (the highlighted texts, the words most often for and against each class):
where they go, the numbers on them checked against the output files by independent code, rebuilding
them with ``lrp report FILE``, and each page in headless Chromium."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from cli_support import lrp
from report_browser import Watched, browser  # noqa: F401  (browser is a fixture)

ROOT = Path(__file__).resolve().parents[1]
DIABETES = ROOT / "sample_models" / "diabetes_mlp"
TEXTS = ROOT / "sample_models" / "text_sentiment"
FIXED = {"id", "label", "prediction", "prediction_label", "target", "target_label", "logit", "relevance_sum", "top_positive", "top_negative"}

pytestmark = pytest.mark.skipif(not (DIABETES / "model.yaml").is_file(), reason="sample_models/ is not built")


def page_means(page: Path) -> dict[str, float]:
    """feature -> mean |relevance| as the page's feature table states it."""
    text = page.read_text(encoding="utf-8")
    return {html.unescape(name): float(value) for name, value in re.findall(r'<tr data-feature="([^"]+)" data-mean-abs="([^"]+)"', text)}


def numpy_means(path: Path) -> dict[str, float]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = [n for n in rows[0] if n not in FIXED]
    values = np.array([[float(r[n]) for n in names] for r in rows])
    return dict(zip(names, np.abs(values).mean(0)))


def run_info(page: Path) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="run">(.*?)</script>', page.read_text(), re.S).group(1))


@pytest.fixture(scope="module")
def rows_run(tmp_path_factory):
    """One `lrp explain` of the diabetes sample to -o rel.csv (the page beside it by default)."""
    folder = tmp_path_factory.mktemp("rows")
    run = lrp("explain", DIABETES / "model.yaml", DIABETES / "sample.csv", "--top-k", "2", out=folder / "rel.csv")
    assert run.code == 0, run.describe()
    return folder, run


def test_rows_page_beside_the_output_holds_the_mean_abs_relevance_numpy_finds(rows_run):
    folder, run = rows_run
    page = folder / "rel.report.html"
    assert page.is_file() and f"page {page}" in run.stderr  # the final info line names it
    found, expected = page_means(page), numpy_means(folder / "rel.csv")
    assert set(found) == set(expected) == {"age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"}
    for name in expected:
        assert found[name] == pytest.approx(expected[name], rel=1e-12)
    listed = list(found)  # the table lists them largest first
    assert listed == sorted(expected, key=lambda n: -expected[n])
    info = run_info(page)
    assert info["model"].endswith("model.yaml") and info["composite"] == "epsilon" and "torch" in info["versions"]
    text = page.read_text()
    assert 'src="data:image/png;base64,' in text and "sample-note" not in text  # 60 rows: all shown, no sample
    assert not re.search(r'(?:src|href)="(?!data:)[^"#]', text)  # nothing referenced outside the page


def test_no_report_and_stdout_write_no_page_and_report_on_stdout_leaves_no_copy(tmp_path):
    quiet = lrp("explain", DIABETES / "model.yaml", DIABETES / "sample.csv", "--no-report", out=tmp_path / "rel.csv")
    assert quiet.code == 0, quiet.describe()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel.csv"] and "page" not in quiet.stderr
    piped = lrp("explain", DIABETES / "model.yaml", DIABETES / "sample.csv", "--format", "jsonl", "--report", tmp_path / "p.html")
    assert piped.code == 0, piped.describe()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.html", "rel.csv"]  # the rows' copy for the page is gone
    streamed = [json.loads(line) for line in piped.stdout.splitlines()]
    assert len(streamed) == 60  # stdout carried every row as before
    names = [n for n in streamed[0] if n not in FIXED]
    expected = np.abs(np.array([[row[n] for n in names] for row in streamed])).mean(0)
    found = page_means(tmp_path / "p.html")
    assert [found[n] for n in names] == pytest.approx(list(expected), rel=1e-12)
    both = lrp("explain", DIABETES / "model.yaml", DIABETES / "sample.csv", "--report", tmp_path / "x.html", "--no-report")
    assert both.code == 2 and "exclude each other" in both.stderr


def test_lrp_report_rebuilds_the_rows_page_from_csv_and_parquet(rows_run, tmp_path):
    folder, _ = rows_run
    (tmp_path / "rel.csv").write_bytes((folder / "rel.csv").read_bytes())
    rebuilt = lrp("report", tmp_path / "rel.csv")
    assert rebuilt.code == 0, rebuilt.describe()
    page = tmp_path / "rel.report.html"
    assert page_means(page) == page_means(folder / "rel.report.html")  # the same numbers as the run's own page
    assert "model, composite and versions unknown" in page.read_text()  # a CSV holds no run metadata
    again = lrp("report", folder / "rel.csv", "--report", tmp_path / "again.html")  # beside the run's page: carried over
    assert again.code == 0, again.describe()
    carried = lrp("report", folder / "rel.csv")
    assert carried.code == 0 and "carried over" in (folder / "rel.report.html").read_text()
    assert run_info(folder / "rel.report.html")["composite"] == "epsilon"
    (tmp_path / "pq").mkdir()
    parquet = lrp("explain", DIABETES / "model.yaml", DIABETES / "sample.csv", out=tmp_path / "pq" / "rel.parquet")
    assert parquet.code == 0, parquet.describe()
    found, expected = page_means(tmp_path / "pq" / "rel.report.html"), page_means(page)
    assert found.keys() == expected.keys()
    for name, value in found.items():
        assert value == pytest.approx(expected[name], rel=1e-5)  # float32 columns in Parquet
    missing = lrp("report", tmp_path / "nothing.csv")
    assert missing.code == 5


def test_a_large_file_is_summed_exactly_and_sampled_uniformly(tmp_path):
    """200,000 rows: the means are exact, the page shows a 2,000-row sample and says so."""
    from lrpcli.report.table import SAMPLE_SIZE, row_stats, write_table_report

    rng = np.random.default_rng(3)
    n = 200_000
    values = rng.normal(size=(n, 3)) * np.array([1.0, 2.0, 0.5]) + np.array([0.0, 1.0, -2.0])
    path = tmp_path / "big.csv"
    with path.open("w") as handle:
        handle.write("id,prediction,target,logit,a,b,c,relevance_sum\n")
        np.savetxt(handle, np.column_stack([np.arange(n), np.zeros(n), np.zeros(n), values.sum(1), values, values.sum(1)]), fmt="%.17g", delimiter=",")
    stats = row_stats(path)
    assert stats.rows == n and stats.sample.shape == (SAMPLE_SIZE, 3)
    np.testing.assert_allclose(stats.mean_abs(), np.abs(values).mean(0), rtol=1e-12)
    order = np.array(stats.order)
    assert len(set(order)) == SAMPLE_SIZE
    np.testing.assert_array_equal(stats.sample, values[order])  # each sampled row is the row it says it is
    assert abs(order.mean() / n - 0.5) < 0.03 and (order > n // 2).mean() == pytest.approx(0.5, abs=0.05)  # uniform over the file
    page = write_table_report(path)
    text = page.read_text()
    assert f"a uniform random sample of {SAMPLE_SIZE} of the {n} rows" in text
    assert text.count('"n":') == SAMPLE_SIZE


# --------------------------------------------------------------------------- texts


def independent_word_counts(rows: list[dict], k: int = 5) -> dict[str, tuple[Counter, Counter]]:
    """Per predicted class: in how many texts each (lower-cased) word is among the k most for / against."""
    counts: dict[str, tuple[Counter, Counter]] = defaultdict(lambda: (Counter(), Counter()))
    for row in rows:
        if row["target"] != row["prediction"]:
            continue
        words = sorted(row["words"], key=lambda w: w["relevance"])
        pro, con = counts[row.get("prediction_label") or str(row["prediction"])]
        pro.update(w["word"].lower() for w in words[::-1][:k] if w["relevance"] > 0)
        con.update(w["word"].lower() for w in words[:k] if w["relevance"] < 0)
    return counts


def page_words(page: Path) -> dict[str, dict[str, dict[str, int]]]:
    text = page.read_text(encoding="utf-8")
    found: dict[str, dict[str, dict[str, int]]] = {}
    for cls, box in re.findall(r'<div class="cls" data-cls="([^"]+)">(.*?)</div></div>', text, re.S):
        found[html.unescape(cls)] = {
            side: {html.unescape(w): int(c) for w, c in re.findall(r'<tr data-word="([^"]*)" data-count="(\d+)"', table)}
            for side, table in re.findall(r'<table class="words-(for|against)">(.*?)</table>', box, re.S)
        }
    return found


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("texts")
    run = lrp("explain", TEXTS / "bag.yaml", TEXTS / "texts.txt", out=folder / "words.jsonl")
    assert run.code == 0, run.describe()
    return folder, run


def test_text_page_beside_the_output_lists_the_words_a_counter_finds(text_run):
    folder, run = text_run
    page = folder / "words.report.html"
    assert page.is_file() and f"report page {page}" in run.stderr
    rows = [json.loads(line) for line in (folder / "words.jsonl").read_text().splitlines()]
    expected = independent_word_counts(rows)
    found = page_words(page)
    assert set(found) == set(expected) == {"negative", "positive"}
    for cls, (pro, con) in expected.items():
        for side, counter in (("for", pro), ("against", con)):
            shown = found[cls][side]
            assert len(shown) == min(15, len(counter))
            assert all(counter[w] == c for w, c in shown.items())  # the counts are right
            assert min(shown.values()) >= max((c for w, c in counter.items() if w not in shown), default=0)  # and the top ones
    text = page.read_text()
    assert text.count('"pieces":') == len(rows) and "sample-note" not in text
    assert run_info(page)["composite"] == "epsilon"


def test_text_report_options_and_rebuild(text_run, tmp_path):
    folder, _ = text_run
    none = lrp("explain", TEXTS / "bag.yaml", TEXTS / "texts.txt", "--no-report", "--html", tmp_path / "shaded.html", out=tmp_path / "w.jsonl")
    assert none.code == 0, none.describe()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shaded.html", "w.jsonl"]  # --html: the script-free page as before
    assert "<script" not in (tmp_path / "shaded.html").read_text()
    rebuilt = lrp("report", tmp_path / "w.jsonl")
    assert rebuilt.code == 0, rebuilt.describe()
    assert page_words(tmp_path / "w.report.html") == page_words(folder / "words.report.html")
    assert "model, composite and versions unknown" in (tmp_path / "w.report.html").read_text()
    tokens = lrp("explain", TEXTS / "bag.yaml", TEXTS / "texts.txt", "--format", "csv", out=tmp_path / "tokens.csv")
    assert tokens.code == 0 and (tmp_path / "tokens.report.html").is_file()  # token rows: the page from the run itself
    assert page_words(tmp_path / "tokens.report.html") == page_words(folder / "words.report.html")
    again = lrp("report", tmp_path / "tokens.csv")
    assert again.code == 5 and "JSONL" in again.stderr


def test_text_page_of_many_texts_shows_a_sample_and_counts_all(text_run):
    from lrpcli.report.text import TextReport

    folder, _ = text_run
    rows = [json.loads(line) for line in (folder / "words.jsonl").read_text().splitlines()]
    report = TextReport(sample_size=20)
    report.write(rows)
    data = report.data("words.jsonl")
    assert data["is_sample"] and data["sampled"] == 20 and data["total"] == len(rows)
    ns = [card["n"] for card in data["cards"]]
    assert ns == sorted(ns) and len(set(ns)) == 20  # in file order
    assert all(card["id"] == rows[card["n"] - 1]["id"] for card in data["cards"])
    expected = independent_word_counts(rows)
    for entry in data["words"]:
        assert {w["word"]: w["count"] for w in entry["for"]} == {w: expected[entry["cls"]][0][w] for w in (x["word"] for x in entry["for"])}
        assert entry["texts"] == sum(1 for r in rows if r["prediction_label"] == entry["cls"])


# --------------------------------------------------------------------------- in the browser


def test_rows_page_in_the_browser(rows_run, browser, tmp_path):  # noqa: F811
    folder, _ = rows_run
    watched = Watched(browser)
    watched.open(folder / "rel.report.html", ready="#rows tbody tr")
    page = watched.page
    assert page.locator("#count").get_attribute("data-shown") == "60"
    assert page.evaluate("document.getElementById('bar-chart').naturalWidth") > 0
    assert page.evaluate("document.getElementById('swarm-chart').naturalWidth") > 0
    page.fill("#idq", "db01")
    ids = page.locator("#rows tbody tr td:nth-child(2)").all_text_contents()
    assert ids and all("db01" in i for i in ids)
    page.fill("#idq", "")
    page.click("th[data-key=sum]")  # largest relevance sum first
    with (folder / "rel.csv").open(newline="") as handle:
        sums = sorted((float(r["relevance_sum"]) for r in csv.DictReader(handle)), reverse=True)
    first = float(page.locator("#rows tbody tr td:nth-child(7)").first.text_content())
    assert first == pytest.approx(sums[0], rel=1e-5)
    page.screenshot(path=str(tmp_path / "rows-report.png"), full_page=True)
    assert watched.outside(folder) == [] and watched.errors == []


def test_text_page_in_the_browser(text_run, browser, tmp_path):  # noqa: F811
    folder, _ = text_run
    watched = Watched(browser)
    watched.open(folder / "words.report.html", ready=".text .w")
    page = watched.page
    assert page.locator("#count").get_attribute("data-shown") == "200"
    page.select_option("#cls", "positive")
    preds = page.locator("#texts .text").evaluate_all("els => els.map(e => e.dataset.pred)")
    assert preds and set(preds) == {"positive"}
    assert page.locator('.cls[data-cls="negative"]').is_hidden() and page.locator('.cls[data-cls="positive"]').is_visible()
    rows = [json.loads(line) for line in (folder / "words.jsonl").read_text().splitlines()]
    assert int(page.locator("#count").get_attribute("data-shown")) == sum(r["prediction_label"] == "positive" for r in rows)
    strong = page.locator("#texts .w").evaluate_all("els => els.filter(e => e.style.color).length")
    assert strong > 0  # white text on the strong shades
    page.screenshot(path=str(tmp_path / "text-report.png"), full_page=True)
    assert watched.outside(folder) == [] and watched.errors == []


def test_a_jsonl_result_reads_the_same_with_pyarrow_and_the_json_module(tmp_path, monkeypatch):
    """The page's pass over a JSON-lines result: pyarrow's reader and the json module (which reads the
    first chunk, and any chunk pyarrow refuses) give the same sums, sample and labels."""
    from lrpcli.report import table

    out = tmp_path / "rel.jsonl"
    assert lrp("explain", DIABETES / "model.yaml", DIABETES / "sample.csv", "--top-k", "2", "--no-report", "-q", out=out).code == 0
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines * 40) + "\n")  # several chunks
    monkeypatch.setattr(table, "CHUNK", 1000)
    fast = table.row_stats(out, sample_size=50)
    monkeypatch.setattr(table, "_arrow_json_columns", lambda *args: None)  # every chunk refused
    slow = table.row_stats(out, sample_size=50)
    assert fast.rows == slow.rows == 40 * len(lines)
    assert np.array_equal(fast.abs_sum, slow.abs_sum) and np.array_equal(fast.sample, slow.sample)
    assert fast.meta == slow.meta and fast.targets == slow.targets
    rows = [json.loads(line) for line in lines]
    assert np.allclose(fast.mean_abs(), [np.mean([abs(r[f]) for r in rows]) for f in fast.features])
