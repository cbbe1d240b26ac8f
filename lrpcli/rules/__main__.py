"""``python -m lrpcli.rules``: write rules.txt, the listing ``lrp rules`` prints without importing torch."""

from pathlib import Path

from . import rules_text

if __name__ == "__main__":
    target = Path(__file__).resolve().parent / "rules.txt"
    target.write_text(rules_text(), encoding="utf-8")
    print(f"wrote {target}")
