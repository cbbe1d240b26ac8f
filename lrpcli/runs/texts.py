"""Text explanations: texts in, token relevance out, in batches (the text side of ``lrp explain``).

Texts are tokenized, right-padded per batch (to a handful of lengths, so that the model is
captured a few times only), explained, and written one row per text and target as they go:
memory stays flat for any number of lines. The model takes int64 token ids, batch first;
where it also takes an attention mask, the mask is handed to it as a constant input.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch

from ..data.text import Encoded, TextRecord, TextTokenizer, batch_length, pad_batch
from ..engine.explainer import Explainer
from ..errors import InputError, ModelError, UsageError
from ..sources.files import saved_input
from .choices import Failure, TargetSpec, non_finite_reasons, resolve_device, resolve_dtype
from ..render.text import token_entries, top_words, word_entries

MASK_NAMES = ("attention_mask", "mask")
#: the composite texts run with where neither the caller nor the model spec names one
TEXT_COMPOSITE = "epsilon"
#: share of a text's relevance that may land on padding before the run says the model does not mask it
PADDING_LEAK = 1e-4


@dataclass
class TextReport:
    texts_in: int = 0
    rows_out: int = 0
    truncated: int = 0
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, line: str) -> None:
        if line not in self.notes:
            self.notes.append(line)


def input_names(model: Any) -> list[str]:
    """The model's input names after the first (an eager module's forward, a .pt2's or TorchScript's signature)."""
    if isinstance(model, torch.export.ExportedProgram):
        return [spec.arg.name for spec in model.graph_signature.input_specs if spec.kind.name == "USER_INPUT"][1:]
    if isinstance(model, torch.jit.ScriptModule):
        return [argument.name for argument in model.forward.schema.arguments][2:]  # self, the ids
    if isinstance(model, torch.nn.Module):
        parameters = list(inspect.signature(model.forward).parameters)
        return parameters[1:]
    return []


def mask_input(model: Any, requested: str | None = None) -> str | None:
    """The name of the model's attention-mask input: ``requested`` (checked), else one named like a mask."""
    names = input_names(model)
    if requested:
        if requested not in names:
            raise InputError(
                f"the model takes no input named '{requested}' (its inputs after the token ids: {', '.join(names) or 'none'})",
                hint="give the name of its attention-mask argument, or leave the mask out",
            )
        return requested
    return next((name for name in MASK_NAMES if name in names), None)


def fixed_length(model: Any) -> int | None:
    """The sequence length a saved program was exported for, if it fixes one (else any length will do)."""
    value = saved_input(model)
    if value is None or value.ndim < 2:
        return None
    length = value.shape[1]
    return int(length) if isinstance(length, int) else None


def embedding_rows(explainer: Explainer, ids: torch.Tensor, inputs: dict[str, torch.Tensor] | None = None) -> int | None:
    """The rows of the table(s) the model looks the token ids up in (the fewest, if several), from the
    captured graph; None where the graph looks none up."""
    graph, _ = explainer.prepare(ids, inputs)
    rows = [
        int(node.args[0].shape[0])
        for node in graph.nodes
        if node.kind == "embedding" and isinstance(node.args[0], torch.Tensor) and node.args[0].ndim == 2
    ]
    return min(rows) if rows else None


def check_vocabulary(explainer: Explainer, tokenizer: TextTokenizer, ids: torch.Tensor, inputs: dict[str, torch.Tensor] | None = None) -> None:
    """Refuse a tokenizer that does not fit the model (ids or the pad id past its token embedding), naming
    both sizes: a ModelError (exit 4) before any lookup, where the lookup is an IndexError on the CPU and
    a device-side assert (that ends the process) on a GPU. Cheap enough to check every batch (the
    prepared graph is cached, the vocabulary read once)."""
    rows = embedding_rows(explainer, ids, inputs)
    if rows is None:
        return
    size, top = tokenizer.vocabulary
    hint = "use the tokenizer the model was trained with (a model spec names it: input: {tokenizer: ...})"
    if tokenizer.pad_id >= rows:
        raise ModelError(
            f"{tokenizer.path}: the tokenizer pads with id {tokenizer.pad_id} ({tokenizer.pad_token}), past the model's token "
            f"embedding of {rows:,} rows (ids 0 to {rows - 1:,}); the tokenizer's vocabulary has {size:,} tokens",
            hint=hint,
        )
    if top >= rows:
        raise ModelError(
            f"{tokenizer.path}: the tokenizer's vocabulary has {size:,} tokens (ids up to {top:,}) but the model's token "
            f"embedding has {rows:,} rows (ids 0 to {rows - 1:,}): the tokenizer does not fit the model",
            hint=hint,
        )


