"""What a text explanation looks like on the way out: JSONL/CSV rows, coloured words, an HTML page.

A result row holds the text, the prediction and target, and the relevance of every token
with its character span; subword pieces are merged back into words (the tokenizer's word
ids say which pieces belong together). Writers stream: one text at a time, flushed per batch.
"""

from __future__ import annotations

import csv
import json
from typing import IO, Any

from jinja2 import Environment

from ..data.text import Encoded

TOKEN_COLUMNS = ("id", "target", "target_label", "position", "token", "start", "end", "word", "special", "relevance")


def token_entries(encoded: Encoded, relevance: list[float]) -> list[dict[str, Any]]:
    """One entry per (unpadded) token: its string, relevance and span in the text; special tokens flagged."""
    entries = []
    for position, (token, (start, end), special) in enumerate(zip(encoded.tokens, encoded.offsets, encoded.special)):
        entry: dict[str, Any] = {"token": token, "relevance": relevance[position], "start": start, "end": end}
        if special:
            entry["special"] = True
        entries.append(entry)
    return entries


def word_entries(text: str, encoded: Encoded, relevance: list[float]) -> list[dict[str, Any]]:
    """Subword pieces merged into words: the word's span in the text and the sum of its pieces' relevance."""
    words: list[dict[str, Any]] = []
    current = None
    for position, word in enumerate(encoded.words):
        if word is None or encoded.special[position]:
            current = None
            continue
        start, end = encoded.offsets[position]
        if current is not None and current[0] == word:
            entry = words[-1]
            entry["start"], entry["end"] = min(entry["start"], start), max(entry["end"], end)
            entry["relevance"] += relevance[position]
        else:
            words.append({"word": "", "relevance": relevance[position], "start": start, "end": end})
            current = (word,)
    for entry in words:
        entry["word"] = text[entry["start"] : entry["end"]]
    return words


