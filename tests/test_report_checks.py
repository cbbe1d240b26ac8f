"""The report pages of ``lrp evaluate`` (OUT/report.html, rebuilt by ``lrp report OUT``) and of
``lrp check-conservation --report FILE``: the numbers on them, checked against the JSON/CSV the runs
write, and each page in headless Chromium."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
from pathlib import Path

import pytest

from cli_support import lrp
from report_browser import Watched, browser  # noqa: F401  (browser is a fixture)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
SHAPES = SAMPLES / "shapes_minivgg"
TEXTS = SAMPLES / "text_sentiment"

pytestmark = pytest.mark.skipif(not (SHAPES / "model.yaml").is_file(), reason="sample_models/ is not built")


def cells(fragment: str) -> dict[str, str]:
    """data-key -> data-value of the cells in an HTML fragment."""
    return {key: html.unescape(value) for key, value in re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', fragment)}


def method_rows(page: str, table_id: str) -> dict[str, dict[str, str]]:
    table = re.search(rf'<table[^>]*id="{table_id}".*?</table>', page, re.S).group(0)
    return {html.unescape(name): cells(row) for name, row in re.findall(r'<tr data-method="([^"]+)"[^>]*>(.*?)</tr>', table, re.S)}


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


# --------------------------------------------------------------------------- lrp evaluate


@pytest.fixture(scope="module")
def image_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    run = lrp(
        "evaluate", SHAPES / "model.yaml", SHAPES / "images", "--masks", SHAPES / "masks",
        "-c", "epsilon_plus_flat", "--patch", "8", "--steps", "3", "--sanity-layers", "1", "-q", out=out,
    )
    assert run.code == 0, run.describe()
    return out


@pytest.fixture(scope="module")
def text_eval(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-text")
    lines = (TEXTS / "planted.jsonl").read_text(encoding="utf-8").splitlines()[:12]
    (root / "planted.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = root / "out"
    run = lrp(
        "evaluate", TEXTS / "bag.yaml", root / "planted.jsonl", "--text-col", "text", "--planted-col", "planted",
        "-c", "epsilon", "--replace", "unk", "--steps", "3", "--baseline", "random", "-q", out=out,
    )
    assert run.code == 0, run.describe()
    return out


def test_evaluate_page_shows_the_json_s_metrics(image_eval):
    data = json.loads((image_eval / "evaluation.json").read_text())
    page = (image_eval / "report.html").read_text(encoding="utf-8")
    rows = method_rows(page, "metrics-table")
    assert set(rows) == set(data["methods"]) == {"epsilon_plus_flat", "gradient_x_input", "random"}
    for name, entry in data["methods"].items():
        shown = rows[name]
        assert float(shown["aopc_morf"]) == entry["aopc"]["morf"]
        assert float(shown["aopc_lerf"]) == entry["aopc"]["lerf"]
        assert float(shown["gap"]) == entry["aopc"]["gap"]
        assert float(shown["aopc_probability_morf"]) == entry["aopc_probability"]["morf"]
        assert float(shown["relevance_mass_accuracy"]) == entry["localisation"]["relevance_mass_accuracy"]
    # and the CSV (written independently, 9 significant digits) agrees
    with (image_eval / "evaluation.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            key = "aopc_morf" if row["order"] == "morf" else "aopc_lerf"
            assert abs(float(rows[row["method"]][key]) - float(row["aopc"])) <= 1e-7 * max(1.0, abs(float(row["aopc"])))
    # what is better is said for each column; the best gap is marked
    assert page.count("higher is better") >= 3 and "lower is better" in page
    best_gap = max(data["methods"], key=lambda n: data["methods"][n]["aopc"]["gap"])
    assert re.search(rf'data-method="{best_gap}".*?data-key="gap" data-value="[^"]*" class="best"', page)
    # sanity: the randomised layer and the Spearman values; localisation: the mask area
    sanity = re.search(r'<section id="sanity">.*?</section>', page, re.S).group(0)
    level = data["methods"]["epsilon_plus_flat"]["sanity"]["levels"][0]
    assert level["randomised_layers"][0] in sanity and f'data-value="{level["spearman"]}"' in sanity
    assert 'data-method="random"' not in sanity  # the random baseline is not re-explained
    assert re.search(r'<section id="localisation">', page) and f'{100 * data["mask_area"]:.1f} %' in page
    # the curves: one chart per score, embedded; each method's curve numbers
    assert len(re.findall(r'<figure class="chart" data-score="(logit|probability)"><img src="data:image/png;base64,', page)) == 2
    curve = re.search(r'<details class="curve" data-method="epsilon_plus_flat">.*?</details>', page, re.S).group(0)
    values = [float(v) for v in re.findall(r'data-value="([^"]+)"', curve)]
    morf, lerf = data["methods"]["epsilon_plus_flat"]["curves"]["morf"]["logit"], data["methods"]["epsilon_plus_flat"]["curves"]["lerf"]["logit"]
    assert values == [v for pair in zip(morf, lerf) for v in pair]
    # the run: model, composite and its rules, baselines, settings
    assert "shapes_minivgg" in page and "epsilon_plus_flat" in page and "zplus" in page and "gradient_x_input" in page
    assert "8x8 patches removed in 3 steps" in page
    # no link to anything: the page is self-contained
    assert not re.findall(r'(?:src|href)="(?!data:)', page)


def test_evaluate_page_of_texts(text_eval):
    data = json.loads((text_eval / "evaluation.json").read_text())
    page = (text_eval / "report.html").read_text(encoding="utf-8")
    rows = method_rows(page, "metrics-table")
    assert set(rows) == {"epsilon", "random"}
    for name, entry in data["methods"].items():
        assert float(rows[name]["aopc_morf"]) == entry["aopc"]["morf"]
        assert float(rows[name]["relevance_mass_accuracy"]) == entry["localisation"]["relevance_mass_accuracy"]
    assert "Relevance on the planted words" in page and "column 'planted'" in page
    assert f'{100 * data["mask_area"]:.1f} % of the tokens' in page
    assert "tokens removed in 3 steps" in page and "12 text(s)" in page
    per_input = re.search(r'<table[^>]*id="per-input-table".*?</table>', page, re.S).group(0)
    assert per_input.count("<tr>") == 1 + len(data["names"])


def test_report_command_rebuilds_the_evaluate_page(image_eval, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(image_eval, copy)
    original = (copy / "report.html").read_bytes()
    (copy / "report.html").unlink()
    run = lrp("report", copy)
    assert run.code == 0, run.describe()
    assert (copy / "report.html").read_bytes() == original


def test_no_report_and_report_file(tmp_path):
    csv_model = SAMPLES / "diabetes_mlp"
    run = lrp("evaluate", csv_model / "model.yaml", csv_model / "sample.csv", "--steps", "2", "--baseline", "none", "--no-report", "-q", out=tmp_path / "none")
    assert run.code == 0, run.describe()
    assert (tmp_path / "none" / "evaluation.json").is_file() and not (tmp_path / "none" / "report.html").exists()
    page = tmp_path / "pages" / "eval.html"
    run = lrp("evaluate", csv_model / "model.yaml", csv_model / "sample.csv", "--steps", "2", "--baseline", "none", "--report", page, "-q", out=tmp_path / "elsewhere")
    assert run.code == 0, run.describe()
    assert page.is_file() and not (tmp_path / "elsewhere" / "report.html").exists()
    assert "60 CSV row(s)" in page.read_text(encoding="utf-8")
    run = lrp("evaluate", csv_model / "model.yaml", csv_model / "sample.csv", "--report", page, "--no-report", out=tmp_path / "both")
    assert run.code == 2 and "exclude each other" in run.stderr


def test_evaluate_page_in_a_browser(image_eval, browser, tmp_path):
    watched = Watched(browser)
    page = watched.page
    watched.open(image_eval, ready="#metrics-table")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    assert page.evaluate("Array.from(document.images).filter(i => i.naturalWidth > 300).length") == 2
    # sorting by AOPC MoRF (descending on the first click) puts the largest first
    data = json.loads((image_eval / "evaluation.json").read_text())
    page.click('#metrics-table th[data-key="aopc_morf"]')
    first = page.locator("#metrics-table tbody tr").first.get_attribute("data-method")
    assert first == max(data["methods"], key=lambda n: data["methods"][n]["aopc"]["morf"])
    page.screenshot(path=str(tmp_path / "evaluation.png"), full_page=True)
    assert (tmp_path / "evaluation.png").stat().st_size > 1000
    assert not _leaving(watched, image_eval), _leaving(watched, image_eval)
    assert not watched.errors, watched.errors
    page.close()


def _leaving(watched: Watched, out: Path) -> list[str]:
    """Requests that leave OUT (data: URIs are the page's own bytes)."""
    return [url for url in watched.outside(out) if not url.startswith("data:")]


# --------------------------------------------------------------------------- lrp check-conservation


@pytest.fixture(scope="module")
def conservation(tmp_path_factory):
    root = tmp_path_factory.mktemp("conservation")
    run = lrp(
        "check-conservation", SHAPES / "model.yaml", SHAPES / "images", "-c", "epsilon_plus_flat", "--tolerance", "1e-12",
        "--json", root / "report.json", "--junit", root / "junit.xml", "--report", root / "page" / "conservation.html", "-q",
    )
    assert run.code == 6, run.describe()  # a tolerance no float32 run meets
    return root


def test_conservation_page_marks_failures_and_gaps(conservation):
    data = json.loads((conservation / "report.json").read_text())
    page = (conservation / "page" / "conservation.html").read_text(encoding="utf-8")
    assert (conservation / "junit.xml").is_file()  # --junit and --json still written beside the page
    assert 'id="verdict" data-passed="false"' in page and f"{len(data['samples']) - sum(s['passed'] for s in data['samples'])} of 8 sample(s)" in page
    assert 'data-value="1e-12"' in page
    table = re.search(r'<table[^>]*id="samples-table".*?</table>', page, re.S).group(0)
    rows = re.findall(r'<tr data-index="(\d+)" data-passed="(true|false)"( class="fail")?>(.*?)</tr>', table, re.S)
    assert len(rows) == len(data["samples"]) == 8
    for index, passed, marked, body in rows:
        sample = data["samples"][int(index)]
        assert html.unescape(re.search(r'<td class="text">(.*?)</td>', body).group(1)) == sample["sample"]
        assert (passed == "true") == sample["passed"] == (sample["error"] <= data["tolerance"])
        assert bool(marked) == (not sample["passed"])
        shown = cells(body)
        assert float(shown["gap"]) == sample["gap"] and float(shown["error"]) == sample["error"]
    assert any(not s["passed"] for s in data["samples"])


def test_conservation_ledger_sums_to_the_gap(conservation):
    data = json.loads((conservation / "report.json").read_text())
    page = (conservation / "page" / "conservation.html").read_text(encoding="utf-8")
    ledgers = re.findall(r'<tbody class="ledger" data-index="(\d+)"[^>]*>(.*?)</tbody>', page, re.S)
    assert len(ledgers) == len(data["samples"])
    for index, body in ledgers:
        sample = data["samples"][int(index)]
        rows = re.findall(r'<tr data-node="([^"]+)"[^>]*>(.*?)</tr>', body, re.S)
        assert [node for node, _ in rows] == [layer["node"] for layer in reversed(sample["layers"])]  # output first
        absorbed = [float(cells(row)["absorbed"]) for _, row in rows]
        assert abs(sum(absorbed) - sample["gap"]) <= 1e-6 * max(1.0, abs(sample["logit"]))
        for (_, row), layer in zip(rows, reversed(sample["layers"])):
            shown = cells(row)
            assert float(shown["relevance_out"]) - float(shown["relevance_in"]) == pytest.approx(float(shown["absorbed"]), abs=1e-5)
            assert float(shown["bias"]) == layer["bias"] and float(shown["other"]) == layer["other"]
    assert '<tbody class="ledger" data-index="mean"' in page and 'src="data:image/png;base64,' in page


def test_conservation_writes_no_page_without_report(tmp_path):
    run = lrp("check-conservation", SAMPLES / "digits_cnn" / "model.yaml", "--random", "2", "-c", "lrp_0", "--json", tmp_path / "r.json", "-q")
    assert run.code == 0, run.describe()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_conservation_shard_page(tmp_path):
    page = tmp_path / "shard.html"
    run = lrp("check-conservation", SAMPLES / "digits_cnn" / "model.yaml", "--random", "6", "-c", "lrp_0", "--shard", "1/2", "--json", tmp_path / "r.json", "--report", page, "-q")
    assert run.code == 0, run.describe()
    data = json.loads((tmp_path / "r.json").read_text())
    text = page.read_text(encoding="utf-8")
    assert 'data-passed="true"' in text and "1/2" in text
    assert len(re.findall(r'<tr data-index="\d+"', text)) == len(data["samples"]) < 6


def test_conservation_page_in_a_browser(conservation, browser, tmp_path):
    data = json.loads((conservation / "report.json").read_text())
    folder = conservation / "page"
    watched = Watched(browser)
    page = watched.page
    watched.open(folder / "conservation.html", ready="#samples-table")
    assert page.locator("#samples-table tr.fail").count() == sum(not s["passed"] for s in data["samples"])
    # one ledger shows at a time; clicking another input's row shows its ledger
    assert page.locator("tbody.ledger:visible").count() == 1
    last = len(data["samples"]) - 1
    page.click(f'#samples-table tr[data-index="{last}"]')
    assert page.locator("tbody.ledger:visible").get_attribute("data-index") == str(last)
    page.select_option("#ledger-sample", "mean")
    assert page.locator("tbody.ledger:visible").get_attribute("data-index") == "mean"
    # sorting by error puts the largest error first
    page.click("#samples-table th:nth-child(8)")
    first = int(page.locator("#samples-table tbody tr").first.get_attribute("data-index"))
    assert data["samples"][first]["error"] == max(s["error"] for s in data["samples"])
    page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(tmp_path / "conservation.png"), full_page=True)
    assert (tmp_path / "conservation.png").stat().st_size > 1000
    assert not _leaving(watched, folder), _leaving(watched, folder)
    assert not watched.errors, watched.errors
    page.close()


