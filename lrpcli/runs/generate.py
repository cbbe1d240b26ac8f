"""A language model's generation explained token by token (``lrp explain LM PROMPTS --max-new-tokens N``).

Per prompt: greedy decoding through the prepared graph (the same numbers the walk starts from), then the
explanation of every generated token over every token before it (the prompt and the tokens generated
earlier). A causal model's logits at position p depend on positions <= p only, so one sequence (the prompt
and the generated tokens, right-padded to a bucket length) holds what every generated token was predicted
from: one capture serves the whole generation and all its walks, and the N seeds (the generated token's
logit at the position that predicted it) are walked back together, the sequence repeated once per seed in
the batch, a few seeds at a time (``seeds_per_walk``). Models that return the next token's logits only
(batch, vocabulary) are explained prefix by prefix, one walk per generated token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from ..data.text import Encoded, TextRecord, TextTokenizer, batch_length
from ..engine.explainer import Explainer
from ..errors import InputError, UsageError
from ..render.text import token_entries, word_entries
from .choices import Failure, resolve_device, resolve_dtype
from .texts import check_vocabulary, fixed_length, mask_input

#: floats of (seeds x positions x vocabulary) logits a walk may hold at once (about 256 MiB in float32)
SEED_BUDGET = 1 << 26


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
    progress: Callable[[int], None] | None = None,
) -> GenerationReport:
    """Generate up to ``max_new_tokens`` tokens per prompt (greedy; a stop id ends it early), explain each
    generated token, and hand one row per prompt to every writer as it is done."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be at least 1, got {max_new_tokens!r}")
    if init not in ("value", "one-hot"):
        raise UsageError(f"a generation starts each walk from the token's logit ('value') or 1 ('one-hot'), not {init!r}")
    torch_device = resolve_device(device)
    explainer.float_dtype = resolve_dtype(dtype)
    mask_name = mask_input(explainer.model, mask)
    fixed = fixed_length(explainer.model)
    stops = {int(i) for i in stop_ids}
    report = GenerationReport()
    for record in records:
        report.prompts_in += 1
        try:
            if record.error is not None:
                raise InputError(record.error)
            encoded = tokenizer.encode([record.text], [record.where])[0]
            row = _explain_prompt(explainer, record, encoded, tokenizer, max_new_tokens, stops, torch_device, fixed, mask_name, init, seeds_per_walk, report)
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


def _explain_prompt(explainer, record, encoded: Encoded, tokenizer, max_new_tokens, stops, device, fixed, mask_name, init, seeds_per_walk, report) -> dict[str, Any]:
    prompt = list(encoded.ids)
    if encoded.truncated:
        raise InputError(f"{record.where}: the prompt is longer than the model's {tokenizer.max_length} tokens", hint="shorten it, or raise --max-length where the model allows")
    room = (fixed or tokenizer.max_length) - len(prompt)
    if room < 1:
        raise InputError(f"{record.where}: the prompt fills all {fixed or tokenizer.max_length} positions; no token can follow it")
    if max_new_tokens > room:
        report.note(f"generation stops at the model's {fixed or tokenizer.max_length} positions ({room} new token(s) after a {len(prompt)}-token prompt)")
    length = batch_length(len(prompt) + min(max_new_tokens, room), tokenizer.max_length, fixed)
    ids = torch.full((1, length), tokenizer.pad_id, dtype=torch.int64, device=device)
    attention = torch.zeros((1, length), dtype=torch.int64, device=device)
    ids[0, : len(prompt)] = torch.tensor(prompt)
    attention[0, : len(prompt)] = 1
    inputs = (lambda a: {mask_name: a}) if mask_name else (lambda a: None)
    check_vocabulary(explainer, tokenizer, ids, inputs(attention))
    generation = _generate(explainer, ids, attention, inputs, len(prompt), min(max_new_tokens, room), stops)
    relevance = _relevance(explainer, ids, attention, inputs, generation, init, seeds_per_walk, report)
    return _row(record, encoded, tokenizer, generation, relevance)


def _next_token_scores(explainer: Explainer, ids: torch.Tensor, attention: torch.Tensor, inputs, position: int) -> torch.Tensor:
    """The vocabulary's logits for the token after ``position``: the sequence model's row at that position,
    or a next-token model's output on the prefix."""
    outputs = explainer.forward(ids, inputs(attention))
    if outputs.ndim == 3:
        return outputs[0, position]
    if outputs.ndim == 2:
        return outputs[0]
    raise InputError(f"a language model returns (batch, positions, vocabulary) or (batch, vocabulary) logits, this one {tuple(outputs.shape)}")