def batches(records: Iterable[TextRecord], size: int) -> Iterator[list[TextRecord]]:
    batch: list[TextRecord] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def explain_texts(
    explainer: Explainer,
    records: Iterable[TextRecord],
    tokenizer: TextTokenizer,
    writers: list[Any],
    *,
    targets: TargetSpec = TargetSpec(),
    classes: list[str] | None = None,
    top_k: int | None = None,
    batch_size: int = 32,
    on_error: str = "skip",
    device: str = "auto",
    dtype: str = "float32",
    init: str = "value",
    mask: str | None = None,
    shard: Any = None,
    progress: Callable[[int], None] | None = None,
) -> TextReport:
    """Explain every text and hand each batch's result rows to every writer."""
    torch_device = resolve_device(device)
    explainer.float_dtype = resolve_dtype(dtype)
    mask_name = mask_input(explainer.model, mask)
    length = fixed_length(explainer.model)
    report = TextReport()
    if mask_name:
        report.note(f"the attention mask goes to the model's '{mask_name}' input")
    for batch in batches(records, batch_size):
        if shard is not None:  # texts by their line/row number: every text in exactly one shard
            batch = [record for record in batch if shard.owns(str(record.number))]
        report.texts_in += len(batch)
        good = []
        for record in batch:
            if record.error is None:
                good.append(record)
                continue
            if on_error == "fail":
                raise InputError(record.error)
            report.failures.append(Failure(record.id, record.error))
        if good:
            failed = len(report.failures)
            kept, encoded = [], []
            for record, item in zip(good, tokenizer.encode_each([record.text for record in good])):
                if isinstance(item, str):  # the tokenizer failed on this text alone (a panic in its regex, ...)
                    report.failures.append(Failure(record.id, f"{record.where}: {item}"))
                else:
                    kept.append(record)
                    encoded.append(item)
            good = kept
            if on_error == "fail" and len(report.failures) > failed:
                raise InputError(report.failures[failed].message)
            rows = _explain_batch(explainer, good, encoded, tokenizer, length, mask_name, targets, classes, top_k, torch_device, init, report) if good else []
            if on_error == "fail" and len(report.failures) > failed:
                raise InputError(report.failures[-1].message)
            for writer in writers:
                writer.write(rows)
            report.rows_out += len(rows)
        if progress:
            progress(len(batch))
    return report


def _explain_batch(explainer, good, encoded, tokenizer, fixed, mask_name, targets, classes, top_k, device, init, report) -> list[dict[str, Any]]:
    if fixed and any(len(item.ids) > fixed for item in encoded):
        raise InputError(f"the model takes {fixed} tokens at most; set max_length to {fixed} or less")
    report.truncated += sum(item.truncated for item in encoded)
    length = batch_length(max(len(item.ids) for item in encoded), tokenizer.max_length, fixed)
    ids, attention = pad_batch(encoded, tokenizer.pad_id, length)
    ids, attention = ids.to(device), attention.to(device)
    inputs = {mask_name: attention} if mask_name else None
    check_vocabulary(explainer, tokenizer, ids, inputs)
    if targets.mode in ("pred", "index"):
        pairs = None
        result = explainer.explain(ids, None if targets.mode == "pred" else int(targets.index), init=init, inputs=inputs)
        pairs = [(i, int(t)) for i, t in enumerate(result.targets)]
    else:
        chosen = targets.choose(explainer.forward(ids, inputs))
        pairs = [(i, t) for i, row in enumerate(chosen) for t in row]
        index = torch.tensor([i for i, _ in pairs], device=device)
        extra = {mask_name: attention[index]} if mask_name else None
        result = explainer.explain(ids[index], torch.tensor([t for _, t in pairs], device=device), init=init, inputs=extra)
    for line in result.notes:
        report.note(line)
    logits = result.outputs.detach().double().cpu().reshape(result.outputs.shape[0], -1)
    relevance = result.relevance.detach().double().cpu()
    if relevance.shape != (len(pairs), ids.shape[1]):
        raise InputError(
            f"the model's relevance has shape {tuple(relevance.shape)}, not one value per token {tuple(ids.shape)}",
            hint="a text model must take the token ids as its first input and look them up in an embedding",
        )
    real = attention.cpu()[[i for i, _ in pairs]].bool()
    padded = relevance.masked_fill(real, 0).abs().sum(1)
    total = relevance.abs().sum(1)
    if bool((padded > PADDING_LEAK * total).any()):
        report.note("padding tokens received relevance (the model does not mask them); it is left out of the results")
    single = logits.shape[1] == 1
    predictions = logits[:, 0].tolist() if single else logits.argmax(1).tolist()
    reasons = non_finite_reasons(result, [t for _, t in pairs])
    rows = []
    for r, (i, target) in enumerate(pairs):
        record: TextRecord = good[i]
        if reasons[r]:
            report.failures.append(Failure(record.id, f"text {record.id}: {reasons[r]}"))
            continue
        item: Encoded = encoded[i]
        values = relevance[r, : len(item.ids)].tolist()
        words = word_entries(record.text, item, values)
        row: dict[str, Any] = {"id": record.id, "text": record.text}
        if record.label is not None:
            row["label"] = record.label
        row["prediction"] = predictions[r]
        if classes and not single:
            row["prediction_label"] = classes[predictions[r]] if predictions[r] < len(classes) else ""
        row["target"] = target
        if classes:
            row["target_label"] = classes[target] if target < len(classes) else ""
        row["logit"] = float(logits[r, target])
        row["relevance_sum"] = float(sum(values))
        row["truncated"] = item.truncated
        row["tokens"] = token_entries(item, values)
        row["words"] = words
        if top_k:
            row["top_positive"], row["top_negative"] = top_words(words, top_k)
        rows.append(row)
    return rows


