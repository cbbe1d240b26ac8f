"""`lrp concepts` into an image run's folder joins its page (issue 29 item 3): OUT/report.html gains a concepts
section linking to OUT/concepts.html, which links back; concepts.html shows what OUT holds of both kinds
(conditional heatmaps from concepts.csv, reference crops from references.csv), whichever ran last."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from cli_support import lrp, read_csv, save_torchscript, tiny_gray, write_image
from report_browser import Watched, browser  # noqa: F401  (browser is a fixture)
from test_report import resolves_inside

COMMON = ["--mode", "l", "--mean", "0.5", "--std", "0.5", "-q"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """An image run into OUT, its page saved as it was, then lrp concepts --top 2 and --reference 2 into OUT."""
    root = tmp_path_factory.mktemp("concepts-report")
    model = save_torchscript(tiny_gray(), root / "m.ts")
    for i in range(6):
        write_image(root / "imgs" / f"i{i}.png", 40 + i, size=(8, 8), mode="L")
    out = root / "out"
    assert lrp("explain", model, root / "imgs", *COMMON, out=out).code == 0
    before = (out / "report.html").read_text(encoding="utf-8")
    top = lrp("concepts", model, root / "imgs", "--layer", "conv", "--top", "2", *COMMON, out=out)
    assert top.code == 0, top.describe()
    after_top = (out / "report.html").read_text(encoding="utf-8")
    reference = lrp("concepts", model, root / "imgs", "--layer", "conv", "--reference", "2", *COMMON, out=out)
    assert reference.code == 0, reference.describe()
    return {"root": root, "model": model, "out": out, "before": before, "after_top": after_top}


def _section(html: str) -> str:
    start = html.index('<section class="global" id="concepts">')
    return html[start : html.index("</section>", start)]


def _images(html: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]+)"', html)


def test_the_report_gains_a_concepts_section_that_counts_each_channels_top_places(run):
    """Counted here from concepts.csv: per input its most relevant channel; the section lists the channels by
    how many inputs they are the most relevant for, each with a conditional heatmap drawn for one of them."""
    out = run["out"]
    assert 'id="concepts"' not in run["before"]
    rows = read_csv(out / "concepts.csv")
    best = {}
    for row in rows:  # each input's most relevant channel, from the table itself
        if row["input"] not in best or float(row["relevance"]) > float(best[row["input"]]["relevance"]):
            best[row["input"]] = row
    counts = Counter(int(row["channel"]) for row in best.values())
    totals = Counter()
    for row in rows:
        totals[int(row["channel"])] += float(row["relevance"])
    section = _section(run["after_top"])
    assert 'href="concepts.html"' in section and "(lrp concepts)" in section
    shown = [(int(c), int(n)) for c, n in re.findall(r"<b>channel (\d+)</b><br><span>most relevant for (\d+) of 6 input", section)]
    ranked = sorted(counts.items(), key=lambda item: (-item[1], -totals[item[0]], item[0]))  # ties: the more relevant overall
    assert shown == ranked[: len(shown)] and sum(n for _, n in shown) == 6
    pictures = _images(section)
    assert len(pictures) == len(shown) and all(resolves_inside(out, p) for p in pictures)
    for (channel, _), picture in zip(shown, pictures):
        assert picture.endswith(f"/conv/{channel}.png")
    # after --reference: the ranked channels' most relevant crops as well
    section = _section((out / "report.html").read_text(encoding="utf-8"))
    crops = [r["crop"] for r in read_csv(out / "references.csv") if r["kind"] == "relevance"]
    assert set(crops) <= set(_images(section)) and all(resolves_inside(out, p) for p in _images(section))


def test_concepts_html_shows_both_kinds_and_links_back(run):
    out = run["out"]
    html = (out / "concepts.html").read_text(encoding="utf-8")
    drawn = {r["heatmap"] for r in read_csv(out / "concepts.csv") if r["heatmap"]}
    crops = {r["crop"] for r in read_csv(out / "references.csv")}
    assert len(drawn) == 6 * 2 and len(crops) == 2 * 4 * 2
    assert set(_images(html)) == drawn | crops and all(resolves_inside(out, p) for p in _images(html))
    assert '<a href="report.html">' in html
    assert "<script" not in html


def test_without_a_run_there_is_no_report_and_no_link(run):
    root = run["root"]
    alone = lrp("concepts", run["model"], root / "imgs", "--layer", "conv", "--top", "1", *COMMON, out=root / "alone")
    assert alone.code == 0, alone.describe()
    assert not (root / "alone" / "report.html").exists()
    assert "report.html" not in (root / "alone" / "concepts.html").read_text(encoding="utf-8")


def _loaded(page, selector: str) -> list[str]:
    """Wait until the images under ``selector`` have loaded (scrolled into view: they load lazily); the ones that
    did not (polled from here: page.wait_for_function's string predicates are eval, which the pages' policy refuses)."""
    import time

    page.locator(selector).last.scroll_into_view_if_needed()
    script = f"Array.from(document.querySelectorAll({selector!r})).filter(i => !(i.complete && i.naturalWidth)).map(i => i.src)"
    for _ in range(100):
        missing = page.evaluate(script)
        if not missing:
            break
        time.sleep(0.05)
    return missing


def test_the_pages_in_a_browser(run, browser):
    out = run["out"]
    watched = Watched(browser)
    page = watched.page
    watched.open(out)
    assert page.locator("#concepts img").count() > 0 and not _loaded(page, "#concepts img")
    page.click("#concepts a[href='concepts.html']")
    page.wait_for_selector("figure img")
    assert page.locator("figure img").count() == 6 * 2 + 2 * 4 * 2 and not _loaded(page, "figure img")
    page.click("a[href='report.html']")
    page.wait_for_selector("#concepts")
    assert page.url.endswith("/report.html")
    assert watched.requests and not watched.outside(out), watched.outside(out)
    assert not watched.errors, watched.errors
    page.close()


def test_reference_shards_merged_into_an_image_runs_folder_join_its_report(tmp_path):
    """`lrp merge OUT` after `lrp concepts --reference K --shard I/N` into an image run's folder rebuilds OUT/report.html
    with the concepts section (the merge wrote concepts.html only: the report had no section until a later run)."""
    model = save_torchscript(tiny_gray(), tmp_path / "m.ts")
    for i in range(6):
        write_image(tmp_path / "imgs" / f"i{i}.png", 40 + i, size=(8, 8), mode="L")
    out = tmp_path / "out"
    assert lrp("explain", model, tmp_path / "imgs", *COMMON, out=out).code == 0
    for index in (1, 2):
        shard = lrp("concepts", model, tmp_path / "imgs", "--layer", "conv", "--reference", "2", "--shard", f"{index}/2", *COMMON, out=out)
        assert shard.code == 0, shard.describe()
    (out / "report.html").write_text((out / "report.html").read_text(encoding="utf-8").replace('id="concepts"', 'id="gone"'), encoding="utf-8")
    merged = lrp("merge", out)
    assert merged.code == 0, merged.describe()
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="concepts"' in html and "concepts.html" in _section(html)
    assert {row["input"] for row in read_csv(out / "references.csv")} <= {f"i{i}.png" for i in range(6)}
