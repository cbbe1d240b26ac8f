"""The report page of a text run: the highlighted texts and, per predicted class, the words most often
for and against it.

:class:`TextReport` is a writer like the run's others (``write(rows)`` per batch), so the page is
gathered while the run streams; ``lrp report words.jsonl`` feeds it the lines of a text JSONL output
instead. Memory stays bounded: the texts shown are the first ones up to a fixed count, then a uniform
reservoir sample (Algorithm R, a fixed seed); the words are counters (pruned to their most common
entries should a vocabulary grow past a bound, and then the page says the counts are lower bounds).

A word counts *for* its text's predicted class when it is among the text's ``TOP_WORDS`` words of
largest positive relevance, *against* when among those of most negative relevance; only rows that
explain the predicted class (target = prediction, the default) count.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError
from ..outputs import write_output
from ..render.text import text_pieces, top_words, word_style
from .page import finite_number, first_result, rebuild_page, render_page

SAMPLE_SIZE = 2000  # texts shown
TOP_WORDS = 5  # words for and against counted per text
SHOWN_WORDS = 15  # words listed per class and side
MAX_WORDS = 200_000  # distinct words kept per counter before pruning
PAGE_SIZE = 50


def class_of(row: dict[str, Any], key: str) -> str:
    label = row.get(f"{key}_label")
    return str(label) if label not in (None, "") else str(row.get(key, ""))


def ranked(counter: Counter, n: int = SHOWN_WORDS) -> list[tuple[str, int]]:
    """The n most common words, ties by the word (so the page is the same every time)."""
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:n]


class TextReport:
    """Gathers the page of a text run from its result rows."""

    def __init__(self, sample_size: int = SAMPLE_SIZE, seed: int = 0):
        self.sample_size = sample_size
        self.random = random.Random(seed)
        self.rows = 0
        self.texts: list[tuple[int, dict[str, Any]]] = []
        self.words_for: dict[str, Counter] = {}
        self.words_against: dict[str, Counter] = {}
        self.relevance_for: dict[str, Counter] = {}
        self.relevance_against: dict[str, Counter] = {}
        self.counted: Counter = Counter()  # texts counted per class
        self.other_targets = 0  # rows that explain another class than the predicted one
        self.truncated = 0
        self.pruned = False

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.add(row)

    def add(self, row: dict[str, Any]) -> None:
        if "words" not in row or "text" not in row:
            raise InputError("not a text result row (no text and words)", hint="give the JSONL output of `lrp explain` on texts")
        index = self.rows
        self.rows += 1
        self.truncated += bool(row.get("truncated"))
        if len(self.texts) < self.sample_size:
            self.texts.append((index, self._card(row, index)))
        else:
            slot = self.random.randrange(index + 1)
            if slot < self.sample_size:
                self.texts[slot] = (index, self._card(row, index))
        predicted = class_of(row, "prediction")
        if str(row.get("target")) != str(row.get("prediction")):
            self.other_targets += 1
            return
        self.counted[predicted] += 1
        positive, negative = top_words(row["words"], TOP_WORDS)
        for words, counts, sums in ((positive, self.words_for, self.relevance_for), (negative, self.words_against, self.relevance_against)):
            count, total = counts.setdefault(predicted, Counter()), sums.setdefault(predicted, Counter())
            for word in words:
                key = word["word"].lower()
                count[key] += 1
                total[key] += word["relevance"]
            if len(count) > MAX_WORDS:
                keep = dict(count.most_common(MAX_WORDS // 2))
                counts[predicted] = Counter(keep)
                sums[predicted] = Counter({w: total[w] for w in keep})
                self.pruned = True

    @staticmethod
    def _card(row: dict[str, Any], index: int) -> dict[str, Any]:
        scale, pieces = text_pieces(row)
        return {
            "n": index + 1,
            "id": str(row.get("id", index + 1)),
            "pred": class_of(row, "prediction"),
            "target": class_of(row, "target"),
            "logit": finite_number(row.get("logit")),
            "sum": finite_number(row.get("relevance_sum")),
            "scale": scale,
            "truncated": bool(row.get("truncated")),
            "pieces": [[text, None if value is None else word_style(value), relevance if value is not None else None] for text, value, relevance in pieces],
        }

    def close(self) -> None:  # a writer's interface: nothing to flush
        pass

    def data(self, source: str, run: dict[str, Any] | None = None) -> dict[str, Any]:
        classes = sorted(set(self.counted) | {card["pred"] for _, card in self.texts})
        words = []
        for cls in classes:
            side = {}
            for name, counts, sums in (("for", self.words_for, self.relevance_for), ("against", self.words_against, self.relevance_against)):
                counter, total = counts.get(cls, Counter()), sums.get(cls, Counter())
                side[name] = [{"word": w, "count": c, "mean": total[w] / c} for w, c in ranked(counter)]
            words.append({"cls": cls, "texts": self.counted[cls], **side})
        cards = [card for _, card in sorted(self.texts, key=lambda item: item[0])]
        run = run or {}
        return {
            "title": f"lrp explain: {Path(str(run['model'])).name}" if run.get("model") else f"lrp explain: {source}",
            "source": source,
            "run": run,
            "total": self.rows,
            "sampled": len(cards),
            "is_sample": len(cards) < self.rows,
            "classes": classes,
            "words": words,
            "top_words": TOP_WORDS,
            "other_targets": self.other_targets,
            "truncated": self.truncated,
            "pruned": self.pruned,
            "cards": cards,
            "page_size": PAGE_SIZE,
        }

    def write_page(self, page: Path, source: str, run: dict[str, Any] | None = None) -> Path:
        page = Path(page)
        write_output(page, render_page("text.html.j2", **self.data(source, run)).encode("utf-8"))  # --report FILE, or beside -o FILE
        return page


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "a number", float: "a number", str: "a text", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def text_row_problem(row: Any) -> str | None:
    """What makes a line of a text run's JSONL unusable for the page (a hand-edited or damaged file), or
    None: the row must be an object with the text, the prediction and target, numbers for logit and
    relevance sum, and words that are objects with a text, a finite relevance and a span inside the text."""
    if not isinstance(row, dict):
        return f"{_kind(row)}, not a result row (a JSON object)"
    missing = [key for key in ("text", "words", "prediction", "target") if key not in row]
    if missing:
        return f"not a text result row (no {', '.join(missing)})"
    text = row["text"]
    if not isinstance(text, str):
        return f"text is {_kind(text)}, not a text"
    for key in ("prediction", "target"):
        if not isinstance(row[key], (int, str)) or isinstance(row[key], bool):
            return f"{key} is {_kind(row[key])}, not a class"
    for key in ("prediction_label", "target_label", "id"):
        if row.get(key) is not None and (not isinstance(row[key], (int, str)) or isinstance(row[key], bool)):
            return f"{key} is {_kind(row[key])}, not a text"
    for key in ("logit", "relevance_sum"):
        if row.get(key) is not None and not _is_number(row[key]):
            return f"{key} is {_kind(row[key])}, not a number"
    words = row["words"]
    if not isinstance(words, list):
        return f"words is {_kind(words)}, not a list"
    for index, word in enumerate(words):
        where = f"words[{index}]"
        if not isinstance(word, dict):
            return f"{where} is {_kind(word)}, not an object"
        for key in ("word", "relevance", "start", "end"):
            if key not in word:
                return f"{where} has no {key}"
        if not isinstance(word["word"], str):
            return f"{where}.word is {_kind(word['word'])}, not a text"
        if not _is_number(word["relevance"]) or not math.isfinite(word["relevance"]):
            return f"{where}.relevance is {json.dumps(word['relevance']) if _is_number(word['relevance']) else _kind(word['relevance'])}, not a finite number"
        start, end = word["start"], word["end"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)) or not 0 <= start <= end <= len(text):
            return f"{where} spans {json.dumps(start)}..{json.dumps(end)}, not a span of the text ({len(text)} characters)"
    return None


def is_text_results(path: Path) -> bool:
    """Whether a JSONL file holds text results (its first line has text and words)."""
    first = first_result(path)
    return isinstance(first, dict) and "words" in first and "text" in first


def write_text_report(path: Path, page: Path | None = None, run: dict[str, Any] | None = None, sample_size: int = SAMPLE_SIZE) -> Path:
    """Rebuild the page of a text JSONL output file (default: beside it, ``words.report.html``)."""
    report = TextReport(sample_size)
    hint = "give the JSONL output of `lrp explain` on texts, as the run wrote it"

    def add(row: Any) -> None:
        problem = text_row_problem(row)
        if problem:
            raise InputError(problem, hint=hint)
        report.add(row)

    return rebuild_page(path, page, run, "text.html.j2", report, add, hint)