def _generate(explainer, ids, attention, inputs, prompt_length: int, count: int, stops: set[int]) -> Generation:
    """Greedy decoding, written into ``ids``/``attention`` as it goes (the padded sequence the walk uses)."""
    generation = Generation(prompt=ids[0, :prompt_length].tolist())
    for step in range(count):
        position = prompt_length + step - 1
        scores = _next_token_scores(explainer, *_prefix(explainer, ids, attention, position), inputs, position)
        token = int(scores.argmax())
        generation.ids.append(token)
        generation.logits.append(float(scores[token]))
        generation.probabilities.append(float(torch.softmax(scores.double(), 0)[token]))
        if position + 1 < ids.shape[1]:
            ids[0, position + 1] = token
            attention[0, position + 1] = 1
        if token in stops:
            generation.stopped = True
            break
    return generation


def _prefix(explainer: Explainer, ids: torch.Tensor, attention: torch.Tensor, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the model is fed to predict the token after ``position``: the padded sequence for a sequence model
    (later positions do not reach this one), the exact prefix for a model that reads its last position."""
    if _per_position(explainer, ids, attention):
        return ids, attention
    return ids[:, : position + 1], attention[:, : position + 1]


def _per_position(explainer: Explainer, ids: torch.Tensor, attention: torch.Tensor) -> bool:
    """Does the model return logits per position (batch, positions, vocabulary)? Asked once per explainer."""
    known = getattr(explainer, "_lrpcli_per_position", None)
    if known is None:
        mask_name = mask_input(explainer.model)
        outputs = explainer.forward(ids, {mask_name: attention} if mask_name else None)  # the shape generation uses
        known = outputs.ndim == 3
        explainer._lrpcli_per_position = known
    return known


def _relevance(explainer, ids, attention, inputs, generation: Generation, init, seeds_per_walk, report) -> list[list[float]]:
    """Per generated token, the relevance of every token before it (prompt first)."""
    prompt_length, count = len(generation.prompt), len(generation.ids)
    positions = [prompt_length + k - 1 for k in range(count)]
    if not _per_position(explainer, ids, attention):
        report.note("the model returns the next token's logits only: each generated token is explained on its own prefix (one walk and one capture per length)")
        result = []
        for position, token in zip(positions, generation.ids):
            x, a = ids[:, : position + 1], attention[:, : position + 1]
            explained = explainer.explain(x, token, init=init, inputs=inputs(a))
            result.append(explained.relevance[0].double().cpu().tolist())
        return result
    vocabulary = None
    result: list[list[float]] = []
    step = seeds_per_walk or 0
    start = 0
    while start < count:
        if not step:  # as many seeds per walk as SEED_BUDGET allows, learned from the first forward's logits
            vocabulary = vocabulary or int(explainer.forward(ids, inputs(attention)).shape[-1])
            step = max(1, min(count, SEED_BUDGET // max(1, ids.shape[1] * vocabulary)))
        chunk = list(range(start, min(start + step, count)))
        batch = len(chunk)

        def seed(outputs: torch.Tensor, targets: Any, chunk=chunk) -> torch.Tensor:
            start_tensor = torch.zeros_like(outputs)
            for row, k in enumerate(chunk):
                position, token = positions[k], generation.ids[k]
                start_tensor[row, position, token] = outputs[row, position, token] if init == "value" else 1.0
            return start_tensor

        explained = explainer.explain(ids.expand(batch, -1).clone(), init=seed, inputs=inputs(attention.expand(batch, -1).clone()))
        for note in explained.notes:
            report.note(note)
        relevance = explained.relevance.double().cpu()
        for row, k in enumerate(chunk):
            position = positions[k]
            beyond = relevance[row, position + 1 :].abs().sum()
            if float(beyond) > 1e-6 * max(float(relevance[row].abs().sum()), 1e-30):
                report.note("relevance reached tokens after the one being predicted: the model is not causal, so a token's explanation depends on what followed it")
            result.append(relevance[row, : position + 1].tolist())
        start += batch
    return result


def _row(record: TextRecord, encoded: Encoded, tokenizer: TextTokenizer, generation: Generation, relevance: list[list[float]]) -> dict[str, Any]:
    """The JSON line of one prompt: its tokens, and per generated token its relevance over what came before."""
    prompt_length = len(generation.prompt)
    vocabulary = tokenizer.tokenizer
    generated = []
    for k, (token, logit, probability, values) in enumerate(zip(generation.ids, generation.logits, generation.probabilities, relevance)):
        generated.append(
            {
                "token": vocabulary.id_to_token(token) or f"<{token}>",
                "text": vocabulary.decode([token], skip_special_tokens=False),
                "id": token,
                "position": prompt_length + k,
                "logit": logit,
                "probability": probability,
                "relevance_sum": float(sum(values)),
                "relevance": values,
                "words": word_entries(record.text, encoded, values[:prompt_length]),
            }
        )
    row: dict[str, Any] = {"id": record.id, "text": record.text}
    row["prompt_tokens"] = [token["token"] for token in token_entries(encoded, [0.0] * prompt_length)]
    row["generated_text"] = vocabulary.decode(generation.ids, skip_special_tokens=False)
    row["stopped"] = generation.stopped
    row["generated"] = generated
    return row
