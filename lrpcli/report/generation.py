"""The report page of a language model's generations (``lrp explain LM PROMPTS --max-new-tokens N``): each
prompt with the tokens generated after it; choosing a generated token shades every token before it by its
relevance for that token, and ranks the passages of a context (``--context-col``) by it.

:class:`GenerationPage` is a writer like the run's others (``write(rows)``), so the page is gathered while
the run streams; ``lrp report g.jsonl`` feeds it the lines of the output file instead. Memory stays
bounded: the first prompts up to a fixed count, then a uniform reservoir sample (Algorithm R, fixed seed).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError
from ..outputs import write_output
from .page import finite_number, first_result, rebuild_page, render_page

SAMPLE_SIZE = 500  # prompts shown
PAGE_SIZE = 20


def _rounded(value: Any) -> float | None:
    number = finite_number(value)
    return None if number is None else float(f"{number:.4g}")


def generation_row_problem(row: Any) -> str | None:
    """What makes a line unusable for the page (a hand-edited or damaged file), or None."""
    if not isinstance(row, dict):
        return "not a result row (a JSON object)"
    if not isinstance(row.get("prompt_tokens"), list) or not isinstance(row.get("generated"), list):
        return "not a generation row (no prompt_tokens and generated lists)"
    for index, token in enumerate(row["generated"]):
        if not isinstance(token, dict) or not isinstance(token.get("relevance"), list):
            return f"generated[{index}] has no relevance list"
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in token["relevance"]):
            return f"generated[{index}].relevance holds a value that is not a finite number"
        if len(token["relevance"]) > len(row["prompt_tokens"]) + index:
            return f"generated[{index}].relevance has {len(token['relevance'])} values for {len(row['prompt_tokens']) + index} tokens before it"
    return None


class GenerationPage:
    """Gathers the page of a generation run from its result rows."""

    def __init__(self, sample_size: int = SAMPLE_SIZE, seed: int = 0):
        self.sample_size = sample_size
        self.random = random.Random(seed)
        self.rows = 0
        self.tokens = 0
        self.cards: list[tuple[int, dict[str, Any]]] = []

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.add(row)

    def add(self, row: dict[str, Any]) -> None:
        problem = generation_row_problem(row)
        if problem:
            raise InputError(problem, hint="give the JSONL output of `lrp explain LM PROMPTS --max-new-tokens N`")
        index = self.rows
        self.rows += 1
        self.tokens += len(row["generated"])
        if len(self.cards) < self.sample_size:
            self.cards.append((index, self._card(row, index)))
        else:
            slot = self.random.randrange(index + 1)
            if slot < self.sample_size:
                self.cards[slot] = (index, self._card(row, index))

    @staticmethod
    def _card(row: dict[str, Any], index: int) -> dict[str, Any]:
        generated = []
        for token in row["generated"]:
            context = [
                {"text": str(p.get("text", "")), "r": _rounded(p.get("relevance")), "sentences": [[str(s.get("text", "")), _rounded(s.get("relevance"))] for s in p.get("sentences", [])]}
                for p in token.get("context") or []
            ]
            generated.append({
                "token": str(token.get("token", "")), "p": _rounded(token.get("probability")), "logit": _rounded(token.get("logit")),
                "greedy": token.get("greedy_token"), "r": [_rounded(v) for v in token["relevance"]], "context": context,
            })
        return {
            "n": index + 1, "id": str(row.get("id", index + 1)), "text": str(row.get("text", "")), "tokens": [str(t) for t in row["prompt_tokens"]],
            "generated": generated, "forced": bool(row.get("continuation")), "stopped": bool(row.get("stopped")), "contrast": row.get("contrast"),
        }

    def close(self) -> None:  # a writer's interface: nothing to flush
        pass

    def data(self, source: str, run: dict[str, Any] | None = None) -> dict[str, Any]:
        cards = [card for _, card in sorted(self.cards, key=lambda item: item[0])]
        run = run or {}
        return {
            "title": f"lrp explain: {Path(str(run['model'])).name}" if run.get("model") else f"lrp explain: {source}",
            "source": source, "run": run, "total": self.rows, "tokens": self.tokens, "sampled": len(cards),
            "is_sample": len(cards) < self.rows, "cards": cards, "page_size": PAGE_SIZE,
        }

    def write_page(self, page: Path, source: str, run: dict[str, Any] | None = None) -> Path:
        page = Path(page)
        write_output(page, render_page("generation.html.j2", **self.data(source, run)).encode("utf-8"))
        return page


def is_generation_results(path: Path) -> bool:
    """Whether a JSONL file holds generation results (its first line has prompt_tokens and generated)."""
    first = first_result(path)
    return isinstance(first, dict) and "prompt_tokens" in first and "generated" in first


def write_generation_report(path: Path, page: Path | None = None, run: dict[str, Any] | None = None) -> Path:
    """Rebuild the page of a generation JSONL output file (default: beside it, ``g.report.html``)."""
    gathered = GenerationPage()
    hint = "give the JSONL output of `lrp explain LM PROMPTS --max-new-tokens N`, as the run wrote it"
    return rebuild_page(path, page, run, "generation.html.j2", gathered, gathered.add, hint)