def top_words(words: list[dict[str, Any]], k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The K words most for (positive relevance) and most against (negative) the target."""
    ranked = sorted(words, key=lambda w: w["relevance"], reverse=True)
    positive = [{"word": w["word"], "relevance": w["relevance"]} for w in ranked[:k] if w["relevance"] > 0]
    negative = [{"word": w["word"], "relevance": w["relevance"]} for w in reversed(ranked[-k:]) if w["relevance"] < 0]
    return positive, negative


class TextWriter:
    """Result rows as JSON lines (one per text and target) or CSV (one row per token)."""

    def __init__(self, handle: IO[str], fmt: str = "jsonl"):
        self.handle = handle
        self.fmt = fmt
        self.writer = None
        if fmt == "csv":
            self.writer = csv.DictWriter(handle, fieldnames=TOKEN_COLUMNS, lineterminator="\n", extrasaction="ignore")
            self.writer.writeheader()

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if self.writer is None:
                self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                continue
            words = _word_of_tokens(row)
            for position, token in enumerate(row["tokens"]):
                self.writer.writerow(
                    {
                        "id": row["id"],
                        "target": row["target"],
                        "target_label": row.get("target_label", ""),
                        "position": position,
                        "token": token["token"],
                        "start": token["start"],
                        "end": token["end"],
                        "word": words[position],
                        "special": int(bool(token.get("special"))),
                        "relevance": format(token["relevance"], ".9g"),
                    }
                )
        self.handle.flush()


def _word_of_tokens(row: dict[str, Any]) -> list[str]:
    """For the CSV format: the word each token belongs to ("" for special tokens)."""
    spans = [(w["start"], w["end"], w["word"]) for w in row["words"]]
    found = []
    for token in row["tokens"]:
        word = ""
        if not token.get("special"):
            word = next((w for start, end, w in spans if start <= token["start"] and token["end"] <= end), "")
        found.append(word)
    return found


def shades(words: list[dict[str, Any]]) -> tuple[float, list[float]]:
    """Each word's relevance relative to the text's largest |relevance| (-1..1), and that scale."""
    scale = max((abs(w["relevance"]) for w in words), default=0.0)
    return scale, [w["relevance"] / scale if scale > 0 else 0.0 for w in words]


_PAGE_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ policy|safe }}">
<title>{{ title }}</title>
<style>
body { font: 15px/1.7 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
.text { margin: 0 0 1.2em; padding: .6em .8em; border: 1px solid #ddd; border-radius: 6px; }
.meta { font-size: 12px; color: #666; margin-bottom: .3em; }
.w { border-radius: 3px; padding: 0 1px; }
.legend { display: flex; align-items: center; gap: .5em; font-size: 12px; margin-bottom: 1.5em; }
.bar { width: 16em; height: 1em; background: linear-gradient(to right, rgb(0,0,255), #fff, rgb(255,0,0)); border: 1px solid #ccc; }
</style></head><body>
<h1>{{ title }}</h1>
<p>{{ subtitle }}</p>
<div class="legend"><span>against the target</span><span class="bar"></span><span>for the target</span>
<span>(each text scaled to its own largest |relevance|, shown on the right; hover a word for its value)</span></div>
"""
_PAGE_TEXT = """<div class="text" id="t-{{ row.id }}"><div class="meta">{{ row.id }} &middot; prediction {{ row.prediction_label or row.prediction }}
&middot; target {{ row.target_label or row.target }} &middot; logit {{ '%.4g' % row.logit }} &middot; sum of relevance {{ '%.4g' % row.relevance_sum }}
&middot; scale {{ '%.3g' % scale }}{% if row.truncated %} &middot; <b>truncated</b>{% endif %}</div>
{%- for piece, value, relevance in pieces -%}
{%- if value is none %}{{ piece }}{% else %}<span class="w" style="background: {{ colour(value) }}" title="{{ '%.4g' % relevance }}">{{ piece }}</span>{% endif -%}
{%- endfor %}</div>
"""
_PAGE_TAIL = "</body></html>\n"
#: the page runs no script and fetches nothing: its styles are inline (a <style> and each word's style attribute)
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'none'; base-uri 'none'; form-action 'none'"


def text_pieces(row: dict[str, Any]) -> tuple[float, list[tuple[str, float | None, float]]]:
    """The row's text cut into pieces: (words and the text between them, relative relevance -1..1 or None
    between words, relevance), and the text's scale (its largest |relevance|)."""
    scale, values = shades(row["words"])
    pieces: list[tuple[str, float | None, float]] = []
    cursor = 0
    for word, value in zip(row["words"], values):
        if word["start"] > cursor:
            pieces.append((row["text"][cursor : word["start"]], None, 0.0))
        pieces.append((row["text"][word["start"] : word["end"]], value, word["relevance"]))
        cursor = max(cursor, word["end"])
    if cursor < len(row["text"]):
        pieces.append((row["text"][cursor:], None, 0.0))
    return scale, pieces


def word_style(value: float) -> str:
    """The background of a word with relative relevance ``value`` (-1..1), with a text colour that stays readable
    (white on strong shades)."""
    alpha = min(1.0, abs(value))
    background = f"rgba(255,0,0,{alpha:.3f})" if value > 0 else f"rgba(0,0,255,{alpha:.3f})"
    return background + ("; color: #fff" if alpha > 0.55 else "")


class HtmlWriter:
    """One self-contained page (no scripts, nothing fetched) with every text's words shaded, written as it goes."""

    def __init__(self, handle: IO[str], title: str, subtitle: str = ""):
        environment = Environment(autoescape=True)
        self.text_template = environment.from_string(_PAGE_TEXT)
        self.handle = handle
        handle.write(environment.from_string(_PAGE_HEAD).render(title=title, subtitle=subtitle, policy=PAGE_POLICY))

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            scale, pieces = text_pieces(row)
            self.handle.write(self.text_template.render(row=row, pieces=pieces, scale=scale, colour=word_style))
        self.handle.flush()

    def close(self) -> None:
        self.handle.write(_PAGE_TAIL)
        self.handle.flush()