def text_tokenizer(spec_input: dict[str, Any], path: str | None = None, max_length: int | None = None) -> TextTokenizer:
    """The tokenizer texts run with: ``path`` (--tokenizer, ``tokenizer=``), else the model spec's, cut to
    ``max_length`` tokens, else the spec's, else 256."""
    path = path or spec_input.get("tokenizer")
    if not path:
        raise UsageError(
            "texts need a tokenizer",
            hint="give a Hugging Face tokenizer.json with --tokenizer (tokenizer= in Python), or name it in the model spec (input: {kind: text, tokenizer: ...})",
        )
    return TextTokenizer(path, max_length or spec_input.get("max_length") or 256)


@dataclass
class TextExplanation:
    """Texts explained in Python: ``rows`` holds one dict per text and target, the JSON line ``lrp explain``
    writes for it (id, text, prediction and target with their class names, logit, relevance_sum, truncated,
    ``tokens`` with each token's relevance and character span, ``words``: subword pieces merged)."""

    rows: list[dict[str, Any]]
    composite: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def tokens(self, index: int = 0) -> list[tuple[str, float]]:
        """Row ``index``'s tokens and their relevance, special tokens included."""
        return [(token["token"], token["relevance"]) for token in self.rows[index]["tokens"]]

    def words(self, index: int = 0) -> list[tuple[str, float]]:
        """Row ``index``'s words (as they stand in the text) and their relevance."""
        return [(word["word"], word["relevance"]) for word in self.rows[index]["words"]]

    def plot(self, index: int = 0, ax: Any = None) -> Any:
        """Row ``index``'s words as bars (red for, blue against the target); returns the figure."""
        from ..render.notebook import relevance_figure

        row = self.rows[index]
        values = [word["relevance"] for word in row["words"]]
        title = f"text {row['id']}: target {row.get('target_label') or row['target']}"
        return relevance_figure(values, title=title, ax=ax, labels=[word["word"] for word in row["words"]])

    def _repr_html_(self) -> str:
        """What a notebook shows: each text with its words shaded, and its tokens."""
        from ..render.notebook import texts_html

        return texts_html(self.rows, self.composite)


class _Collect(list):
    """A writer that keeps the rows (the Python side of the writers the CLI streams to)."""

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.extend(rows)


def explain_text_list(explainer: Explainer, texts: list[str], tokenizer: TextTokenizer, **options: Any) -> TextExplanation:
    """``texts`` explained by the run ``lrp explain`` does (``explain_texts``, any text that fails is an
    InputError); ``options`` as for ``explain_texts``. Ids are 1, 2, ... as for the lines of a .txt file."""
    records = []
    for number, text in enumerate(texts, 1):
        if not isinstance(text, str):
            raise UsageError(f"text {number} is a {type(text).__name__}, not a str", hint="give a string or a list of strings")
        records.append(TextRecord(number, str(number), text))
    rows = _Collect()
    report = explain_texts(explainer, records, tokenizer, [rows], on_error="fail", **options)
    return TextExplanation(list(rows), explainer.composite.name, report.notes)
