"""The page of a language model's generations (issue 28 item 4): beside -o FILE by default, rebuilt by
``lrp report FILE``; in the browser, choosing a generated token shades the tokens before it with that token's
relevance from the JSON lines, and ranks the context's passages by it."""

from __future__ import annotations

import csv
import json
import re

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from cli_support import lrp  # noqa: E402
from report_browser import Watched, browser  # noqa: E402,F401  (browser is a fixture)
from test_generate import _model, _tokenizer  # noqa: E402

CONTEXT = "the film was good. not very boring.\n\nbad great film."


@pytest.fixture(scope="module")
def generation(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation")
    folder = root / "lm"
    _model("llama").save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    prompts = root / "qa.csv"
    with prompts.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["q", "ctx"])
        writer.writeheader()
        writer.writerows([{"q": "the film was", "ctx": CONTEXT}, {"q": "not very good", "ctx": "boring film.\n\nthe film"}])
    out = root / "g.jsonl"
    run = lrp("explain", folder, prompts, "--text-col", "q", "--context-col", "ctx", "--max-new-tokens", "3", out=out)
    assert run.code == 0, run.describe()
    return root, out, [json.loads(line) for line in out.read_text().splitlines()]


def _cards(page):
    html = page.read_text(encoding="utf-8")
    return json.loads(re.search(r'<script type="application/json" id="gendata">(.*?)</script>', html, re.S).group(1))


def test_the_page_beside_the_output_holds_each_tokens_relevance(generation):
    root, out, rows = generation
    page = root / "g.report.html"
    assert page.is_file()
    cards = _cards(page)
    assert [c["id"] for c in cards] == [r["id"] for r in rows]
    for card, row in zip(cards, rows):
        assert card["tokens"] == row["prompt_tokens"]
        for shown, token in zip(card["generated"], row["generated"]):
            assert shown["token"] == token["token"]
            assert shown["r"] == pytest.approx(token["relevance"], rel=1e-3, abs=1e-12)  # four significant digits
            assert [p["text"] for p in shown["context"]] == [p["text"] for p in token["context"]]


def test_lrp_report_rebuilds_the_page_and_names_a_damaged_line(generation, tmp_path):
    root, out, _ = generation
    rebuilt = tmp_path / "again.html"
    run = lrp("report", out, "--report", rebuilt)
    assert run.code == 0, run.describe()
    assert _cards(rebuilt) == _cards(root / "g.report.html")
    damaged = tmp_path / "damaged.jsonl"
    lines = out.read_text().splitlines()
    row = json.loads(lines[1])
    row["generated"][0]["relevance"].append(1.0)  # more values than tokens before it
    damaged.write_text(lines[0] + "\n" + json.dumps(row) + "\n")
    run = lrp("report", damaged)
    assert run.code != 0 and "damaged.jsonl:2" in run.stderr and "relevance" in run.stderr, run.describe()


def test_the_page_in_the_browser(generation, browser, tmp_path):  # noqa: F811
    root, out, rows = generation
    watched = Watched(browser)
    watched.open(root / "g.report.html", ready=".prompt")
    page = watched.page
    first = page.locator(".prompt").first
    second_token = first.locator(".t.g").nth(1)
    second_token.click()
    chosen = rows[0]["generated"][1]
    titles = first.locator(".t").evaluate_all("(spans) => spans.map(s => s.title)")
    shown = [float(t.split()[-1]) for t in titles[: len(chosen["relevance"])]]
    assert shown == pytest.approx(chosen["relevance"], rel=2e-3, abs=1e-9)
    assert all(t == "" for t in titles[len(chosen["relevance"]) :])  # nothing after the chosen token is shaded
    ranked = first.locator(".ctx tr td:nth-child(3)").all_text_contents()
    expected = [p["text"] for p in sorted(chosen["context"], key=lambda p: -p["relevance"])]
    assert ranked == expected
    page.fill("#q", "not very")
    assert page.locator("#count").get_attribute("data-shown") == "1"
    page.screenshot(path=str(tmp_path / "generation.png"))
    assert not watched.errors and not watched.outside(root)
