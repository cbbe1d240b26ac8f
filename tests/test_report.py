"""``OUT/report.html``: the static page of an image run (lrpcli/report/, ``lrp report``, the hook in ``lrp explain``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from cli_support import lrp, minivgg, read_csv, save_torchscript, write_image
from report_browser import Watched, browser  # noqa: F401  (browser is a fixture)


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One run on images outside OUT (with one broken file: a partly failed run), one on images inside OUT."""
    root = tmp_path_factory.mktemp("report")
    model = save_torchscript(minivgg(seed=1), root / "model.ts")
    for i in range(7):
        write_image(root / "imgs" / f"img_{i:02d}.png", seed=i)
    write_image(root / "imgs" / "sub dir" / "odd #name&<b>.png", seed=11)  # a name to escape and to URL-quote
    (root / "imgs" / "broken.png").write_bytes(b"not a png at all")
    outside = lrp("explain", model, root / "imgs", "--classes", _classes(root), out=root / "out")
    inner = root / "inner"
    for i in range(3):
        write_image(inner / "inputs" / f"in_{i}.png", seed=20 + i)
    inside = lrp("explain", model, inner / "inputs", "--classes", _classes(root), out=inner)
    return {"root": root, "outside": outside, "inside": inside}


def _classes(root: Path) -> Path:
    path = root / "classes.txt"
    path.write_text("cat\ndog\nbird\nfish\n", encoding="utf-8")
    return path


def embedded(html: str) -> list[dict]:
    match = re.search(r'<script type="application/json" id="rows">(.*?)</script>', html, re.S)
    assert match, "the page has no embedded rows"
    return json.loads(match.group(1))


def resolves_inside(out: Path, url: str) -> bool:
    assert not re.match(r"^[a-z][a-z0-9+.-]*:", url, re.I) and not url.startswith(("/", "//")), f"{url} is not relative"
    target = os.path.realpath(out / unquote(url))
    return target.startswith(os.path.realpath(out) + os.sep) and os.path.isfile(target)


def test_explain_writes_the_page(world):
    run = world["outside"]
    assert run.code == 5, run.describe()  # broken.png failed, the others were explained
    assert "report.html" in run.files(), run.describe()
    html = (run.out / "report.html").read_text(encoding="utf-8")
    rows = run.rows()
    cards = embedded(html)
    assert [c["input"] for c in cards] == [r["input"] for r in rows] and len(rows) == 8
    for card, row in zip(cards, rows):
        assert card["pred"] == row["prediction_label"] and card["target"] == row["target_label"]
        assert card["gap"] == pytest.approx(float(row["conservation_gap"]), rel=1e-12)
        assert card["prob"] == pytest.approx(float(row["probability"]), rel=1e-12)
        assert card["sum"] == pytest.approx(float(row["relevance_sum"]), rel=1e-12)
        assert card["heat"] and resolves_inside(run.out, card["heat"])
        assert card["img"] is None  # the inputs lie outside OUT: not referenced
    assert "input images</dt><dd>lie outside this folder" in html
    # the header: model, composite, versions, and the failure with its message (escaped)
    info = run.run_json()
    assert info["composite"]["name"] in html and f"lrpcli {info['lrpcli']}" in html and f"torch {info['torch']}" in html
    assert len(info["failures"]) == 1 and "broken.png" in html
    from markupsafe import escape

    assert str(escape(info["failures"][0]["message"])) in html
    # data is escaped: the odd name appears as text, never as markup
    assert "<b>.png" not in html
    assert "odd #name&<b>.png" not in html and "odd #name\\u0026\\u003cb\\u003e.png" in html
    # nothing from the network, and every static src/href stays inside OUT
    assert not re.search(r"https?://", html)
    for url in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html):
        assert resolves_inside(run.out, url), url
    assert 'loading = "lazy"' in html


def test_inputs_inside_out_are_shown(world):
    run = world["inside"]
    assert run.code == 0, run.describe()
    cards = embedded((run.out / "report.html").read_text(encoding="utf-8"))
    assert len(cards) == 3
    for card in cards:
        assert card["img"] == f"inputs/{card['input']}" and resolves_inside(run.out, card["img"])


def test_report_command_rebuilds_the_page(world, tmp_path):
    out = world["outside"].out
    first = (out / "report.html").read_text(encoding="utf-8")
    (out / "report.html").unlink()
    again = lrp("report", out)
    assert again.code == 0, again.describe()
    assert (out / "report.html").read_text(encoding="utf-8") == first


def test_report_command_refuses_a_folder_without_summary(tmp_path):
    from cli_support import refused

    (tmp_path / "empty").mkdir()
    refused(lrp("report", tmp_path / "empty"), 5, "no summary.csv")
    refused(lrp("report", tmp_path / "missing"), 5, "no such folder")


