"""Every HTML page lrp writes carries a Content-Security-Policy that fetches nothing and runs only the
page's own inline scripts, by their sha256 ('unsafe-inline' not allowed for scripts), with no inline
event handlers left that such a policy would block (issue #24, item 6). The pages: the image run's,
the rows page, the text page, the evaluation page, the conservation page and `--html` of a text run."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import shutil
from pathlib import Path

import pytest

from cli_support import lrp
from report_browser import Watched, browser  # noqa: F401  (browser is a fixture)

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "sample_models" / "shapes_minivgg"
DIABETES = ROOT / "sample_models" / "diabetes_mlp"
TEXTS = ROOT / "sample_models" / "text_sentiment"

pytestmark = pytest.mark.skipif(not (SHAPES / "model.yaml").is_file(), reason="sample_models/ is not built")

# what marks the page as drawn by its script (images, rows, text pages), else a sortable table to click
READY = {"images": "body[data-ready='1']", "rows": "body[data-ready='1']", "text": "body[data-ready='1']", "evaluation": "table.sortable", "conservation": "table.sortable"}


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("policy")
    found: dict[str, Path] = {}
    run = lrp("explain", SHAPES / "model.yaml", SHAPES / "images", out=root / "images")
    assert run.code == 0, run.describe()
    found["images"] = root / "images" / "report.html"
    run = lrp("explain", DIABETES / "model.yaml", DIABETES / "sample.csv", out=root / "rel.csv")
    assert run.code == 0, run.describe()
    found["rows"] = root / "rel.report.html"
    run = lrp("explain", TEXTS / "bag.yaml", TEXTS / "texts.txt", "--html", root / "shaded.html", out=root / "words.jsonl")
    assert run.code == 0, run.describe()
    found["text"] = root / "words.report.html"
    found["html"] = root / "shaded.html"
    run = lrp("evaluate", DIABETES / "model.yaml", DIABETES / "sample.csv", "--steps", "2", out=root / "eval")
    assert run.code == 0, run.describe()
    found["evaluation"] = root / "eval" / "report.html"
    run = lrp("check-conservation", SHAPES / "model.yaml", SHAPES / "images", "--report", root / "conservation.html")
    assert run.code in (0, 6), run.describe()
    found["conservation"] = root / "conservation.html"
    for page in found.values():
        assert page.is_file(), page
    return found


def policy_of(text: str) -> dict[str, list[str]]:
    """The page's policy by directive; there must be exactly one, in the head, before any content."""
    metas = re.findall(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', text)
    assert len(metas) == 1, metas
    head = text[: text.index("<title>")]
    assert "Content-Security-Policy" in head  # before the first user string (the title)
    policy: dict[str, list[str]] = {}
    for directive in html.unescape(metas[0]).split(";"):
        name, *values = directive.split()
        policy[name] = values
    return policy


def inline_scripts(text: str) -> list[str]:
    """The text of every script the browser would run (not the JSON data blocks)."""
    found = []
    for attributes, body in re.findall(r"<script\b([^>]*)>(.*?)</script>", text, re.S | re.I):
        kind = re.search(r'type="([^"]*)"', attributes)
        if kind and kind.group(1).lower() not in ("", "text/javascript", "module"):
            continue
        found.append(body)
    return found


def sha256_source(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode() + "'"


@pytest.mark.parametrize("name", ["images", "rows", "text", "evaluation", "conservation"])
def test_a_report_page_runs_only_its_own_scripts_by_hash(pages, name):
    text = pages[name].read_text(encoding="utf-8")
    policy = policy_of(text)
    assert policy["default-src"] == ["'none'"]
    scripts = inline_scripts(text)
    assert scripts, "every report page has a script"
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    assert set(policy["script-src"]) == {sha256_source(s) for s in scripts}  # each script allowed, nothing else
    assert not any(source.startswith(("http", "'self'", "data:", "*", "file:")) for source in policy["script-src"] + policy.get("connect-src", []))
    assert policy.get("base-uri") == ["'none'"] and policy.get("form-action") == ["'none'"]
    assert not re.search(r"<script\b[^>]*\bsrc=", text, re.I)  # no script file either


@pytest.mark.parametrize("name", ["images", "rows", "text", "evaluation", "conservation", "html"])
def test_no_inline_event_handler_or_javascript_url(pages, name):
    text = pages[name].read_text(encoding="utf-8")
    tags = re.findall(r"<[a-zA-Z][^>]*>", text)
    assert not [t for t in tags if re.search(r"\son[a-z]+\s*=", t, re.I)]
    assert not re.search(r"""(?:href|src|action)\s*=\s*["']?\s*javascript:""", text, re.I)


def test_the_html_page_of_a_text_run_has_a_policy_and_no_script(pages):
    text = pages["html"].read_text(encoding="utf-8")
    policy = policy_of(text)
    assert policy["default-src"] == ["'none'"] and policy["script-src"] == ["'none'"]
    assert "img-src" not in policy and "connect-src" not in policy  # nothing fetched at all
    assert "<script" not in text


def test_a_rebuilt_page_is_the_same_bytes(pages, tmp_path):
    words = tmp_path / "words.jsonl"
    shutil.copy(pages["text"].parent / "words.jsonl", words)
    assert lrp("report", words).code == 0
    first = (tmp_path / "words.report.html").read_bytes()
    assert lrp("report", words).code == 0
    assert (tmp_path / "words.report.html").read_bytes() == first  # hashes, not a nonce: nothing random


def test_seal_scripts_hashes_scripts_and_leaves_data_blocks_and_user_text_alone():
    from lrpcli.report.page import SCRIPT_SOURCES, seal_scripts

    page = (
        f'<html><head><meta http-equiv="Content-Security-Policy" content="default-src \'none\'; script-src {SCRIPT_SOURCES}">'
        f"<title>{SCRIPT_SOURCES}</title></head><body>"
        '<script type="application/json" id="d">{"a": 1}</script><script>run(1);</script><script>run(1);</script>'
        "<script>\n  run(2);\n</script></body></html>"
    )
    sealed = seal_scripts(page)
    policy = policy_of(sealed)
    assert policy["script-src"] == [sha256_source("run(1);"), sha256_source("\n  run(2);\n")]
    assert f"<title>{SCRIPT_SOURCES}</title>" in sealed  # only the policy's placeholder is filled in
    bare = seal_scripts(page.replace("<script>run(1);</script>", "").replace("<script>\n  run(2);\n</script>", ""))
    assert policy_of(bare)["script-src"] == ["'none'"]


# --------------------------------------------------------------------------- in a browser


@pytest.mark.parametrize("name", ["images", "rows", "text", "evaluation", "conservation", "html"])
def test_pages_work_under_their_policy_in_a_browser(pages, browser, name):
    watched = Watched(browser)
    page = watched.page
    page.goto(pages[name].resolve().as_uri())
    if name == "html":
        page.wait_for_selector(".text")
    else:
        page.wait_for_selector(READY[name])
    if name in ("evaluation", "conservation"):  # the sort script runs: a click on a header sorts
        header = page.locator("table.sortable thead th").first
        header.click()
        assert header.get_attribute("aria-sort") in ("ascending", "descending")
    assert not watched.errors, watched.errors  # a script the policy blocked shows here
    assert not [u for u in watched.requests if not u.startswith("file:") and not u.startswith("data:")]
    page.close()


def test_a_script_that_got_into_a_page_does_not_run(pages, browser, tmp_path):
    text = pages["text"].read_text(encoding="utf-8")
    hostile = tmp_path / "hostile.html"
    hostile.write_text(
        text.replace("</body>", '<script>document.body.dataset.evil = "1";</script><button id="b" onclick="document.body.dataset.evil = \'2\'">b</button></body>'),
        encoding="utf-8",
    )
    watched = Watched(browser)
    page = watched.page
    page.goto(hostile.resolve().as_uri())
    page.wait_for_selector("body[data-ready='1']")  # the page's own script ran
    page.click("#b")
    assert page.evaluate("document.body.dataset.evil") is None  # neither the injected script nor the handler did
    assert any("Content Security Policy" in e for e in watched.errors), watched.errors
    page.close()