def test_evaluate_page_marks_every_tied_best_value(image_eval):
    """gradient x input equals LRP-epsilon on ReLU nets: equal values are both marked best."""
    from lrpcli.report.evaluation import evaluation_data

    data = json.loads((image_eval / "evaluation.json").read_text())
    data["methods"]["twin"] = json.loads(json.dumps(data["methods"]["epsilon_plus_flat"]))
    data["methods"]["twin"]["aopc"]["lerf"] = float("nan")  # an unknown value is never best
    rows = {row["name"]: {key: is_best for key, _, is_best in row["values"]} for row in evaluation_data(data)["rows"]}
    assert rows["twin"]["aopc_morf"] == rows["epsilon_plus_flat"]["aopc_morf"]
    assert rows["twin"]["gap"] == rows["epsilon_plus_flat"]["gap"]
    assert not rows["twin"]["aopc_lerf"] and sum(r["aopc_lerf"] for r in rows.values()) >= 1


def test_conservation_page_of_a_large_gate_keeps_failures_first(conservation, monkeypatch):
    """Beyond the caps, the page keeps the failing and worst inputs' rows and ledgers (the JSON holds all)."""
    from lrpcli.report import conservation as page_module

    data = json.loads((conservation / "report.json").read_text())
    data["samples"][5]["passed"] = True  # one passing input among failures: it is left out first
    data["samples"][5]["error"] = 0.0
    data["passed"] = False
    monkeypatch.setattr(page_module, "SAMPLE_ROWS", 3)
    monkeypatch.setattr(page_module, "LEDGER_SAMPLES", 2)
    text = page_module.render_conservation(data)
    rows = [int(i) for i in re.findall(r'<tr data-index="(\d+)"', text)]
    ledgers = [int(i) for i in re.findall(r'<tbody class="ledger" data-index="(\d+)"', text)]
    failing = sorted((i for i, s in enumerate(data["samples"]) if not s["passed"]), key=lambda i: -data["samples"][i]["error"])
    assert rows == sorted(failing[:3]) and 5 not in rows
    assert len(ledgers) == 2 and set(ledgers) <= set(rows) and ledgers[0] == page_module.focus_sample(data["samples"])
    assert 'id="samples-shown"' in text and "The 3 of 8 inputs" in text
