"""A language model's generation explained token by token (``lrp explain LM PROMPTS --max-new-tokens N``).

Per prompt: greedy decoding through the prepared graph (the same numbers the walk starts from), then the
explanation of every generated token over every token before it (the prompt and the tokens generated
earlier). A causal model's logits at position p depend on positions <= p only, so one sequence (the prompt
and the generated tokens, right-padded to a bucket length) holds what every generated token was predicted
from: one capture serves the whole generation and all its walks. Each seed (the generated token's logit at the
position that predicted it) is walked back on one recorded forward of that sequence, one read-only walk per seed
(Explainer.explain_starts: no copy of the forward per seed; ``seeds_per_walk`` > 1 walks that many together on the
sequence repeated, N times the memory). Models that return the
next token's logits only (batch, vocabulary) are explained prefix by prefix, one walk per generated token.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from ..data.text import Encoded, TextRecord, TextTokenizer, batch_length
from ..engine.explainer import Explainer
from ..errors import InputError, UsageError
from ..render.text import token_entries, word_entries
from .choices import Failure, resolve_device, resolve_dtype
from .texts import check_vocabulary, fixed_length, mask_input

@dataclass
class GenerationReport:
    prompts_in: int = 0
    rows_out: int = 0
    tokens_out: int = 0
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, line: str) -> None:
        if line not in self.notes:
            self.notes.append(line)


@dataclass
class Generation:
    """One prompt's greedy continuation: the ids, and per generated token its logit and probability."""

    prompt: list[int]
    ids: list[int] = field(default_factory=list)
    logits: list[float] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    stopped: bool = False  # ended at a stop token before max_new_tokens
    forced: bool = False  # the tokens were given (teacher forcing), not generated
    greedy: list[int] = field(default_factory=list)  # per position, the token the model ranks first


@dataclass
class GenerationOptions:
    """What a generation run is told besides the model and the prompts."""

    max_new_tokens: int = 1
    stop_ids: tuple[int, ...] = ()
    init: str = "value"
    #: a token id: explain each token rather than this one (relevance of the logit difference)
    contrast: int | None = None
    #: a column of the prompts file holding the answer to explain instead of a generated one (teacher forcing)
    continuation_col: str | None = None
    #: a column holding a passage or document the prompt follows; the answer's relevance is summed per passage
    #: (blank-line separated) and per sentence of it
    context_col: str | None = None
    seeds_per_walk: int | None = None


#: what joins a context and its prompt into the text the model reads
CONTEXT_SEPARATOR = "\n\n"


