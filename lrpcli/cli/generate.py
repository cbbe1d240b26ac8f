"""``lrp explain LM PROMPTS --max-new-tokens N``: a language model's generation, explained token by token."""

from __future__ import annotations

import contextlib
import hashlib
import sys
from pathlib import Path
from typing import Any

from .console import info, note, progress, warn
from .options import build_composite, graph_store, load_model_option, parse_params

#: the composite a generation runs with where neither -c nor the model spec names one (AttnLRP)
GENERATION_COMPOSITE = "attnlrp"


def explain_generation(model: str, spec: Any, source: str, options: dict[str, Any]) -> None:
    from ..data.tabular import open_csv
    from ..data.text import read_texts, text_format
    from ..engine.explainer import Explainer
    from ..errors import InputError, UsageError
    from ..outputs import atomic_text
    from ..render.text import TextWriter
    from ..report.generation import GenerationPage
    from .tabular import report_page, write_run_page
    from ..runs.generate import explain_generations
    from ..runs.texts import text_tokenizer
    from ..sources import hf
    from ..sources.cache import DiskCache

    for flag, why in (("top_k", "picks classes"), ("target", "names a class"), ("html", "draws classified texts"), ("shard", "splits texts")):
        if options.get(flag) is not None and options.get(flag) is not False:
            raise UsageError(f"--{flag.replace('_', '-')} {why}; a generation explains each token it generates", hint="leave it out with --max-new-tokens")
    if options.get("fmt") not in (None, "jsonl"):
        raise UsageError(f"--max-new-tokens writes JSON lines (one per prompt), not {options['fmt']}")
    spec_input = spec.input if spec else {}
    tokenizer = text_tokenizer(spec_input, options["tokenizer"], options["max_length"])
    composite = build_composite(options["composite"], spec, parse_params(options["params"]), default=GENERATION_COMPOSITE)
    loaded = hf.all_positions(load_model_option(model, spec, options))
    explainer = Explainer(loaded, composite)
    store = graph_store(model, spec, options)
    if store is not None:  # the all-positions graph is not the next-token one: a key of its own
        explainer.graph_store = DiskCache(hashlib.sha256(f"{store.model_id}:all-positions".encode()).hexdigest())
    contrast = None
    if options.get("contrast") is not None:  # a token of the vocabulary: "this token rather than that one"
        contrast = tokenizer.tokenizer.token_to_id(str(options["contrast"]))
        if contrast is None:
            pieces = tokenizer.tokenizer.encode(str(options["contrast"]), add_special_tokens=False).tokens
            raise UsageError(
                f"--contrast '{options['contrast']}' is not one token of the model's vocabulary"
                + (f" (the tokenizer splits it into {', '.join(pieces)})" if len(pieces) > 1 else ""),
                hint="give a single token as the tokenizer spells it (a generated row's 'token' field shows the spelling)",
            )
    folder = spec.model if spec is not None and hf.is_folder(spec.model) else None
    stops = hf.stop_ids(folder) if folder else []
    text_col = options["text_col"] or spec_input.get("text_col")
    name = "<stdin>" if source == "-" else source
    if source != "-" and not Path(source).is_file():
        raise InputError(f"input not found: {source}")
    page_path = report_page(options, options["out"])
    page = GenerationPage() if page_path else None
    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(open_csv(source))
        records = read_texts(handle, name, text_format(source, text_col), text_col=text_col, id_col=options["id_col"] or spec_input.get("id_col"))
        writers: list[Any] = [TextWriter(stack.enter_context(atomic_text(Path(options["out"]))) if options["out"] else sys.stdout, "jsonl")]
        if page is not None:
            writers.append(page)
        with progress("explaining generations", None, options["quiet"]) as advance:
            explainer.stages = advance.stage
            report = explain_generations(
                explainer, records, tokenizer, writers,
                max_new_tokens=options["max_new_tokens"] or 1, stop_ids=stops, device=options["device"], dtype=options["dtype"],
                init=options["init"], mask=spec_input.get("mask"), on_error=options["on_error"], progress=advance, contrast=contrast,
                continuation_col=options.get("continuation_col"), context_col=options.get("context_col"),
            )
    wrote = page is not None and write_run_page(page, page_path, model, composite, name, options)
    for line in report.notes:
        note(line)
    for failure in report.failures:
        warn(f"{failure.input}: {failure.message}")
    if not options["quiet"]:
        where = f" -> {options['out']}" if options["out"] else ""
        where += f", report page {page_path}" if wrote else ""
        info(f"explained {report.tokens_out} generated token(s) of {report.rows_out} of {report.prompts_in} prompt(s) with {composite.name}{where}")
    if report.failures:
        raise InputError(f"{len(report.failures)} of {report.prompts_in} prompt(s) failed; the others were written")
