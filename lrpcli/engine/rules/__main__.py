"""``python -m lrpcli.engine.rules``: write rules.txt and composites.txt, the listings ``lrp rules`` and
``lrp composites`` print without importing torch."""

from pathlib import Path

from ..listings import composites_text
from . import rules_text

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    for name, text in (("rules.txt", rules_text()), ("composites.txt", composites_text())):
        (here / name).write_text(text, encoding="utf-8")
        print(f"wrote {here / name}")
