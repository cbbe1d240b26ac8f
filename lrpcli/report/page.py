"""The report pages' one template environment: templates/*.html.j2 with autoescaping.

Every page extends templates/base.html.j2 (the head, the Content-Security-Policy that keeps the page
from fetching anything and runs only the page's own scripts, the shared styles), so all report pages
look and behave alike."""

from __future__ import annotations

import base64
import hashlib
import math
import re
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _environment():
    from jinja2 import Environment, PackageLoader

    env = Environment(loader=PackageLoader("lrpcli.report", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["g"] = lambda value, digits=4: "" if value is None else f"{value:.{digits}g}"
    return env


#: where base.html.j2's Content-Security-Policy lists the page's scripts (their hashes, filled in by render_page)
SCRIPT_SOURCES = "'lrp-script-hashes'"
_POLICY = re.compile(r'<meta http-equiv="Content-Security-Policy" content="[^"]*">')
_SCRIPT = re.compile(r"<script(?P<attributes>(?:\s[^>]*)?)>(?P<body>.*?)</script>", re.S | re.I)
_DATA_BLOCK = re.compile(r"""\btype\s*=\s*["']?application/json""", re.I)


def render_page(template: str, **data: Any) -> str:
    """The HTML text of templates/<template> filled with data (all values escaped), its policy allowing
    exactly the page's own inline scripts (see :func:`seal_scripts`)."""
    return seal_scripts(_environment().get_template(template).render(**data))


def script_hashes(html: str, start: int = 0) -> list[str]:
    """``'sha256-...'`` of each inline script the browser would run (JSON data blocks are not run),
    in page order, each once: the hash of the script's text exactly as it stands between its tags."""
    hashes: list[str] = []
    for match in _SCRIPT.finditer(html, start):
        if _DATA_BLOCK.search(match.group("attributes")):
            continue
        digest = base64.b64encode(hashlib.sha256(match.group("body").encode("utf-8")).digest()).decode("ascii")
        if f"'sha256-{digest}'" not in hashes:
            hashes.append(f"'sha256-{digest}'")
    return hashes


def seal_scripts(html: str) -> str:
    """Put the hashes of the page's inline scripts into its Content-Security-Policy (in place of
    ``SCRIPT_SOURCES``; ``'none'`` for a page without scripts): the browser runs those scripts and no
    other, so a script that got into the page some other way does not run ('unsafe-inline' is not
    needed). Hashes, not a nonce: the same page rebuilt is the same bytes."""
    policy = _POLICY.search(html)
    if policy is None or SCRIPT_SOURCES not in policy.group(0):
        return html
    sources = " ".join(script_hashes(html, policy.end())) or "'none'"
    return html[: policy.start()] + policy.group(0).replace(SCRIPT_SOURCES, sources, 1) + html[policy.end() :]


def finite_number(value: Any) -> float | None:
    """A cell's value as a finite float, or None (empty, text, NaN or infinite): what a page can show."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def result_lines(path: Any, hint: str) -> Any:
    """The rows of a JSON-lines result file, one (line number, row) at a time; a line that is not UTF-8 or not
    JSON is an InputError naming the file and line (``hint`` says what file is wanted). Blank lines are skipped."""
    import json

    from ..errors import InputError

    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the results: {exc.strerror or exc}") from exc
    with handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02x})", hint=hint) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as exc:
                reason = "nested too deep" if isinstance(exc, RecursionError) else f"{exc.msg}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise InputError(f"{path}:{number}: not JSON ({reason})", hint=hint) from None
            yield number, row


def first_result(path: Any) -> Any:
    """The first row of a JSON-lines result file, or None where it cannot be read or is not JSON: enough to tell
    which kind of results a file holds."""
    import json

    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    return json.loads(line)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return None


def rebuild_page(path: Any, page: Any, run: Any, template: str, gathered: Any, add: Any, hint: str) -> Any:
    """Rebuild the page of a JSON-lines result file (``lrp report FILE``): each row given to ``add`` (which raises
    an InputError for a row it cannot show; the error gets the file and line), then ``gathered.data`` rendered into
    ``template``. The page defaults to one beside the file; without ``run`` the page's previous run facts are carried."""
    from pathlib import Path

    from ..errors import InputError
    from ..outputs import refuse_inputs_as_outputs, write_output
    from .table import previous_run, report_path_for

    path = Path(path)
    page = Path(page) if page else report_path_for(path)
    refuse_inputs_as_outputs([("the page", page)], [("result file it shows", path)])
    carried = False
    if run is None:
        run = previous_run(page)
        carried = run is not None
    for number, row in result_lines(path, hint):
        try:
            add(row)
        except InputError as exc:
            raise InputError(f"{path}:{number}: {exc.message}", hint=exc.hint or hint) from exc
    data = gathered.data(path.name, run)
    data["run_carried"] = carried
    data["rebuilt"] = True
    write_output(page, render_page(template, **data).encode("utf-8"))
    return page
