"""``lrp evaluate`` on texts: token batches, with the tokens of planted words marked where known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


def planted_words(value: Any) -> set[str]:
    """A planted-words cell: a JSON list of words or of {"word": ...} objects (also inside a CSV cell), or words
    separated by ';'; case is ignored."""
    if value is None or value == "":
        return set()
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else text.split(";")
        except json.JSONDecodeError:
            value = text.strip("[]").split(",")
    if isinstance(value, dict):
        value = list(value)
    if not isinstance(value, list):
        value = [value]
    words = [item.get("word", "") if isinstance(item, dict) else item for item in value]  # [{"word": ..., "start": ...}]
    return {str(word).strip().lower() for word in words if str(word).strip()}


def open_texts(source: str, spec: Any, options: dict[str, Any]) -> Any:
    """The tokenizer of a text evaluation (from --tokenizer or the spec), checked before any model work."""
    from ..data.text import TextTokenizer
    from ..errors import UsageError

    spec_input = spec.input if spec else {}
    path = options.get("tokenizer") or spec_input.get("tokenizer")
    if not path:
        raise UsageError("texts need a tokenizer", hint="give --tokenizer tokenizer.json, or a model spec with input.tokenizer")
    return TextTokenizer(path, options.get("max_length") or spec_input.get("max_length") or 256)


def text_batches(source: str, spec: Any, options: dict[str, Any], tokenizer: Any, model: Any, batch_size: int) -> Iterator[tuple]:
    """(ids, attention, units, names, planted or None) per batch; units: the tokens that may be removed
    (not padding, not special tokens); planted: the tokens of the words in the --planted-col column."""
    import torch

    from ..data.tabular import open_csv
    from ..data.text import batch_length, pad_batch, read_texts, text_format
    from ..errors import InputError, UsageError
    from ..runs.texts import batches, fixed_length

    spec_input = spec.input if spec else {}
    text_col = options.get("text_col") or spec_input.get("text_col")
    planted_col = options.get("planted_col")
    fmt = text_format(source, text_col)
    if planted_col and fmt == "lines":
        raise UsageError("--planted-col needs a CSV or JSONL file of texts (a column beside the text)")
    name = "<stdin>" if source == "-" else source
    if source != "-" and not Path(source).is_file():
        raise InputError(f"input not found: {source}")
    fixed = fixed_length(model)
    with open_csv(source) as handle:
        records = read_texts(handle, name, fmt, text_col=text_col, id_col=options.get("id_col") or spec_input.get("id_col"))
        for chunk in batches(records, batch_size):
            bad = [record for record in chunk if record.error]
            if bad:
                raise InputError(bad[0].error)
            encoded = tokenizer.encode([record.text for record in chunk], [record.where for record in chunk])
            length = batch_length(max(len(e.ids) for e in encoded), tokenizer.max_length, fixed)
            ids, attention = pad_batch(encoded, tokenizer.pad_id, length)
            units = torch.zeros(ids.shape, dtype=torch.bool)
            planted = torch.zeros(ids.shape, dtype=torch.bool) if planted_col else None
            for row, (record, item) in enumerate(zip(chunk, encoded)):
                if planted_col and planted_col not in (record.row or {}):
                    raise InputError(f"{name}: text {record.id}: no column '{planted_col}'", hint="check --planted-col")
                words = planted_words((record.row or {}).get(planted_col)) if planted_col else set()
                for position, special in enumerate(item.special[:length]):
                    if special:
                        continue
                    units[row, position] = True
                    if planted is not None and item.words[position] is not None:
                        planted[row, position] = _word_text(record.text, item, item.words[position]).lower() in words
            yield ids, attention, units, [record.id for record in chunk], planted


def _word_text(text: str, item: Any, word: int) -> str:
    spans = [span for span, w in zip(item.offsets, item.words) if w == word]
    return text[min(s for s, _ in spans) : max(e for _, e in spans)]
