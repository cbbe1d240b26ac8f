"""Report pages in headless Chromium (Playwright): the ``browser`` fixture and a page that watches its requests.

Tests that use them skip where Playwright or /usr/bin/chromium is missing; `.ci/run` installs both
after the main tests and runs the report tests again."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-background-networking"])
        yield browser
        browser.close()


class Watched:
    """A page that records every request and every console error."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1100, "height": 800})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, out: Path, page: str = "report.html", ready: str = ".card") -> None:
        """Open OUT/page (or the page file itself) and wait for the ``ready`` selector."""
        path = out if out.is_file() else out / page
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_selector(ready)

    def outside(self, out: Path) -> list[str]:
        root = os.path.realpath(out) + os.sep
        return [u for u in self.requests if urlparse(u).scheme != "file" or not os.path.realpath(unquote(urlparse(u).path)).startswith(root)]
