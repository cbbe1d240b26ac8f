"""The report pages' one template environment: templates/*.html.j2 with autoescaping.

Every page extends templates/base.html.j2 (the head, the Content-Security-Policy that keeps the page
from fetching anything, the shared styles), so all report pages look and behave alike."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _environment():
    from jinja2 import Environment, PackageLoader

    env = Environment(loader=PackageLoader("lrpcli.report", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["g"] = lambda value, digits=4: "" if value is None else f"{value:.{digits}g}"
    return env


def render_page(template: str, **data: Any) -> str:
    """The HTML text of templates/<template> filled with data (all values escaped)."""
    return _environment().get_template(template).render(**data)


def finite_number(value: Any) -> float | None:
    """A cell's value as a finite float, or None (empty, text, NaN or infinite): what a page can show."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