def explain_generations(
    explainer: Explainer,
    records: Iterable[TextRecord],
    tokenizer: TextTokenizer,
    writers: list[Any],
    *,
    max_new_tokens: int = 1,
    stop_ids: Iterable[int] = (),
    device: str = "auto",
    dtype: str = "float32",
    init: str = "value",
    mask: str | None = None,
    on_error: str = "skip",
    seeds_per_walk: int | None = None,
    contrast: int | None = None,
    continuation_col: str | None = None,
    context_col: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> GenerationReport:
    """Generate up to ``max_new_tokens`` tokens per prompt (greedy; a stop id ends it early), or take the
    answer from ``continuation_col``, explain each of its tokens, and hand one row per prompt to every writer
    as it is done."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be at least 1, got {max_new_tokens!r}")
    if init not in ("value", "one-hot"):
        raise UsageError(f"a generation starts each walk from the token's logit ('value') or 1 ('one-hot'), not {init!r}")
    options = GenerationOptions(max_new_tokens, tuple(int(i) for i in stop_ids), init, contrast, continuation_col, context_col, seeds_per_walk)
    torch_device = resolve_device(device)
    explainer.float_dtype = resolve_dtype(dtype)
    mask_name = mask_input(explainer.model, mask)
    fixed = fixed_length(explainer.model)
    report = GenerationReport()
    for record in records:
        report.prompts_in += 1
        try:
            if record.error is not None:
                raise InputError(record.error)
            row = _explain_prompt(explainer, record, tokenizer, options, torch_device, fixed, mask_name, report)
        except InputError as exc:
            if on_error == "fail":
                raise
            report.failures.append(Failure(record.id, exc.message))
        else:
            for writer in writers:
                writer.write([row])
            report.rows_out += 1
            report.tokens_out += len(row["generated"])
        if progress:
            progress(1)
    return report


def _column(record: TextRecord, column: str, option: str) -> str:
    """A further column of the prompt's row (the continuation, the context), or an InputError naming it."""
    if record.row is None:
        raise InputError(f"{record.where}: {option} needs a CSV or JSON-lines file of prompts", hint="one row per prompt, with a column for the prompt (--text-col) and one for this")
    value = record.row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{record.where}: no value in column '{column}' ({option})", hint=f"the columns are: {', '.join(map(str, record.row))}")
    return str(value)


def _explain_prompt(explainer, record, tokenizer, options: GenerationOptions, device, fixed, mask_name, report) -> dict[str, Any]:
    context = _column(record, options.context_col, "--context-col") if options.context_col else None
    text = record.text if context is None else context + CONTEXT_SEPARATOR + record.text
    encoded = tokenizer.encode([text], [record.where])[0]
    prompt = list(encoded.ids)
    limit = fixed or tokenizer.max_length
    if encoded.truncated:
        raise InputError(f"{record.where}: the prompt{' and its context' if context else ''} is longer than the model's {tokenizer.max_length} tokens", hint="shorten it, or raise --max-length where the model allows")
    forced = None
    if options.continuation_col:
        answer = _column(record, options.continuation_col, "--continuation-col")
        forced = list(tokenizer.tokenizer.encode(answer, add_special_tokens=False).ids)
        if not forced:
            raise InputError(f"{record.where}: the continuation '{answer}' has no tokens")
        if len(prompt) + len(forced) - 1 > limit:
            raise InputError(f"{record.where}: the prompt and its continuation take {len(prompt) + len(forced)} tokens, more than the model's {limit}")
    room = limit - len(prompt)
    if room < 1:
        raise InputError(f"{record.where}: the prompt fills all {limit} positions; no token can follow it")
    count = len(forced) if forced else min(options.max_new_tokens, room)
    if not forced and options.max_new_tokens > room:
        report.note(f"generation stops at the model's {limit} positions ({room} new token(s) after a {len(prompt)}-token prompt)")
    length = batch_length(len(prompt) + count, tokenizer.max_length, fixed)
    ids = torch.full((1, length), tokenizer.pad_id, dtype=torch.int64, device=device)
    # the pads after the prompt are attended to (mask 1): a causal model's positions never see later ones, so that
    # changes nothing before them, while a pad whose window holds only pads (sliding-window attention) would
    # otherwise have every key masked: an all -inf softmax row, NaN, and 0 * NaN in the next layer reached the
    # real positions (float64 Gemma 3 / Mistral generated [PAD] with NaN logits)
    attention = torch.ones((1, length), dtype=torch.int64, device=device)
    ids[0, : len(prompt)] = torch.tensor(prompt)
    inputs = (lambda a: {mask_name: a}) if mask_name else (lambda a: None)
    check_vocabulary(explainer, tokenizer, ids, inputs(attention))
    generation = _generate(explainer, ids, attention, inputs, len(prompt), count, set(options.stop_ids), forced)
    relevance = _relevance(explainer, ids, attention, inputs, generation, options, report)
    return _row(record, text, context, encoded, tokenizer, generation, relevance, options)


def _next_token_scores(explainer: Explainer, ids: torch.Tensor, attention: torch.Tensor, inputs, position: int) -> torch.Tensor:
    """The vocabulary's logits for the token after ``position``: the sequence model's row at that position,
    or a next-token model's output on the prefix."""
    outputs = explainer.forward(ids, inputs(attention))
    if outputs.ndim == 3:
        return outputs[0, position]
    if outputs.ndim == 2:
        return outputs[0]
    raise InputError(f"a language model returns (batch, positions, vocabulary) or (batch, vocabulary) logits, this one {tuple(outputs.shape)}")


def _generate(explainer, ids, attention, inputs, prompt_length: int, count: int, stops: set[int], forced: list[int] | None = None) -> Generation:
    """Greedy decoding, or the ``forced`` tokens (teacher forcing), written into ``ids`` as it goes (the padded
    sequence the walk uses)."""
    generation = Generation(prompt=ids[0, :prompt_length].tolist(), forced=forced is not None)
    for step in range(count):
        position = prompt_length + step - 1
        scores = _next_token_scores(explainer, *_prefix(explainer, ids, attention, position), inputs, position)
        token = forced[step] if forced is not None else int(scores.argmax())
        generation.greedy.append(int(scores.argmax()))
        generation.ids.append(token)
        generation.logits.append(float(scores[token]))
        generation.probabilities.append(float(torch.softmax(scores.double(), 0)[token]))
        if position + 1 < ids.shape[1]:
            ids[0, position + 1] = token
        if forced is None and token in stops:
            generation.stopped = True
            break
    return generation


def _prefix(explainer: Explainer, ids: torch.Tensor, attention: torch.Tensor, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the model is fed to predict the token after ``position``: the padded sequence for a sequence model
    (later positions do not reach this one), the exact prefix for a model that reads its last position."""
    if _per_position(explainer, ids, attention):
        return ids, attention
    return ids[:, : position + 1], attention[:, : position + 1]


#: what a generation learns about an explainer's model once: whether it returns logits per position (it costs
#: a forward, not to be paid per prompt)
_PROBED: "weakref.WeakKeyDictionary[Explainer, dict[Any, Any]]" = weakref.WeakKeyDictionary()


def _probed(explainer: Explainer, key: Any, measure: Callable[[], Any]) -> Any:
    known = _PROBED.setdefault(explainer, {})
    if key not in known:
        known[key] = measure()
    return known[key]


def _per_position(explainer: Explainer, ids: torch.Tensor, attention: torch.Tensor) -> bool:
    """Does the model return logits per position (batch, positions, vocabulary)? Asked once per explainer."""
    mask_name = mask_input(explainer.model)
    # (on the shape generation uses: no capture of another length)
    return _probed(explainer, "per_position", lambda: explainer.forward(ids, {mask_name: attention} if mask_name else None).ndim == 3)


def _relevance(explainer, ids, attention, inputs, generation: Generation, options: GenerationOptions, report) -> list[list[float]]:
    """Per generated token, the relevance of every token before it (prompt first)."""
    prompt_length, count = len(generation.prompt), len(generation.ids)
    positions = [prompt_length + k - 1 for k in range(count)]
    init, contrast = options.init, options.contrast
    if not _per_position(explainer, ids, attention):
        report.note("the model returns the next token's logits only: each generated token is explained on its own prefix (one walk and one capture per length)")
        result = []
        for position, token in zip(positions, generation.ids):
            x, a = ids[:, : position + 1], attention[:, : position + 1]
            explained = explainer.explain(x, token, init=init, contrast=contrast, inputs=inputs(a))
            result.append(explained.relevance[0].double().cpu().tolist())
        return result
    result: list[list[float]] = []
    # One recorded forward, one read-only walk per seed: the gradient's memory, and faster than walking the seeds
    # together on the sequence repeated from 26M parameters up (benchmarks/llm_speed_results.md)
    step = options.seeds_per_walk or 1
    if step == 1:
        def one_seed(k: int) -> Any:
            def start(outputs: torch.Tensor) -> torch.Tensor:
                return _seed(torch.zeros_like(outputs), outputs, 0, positions[k], generation.ids[k], contrast, init)
            return start

        outputs, maps = explainer.explain_starts(ids, [one_seed(k) for k in range(count)], inputs=inputs(attention))
        for k, relevance in enumerate(maps):
            result.append(_kept(relevance.double().cpu()[0], positions[k], report))
        return result
    start = 0
    while start < count:
        chunk = list(range(start, min(start + step, count)))
        batch = len(chunk)

        def seed(outputs: torch.Tensor, targets: Any, chunk=chunk) -> torch.Tensor:
            """Row r starts at its token's logit (minus the contrast token's), at the position that predicted it."""
            start_tensor = torch.zeros_like(outputs)
            for row, k in enumerate(chunk):
                _seed(start_tensor, outputs, row, positions[k], generation.ids[k], contrast, init)
            return start_tensor

        explained = explainer.explain(ids.expand(batch, -1).clone(), init=seed, inputs=inputs(attention.expand(batch, -1).clone()))
        for note in explained.notes:
            report.note(note)
        relevance = explained.relevance.double().cpu()
        for row, k in enumerate(chunk):
            result.append(_kept(relevance[row], positions[k], report))
        start += batch
    return result


def _seed(start: torch.Tensor, outputs: torch.Tensor, row: int, position: int, token: int, contrast: int | None, init: str) -> torch.Tensor:
    """``start`` (shaped like ``outputs``) with row ``row`` seeded: the token's logit (minus the contrast token's)
    at the position that predicted it."""
    start[row, position, token] = outputs[row, position, token] if init == "value" else 1.0
    if contrast is not None:
        start[row, position, contrast] -= outputs[row, position, contrast] if init == "value" else 1.0
    return start


def _kept(relevance: torch.Tensor, position: int, report: GenerationReport) -> list[float]:
    """The relevance of the tokens up to ``position`` (a causal model gives none to the later ones: said if it does)."""
    beyond = relevance[position + 1 :].abs().sum()
    if float(beyond) > 1e-6 * max(float(relevance.abs().sum()), 1e-30):
        report.note("relevance reached tokens after the one being predicted: the model is not causal, so a token's explanation depends on what followed it")
    return relevance[: position + 1].tolist()


def context_parts(context: str) -> list[dict[str, Any]]:
    """The context's passages (separated by blank lines) and each passage's sentences, as character spans."""
    passages = []
    for match in re.finditer(r"\S(?:.*?\S)?(?=\n[ \t]*\n|\s*$)", context, flags=re.S):
        sentences = [
            {"text": m.group(), "start": match.start() + m.start(), "end": match.start() + m.end()}
            for m in re.finditer(r"\S.*?(?:[.!?](?=\s|$)|$)", match.group(), flags=re.S)
        ]
        passages.append({"passage": len(passages), "text": match.group(), "start": match.start(), "end": match.end(), "sentences": sentences})
    return passages


def context_relevance(parts: list[dict[str, Any]], encoded: Encoded, values: list[float]) -> list[dict[str, Any]]:
    """Each passage's and sentence's relevance: the sum over the tokens that start inside it."""
    result = []
    for passage in parts:
        def total(start: int, end: int) -> float:
            return float(sum(
                value for value, (first, _), special in zip(values, encoded.offsets, encoded.special)
                if not special and start <= first < end
            ))

        sentences = [{**sentence, "relevance": total(sentence["start"], sentence["end"])} for sentence in passage["sentences"]]
        result.append({**passage, "relevance": total(passage["start"], passage["end"]), "sentences": sentences})
    return result


def _row(record: TextRecord, text: str, context: str | None, encoded: Encoded, tokenizer: TextTokenizer, generation: Generation,
         relevance: list[list[float]], options: GenerationOptions) -> dict[str, Any]:
    """The JSON line of one prompt: its tokens, and per generated token its relevance over what came before."""
    prompt_length = len(generation.prompt)
    vocabulary = tokenizer.tokenizer
    parts = context_parts(context) if context else None
    generated = []
    for k, (token, logit, probability, values) in enumerate(zip(generation.ids, generation.logits, generation.probabilities, relevance)):
        entry = {
            "token": vocabulary.id_to_token(token) or f"<{token}>",
            "text": vocabulary.decode([token], skip_special_tokens=False),
            "id": token,
            "position": prompt_length + k,
            "logit": logit,
            "probability": probability,
        }
        if generation.forced:  # what the model itself would have said here
            entry["greedy"] = generation.greedy[k]
            entry["greedy_token"] = vocabulary.id_to_token(generation.greedy[k]) or f"<{generation.greedy[k]}>"
        entry["relevance_sum"] = float(sum(values))
        entry["relevance"] = values
        entry["words"] = word_entries(text, encoded, values[:prompt_length])
        if parts is not None:
            entry["context"] = context_relevance(parts, encoded, values[:prompt_length])
        generated.append(entry)
    row: dict[str, Any] = {"id": record.id, "text": record.text}
    if context is not None:
        row["context"] = context
    row["prompt_tokens"] = [entry["token"] for entry in token_entries(encoded, [0.0] * prompt_length)]
    row["generated_text"] = vocabulary.decode(generation.ids, skip_special_tokens=False)
    row["stopped"] = generation.stopped
    row["continuation"] = generation.forced
    if options.contrast is not None:
        row["contrast"] = vocabulary.id_to_token(options.contrast) or f"<{options.contrast}>"
    row["generated"] = generated
    return row