def test_shard_summaries_make_a_page(world, tmp_path):
    """A folder of shards (not merged yet) has no summary.csv: the shards' summaries make the page."""
    out = tmp_path / "sharded"
    model, imgs = world["root"] / "model.ts", world["root"] / "imgs"
    for k in (1, 2):
        lrp("explain", model, imgs, "--shard", f"{k}/2", "-q", out=out)
    assert not (out / "summary.csv").exists()
    cards = embedded((out / "report.html").read_text(encoding="utf-8"))
    assert sorted(c["input"] for c in cards) == sorted(r["input"] for r in world["outside"].rows())


def test_a_failure_to_write_the_page_is_a_warning(world, tmp_path, monkeypatch):
    import lrpcli.report

    def broken(out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lrpcli.report, "write_report", broken)
    model, inner = world["root"] / "model.ts", world["root"] / "inner" / "inputs"
    run = lrp("explain", model, inner, out=tmp_path / "o")
    assert run.code == 0, run.describe()
    assert "could not write" in run.stderr and "report.html" in run.stderr
    assert len(run.rows()) == 3


# --------------------------------------------------------------------------- the global view: class means


def _bwr(unit: np.ndarray) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["bwr"](np.clip(unit, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)


def class_maps(html: str) -> list[dict]:
    return [
        {"cls": m.group(1), "count": int(m.group(2)), "src": m.group(3)}
        for m in re.finditer(r'<figure class="classmap" data-cls="([^"]*)" data-count="(\d+)"><img loading="lazy" src="([^"]*)"', html)
    ]


def test_class_mean_maps_are_the_mean_of_each_class_s_arrays(world):
    run = world["outside"]
    html = (run.out / "report.html").read_text(encoding="utf-8")
    rows = run.rows()
    expected: dict[str, list[np.ndarray]] = {}
    for row in rows:  # one target per input: every row counts, under its predicted class
        expected.setdefault(row["prediction_label"], []).append(np.load(run.out / row["relevance"]).astype(np.float64).sum(axis=0))
    maps = class_maps(html)
    assert [m["cls"] for m in maps] == sorted(expected) and len(expected) >= 2
    assert html.index('id="global"') < html.index('id="cards"')  # at the top
    for m in maps:
        arrays = expected[m["cls"]]
        assert m["count"] == len(arrays) and f"<b>{m['cls']}</b>" in html
        assert m["src"] == f"report/class-{m['cls']}.png" and resolves_inside(run.out, m["src"])
        mean = np.mean(arrays, axis=0)
        with Image.open(run.out / unquote(m["src"])) as image:
            png = np.asarray(image.convert("RGB"))
        factor = png.shape[1] // mean.shape[1]
        assert png.shape[1] >= 256  # drawn large enough for the bar's labels to be read in the page
        centres = png[factor // 2 : mean.shape[0] * factor : factor, factor // 2 :: factor]
        np.testing.assert_array_equal(centres, _bwr(0.5 + 0.5 * mean / np.abs(mean).max()))  # drawn at its own max |mean|
        from lrpcli.render.heatmaps import legend_strip

        np.testing.assert_array_equal(png[mean.shape[0] * factor :], legend_strip(png.shape[1], "bwr", float(np.abs(mean).max())))
    assert sorted(p.name for p in (run.out / "report").iterdir()) == sorted(f"class-{c}.png" for c in expected)


def test_class_means_of_a_top_k_run_count_each_input_once(world, tmp_path):
    """With --top-k 2 each input has two rows; its map for its predicted class is the one averaged."""
    run = lrp("explain", world["root"] / "model.ts", world["root"] / "inner" / "inputs", "--top-k", "2", "-q", out=tmp_path / "top2")
    assert run.code == 0, run.describe()
    rows = run.rows()
    assert len(rows) == 6
    html = (run.out / "report.html").read_text(encoding="utf-8")
    maps = class_maps(html)
    decided = [r for r in rows if r["target"] == r["prediction"]]
    assert sum(m["count"] for m in maps) == len(decided) == 3
    for m in maps:
        mean = np.mean([np.load(run.out / r["relevance"]).astype(np.float64).sum(axis=0) for r in decided if r["prediction"] == m["cls"]], axis=0)
        assert f"scale {float(np.abs(mean).max()):.3g}<" in html.split(f'data-cls="{m["cls"]}"', 1)[1]


def test_class_means_rebuilt_from_files_and_skipped_without_arrays(world, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(world["outside"].out, out)
    (out / "report.html").unlink()
    shutil.rmtree(out / "report")
    assert lrp("report", out).code == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert class_maps(html) == class_maps((world["outside"].out / "report.html").read_text(encoding="utf-8"))
    assert all((out / unquote(m["src"])).is_file() for m in class_maps(html))
    # one class's arrays removed: that class's map goes (its stale file too), a note says how many were left out
    rows = read_csv(out / "summary.csv")
    gone = rows[0]["prediction_label"]
    removed = [r for r in rows if r["prediction_label"] == gone]
    for row in removed:
        (out / row["relevance"]).unlink()
    assert lrp("report", out).code == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert gone not in [m["cls"] for m in class_maps(html)] and not (out / "report" / f"class-{gone}.png").exists()
    assert f"{len(removed)} of {len(rows)} input(s) left out of the class means" in html
    # no arrays at all: no maps, a note instead, and the cards as before
    shutil.rmtree(out / "relevance")
    assert lrp("report", out).code == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not class_maps(html) and "no relevance arrays in this folder" in html
    assert not list((out / "report").glob("class-*.png"))
    assert len(embedded(html)) == len(rows)


def test_inputs_inside_out_are_found_from_any_folder_and_after_a_move(world, tmp_path, monkeypatch):
    """run.json records the inputs' folder (absolute, and relative to OUT): relative arguments given in
    one folder still find the input images when `lrp report` runs in another, or OUT was moved."""
    model = world["root"] / "model.ts"
    work = tmp_path / "work"
    for i in range(2):
        write_image(work / "run" / "pictures" / f"p{i}.png", seed=30 + i)
    monkeypatch.chdir(work)
    assert lrp("explain", model, "run/pictures", "-q", out=Path("run")).code == 0
    info = json.loads((work / "run" / "run.json").read_text())
    assert info["working_folder"] == str(work.resolve()) and info["input_root_in_out"] == "pictures"
    assert info["input_root"] == str((work / "run" / "pictures").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert lrp("report", work / "run").code == 0
    cards = embedded((work / "run" / "report.html").read_text(encoding="utf-8"))
    assert [c["img"] for c in cards] == ["pictures/p0.png", "pictures/p1.png"]
    moved = tmp_path / "moved"
    shutil.move(str(work / "run"), moved)
    assert lrp("report", moved).code == 0
    cards = embedded((moved / "report.html").read_text(encoding="utf-8"))
    assert [c["img"] for c in cards] == ["pictures/p0.png", "pictures/p1.png"]
    assert all(resolves_inside(moved, c["img"]) for c in cards)


# --------------------------------------------------------------------------- in a browser


def test_page_in_a_browser(world, browser, tmp_path):
    run = world["outside"]
    rows = run.rows()
    watched = Watched(browser)
    page = watched.page
    watched.open(run.out)
    assert page.locator(".card").count() == len(rows)
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    broken = page.evaluate("Array.from(document.images).filter(i => !i.naturalWidth).map(i => i.src)")
    assert not broken, f"images that did not load: {broken}"
    # filter by predicted class: the cards shown are that class's rows
    cls, count = Counter(r["prediction_label"] for r in rows).most_common()[-1]
    page.select_option("#cls", cls)
    assert page.locator(".card").count() == count
    assert set(page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.pred)")) == {cls}
    assert page.locator("#count").get_attribute("data-shown") == str(count)
    # sort by |gap|: the largest gap first; a gap threshold keeps the rows at or above it
    page.select_option("#cls", "")
    page.select_option("#sort", "gap")
    worst = max(rows, key=lambda r: abs(float(r["conservation_gap"])))
    assert page.locator(".card").first.get_attribute("data-input") == worst["input"]
    threshold = sorted(abs(float(r["conservation_gap"])) for r in rows)[len(rows) // 2]
    page.fill("#gapmin", repr(threshold))
    assert page.locator(".card").count() == sum(abs(float(r["conservation_gap"])) >= threshold for r in rows)
    assert "misclassified" not in page.content()  # summary.csv of images has no truth column
    # the class means at the top load, and a click on one shows that class's cards
    maps = page.locator("figure.classmap img")
    assert maps.count() == len({r["prediction_label"] for r in rows})
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    assert page.evaluate("Array.from(document.querySelectorAll('figure.classmap img')).filter(i => i.naturalWidth >= 128).length") == maps.count()
    page.fill("#gapmin", "")
    page.locator("figure.classmap").first.click()
    first = page.locator("figure.classmap").first.get_attribute("data-cls")
    assert set(page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.pred)")) == {first}
    assert page.locator(".card").count() == sum(r["prediction_label"] == first for r in rows)
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert watched.requests and not watched.outside(run.out), watched.outside(run.out)
    assert not watched.errors, watched.errors
    page.close()


def test_page_shows_inputs_inside_out(world, browser):
    run = world["inside"]
    watched = Watched(browser)
    watched.open(run.out)
    watched.page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    assert watched.page.evaluate("Array.from(document.querySelectorAll('#cards img')).filter(i => i.naturalWidth > 0).length") == 6  # input + heatmap
    assert not watched.outside(run.out) and not watched.errors
    watched.page.close()


# --------------------------------------------------------------------------- 10,000 inputs


def synthetic(out: Path, rows: int = 10_000) -> Path:
    """summary.csv of ``rows`` inputs sharing a few heatmaps, a label column (truth) and a run.json, written by hand."""
    from lrpcli.outputs import SUMMARY_COLUMNS

    rng = np.random.default_rng(0)
    (out / "heatmaps").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(out / "heatmaps" / f"h{i}.png")
    classes = ["cat", "dog", "bird", "fish"]
    lines = [",".join(SUMMARY_COLUMNS + ("label",))]
    for i in range(rows):
        pred = int(rng.integers(4))
        lines.append(
            f"img_{i:05d}.png,{pred},{classes[pred]},{rng.random():.6f},{pred},{classes[pred]},{rng.normal():.6f},"
            f"{rng.normal():.6f},{rng.normal() / 10:.6f},heatmaps/h{i % 4}.png,relevance/img_{i:05d}.npy,{classes[int(rng.integers(4))]}"
        )
    (out / "summary.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "run.json").write_text(json.dumps({"lrpcli": "0.1.0", "model": "m.ts", "composite": {"name": "epsilon_plus_flat"}, "inputs": rows, "explained": rows, "failures": []}))
    return out


def test_ten_thousand_rows_open_at_once(browser, tmp_path):
    from lrpcli.report import write_report

    out = synthetic(tmp_path / "big")
    started = time.perf_counter()
    write_report(out)
    built = time.perf_counter() - started
    assert built < 10, f"building the page of 10,000 rows took {built:.1f}s"
    watched = Watched(browser)
    page = watched.page
    started = time.perf_counter()
    watched.open(out)
    opened = time.perf_counter() - started
    drawn = page.evaluate("performance.now()")
    print(f"10,000 rows: page built in {built:.2f}s, opened with its first cards in {opened:.2f}s (performance.now() {drawn:.0f} ms)")
    assert opened < 2.0, f"the page of 10,000 rows took {opened:.2f}s to show its first cards"
    assert page.locator(".card").count() == 200  # one page, not 10,000 cards
    assert page.locator("#count").get_attribute("data-shown") == "10000"
    page.click("#next")
    assert page.locator(".card").first.get_attribute("data-input") == "img_00200.png"
    # the truth column makes a "misclassified" filter
    rows = read_csv(out / "summary.csv")
    wrong = sum(r["label"] != r["prediction_label"] for r in rows)
    page.check("#wrong")
    assert page.locator("#count").get_attribute("data-shown") == str(wrong)
    assert not watched.outside(out) and not watched.errors, (watched.outside(out), watched.errors)
    page.close()


def test_docs_screenshot_of_the_sample(browser, tmp_path):
    """Refreshes docs/report.png from the shapes sample when LRP_DOCS_SCREENSHOT=1 (not in ordinary runs)."""
    if os.environ.get("LRP_DOCS_SCREENSHOT") != "1":
        pytest.skip("set LRP_DOCS_SCREENSHOT=1 to refresh docs/report.png")
    root = Path(__file__).resolve().parents[1]
    sample = root / "sample_models" / "shapes_minivgg"
    out = tmp_path / "shapes"
    run = lrp("explain", sample / "model.yaml", sample / "images", "-q", out=out)
    assert run.code == 0, run.describe()
    watched = Watched(browser)
    watched.open(out)
    watched.page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    (root / "docs").mkdir(exist_ok=True)
    watched.page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    shutil.copyfile(tmp_path / "report.png", root / "docs" / "report.png")


def test_no_report_writes_no_page_and_report_elsewhere_is_refused(world, tmp_path):
    model = world["root"] / "model.ts"
    images = world["root"] / "imgs"
    quiet = lrp("explain", model, images / "img_00.png", "--no-report", out=tmp_path / "a")
    assert quiet.code == 0 and not (tmp_path / "a" / "report.html").exists()
    elsewhere = lrp("explain", model, images / "img_00.png", "--report", tmp_path / "page.html", out=tmp_path / "b")
    assert elsewhere.code == 2 and "OUT/report.html" in elsewhere.stderr and not (tmp_path / "b").exists()
    same = lrp("explain", model, images / "img_00.png", "--report", tmp_path / "c" / "report.html", out=tmp_path / "c")
    assert same.code == 0 and (tmp_path / "c" / "report.html").is_file()
