"""``lrp inspect``: which rule each layer gets, before any heavy run."""

from __future__ import annotations

from typing import Any

import click

from .console import console, warn
from .options import build_composite, composite_options, input_shape_option, json_option, load_model_option, model_options, parse_params, refuse_overwriting_inputs, spec_preprocessing, write_json, model_spec


#: rule options the table shows only where they are set (--json lists every parameter)
QUIET_DEFAULTS = {"stabilizer_mode": "sign", "zero_params": []}


@click.command(
    epilog="""\b
Examples:
  lrp inspect sample_models/shapes_minivgg/model.yaml
  lrp inspect model.pt --arch lrpcli.architectures:MiniVGG --input-shape 3,32,32 -c epsilon_gamma_box
  lrp inspect sample_models/digits_cnn/model.yaml --json
"""
)
@click.argument("model", type=click.Path(exists=True))
@model_options
@composite_options
@click.option("--input-shape", metavar="C,H,W", help="One input's shape without the batch (default: from the model spec).")
@json_option("the report")
def inspect(model: str, composite: str | None, input_shape: str | None, json_path: str | None, **options: Any) -> None:
    """Show the captured graph of MODEL and the LRP rule each layer gets.

    Lists every layer with its path, type, output shape, parameter count, rule and
    the composite line that chose it; ops that only route relevance are folded into
    the row before them. Warns about composite lines that match nothing, layers that
    fall back to a default rule, and ops no rule covers.
    """
    import torch

    from ..errors import UsageError
    from ..runs.inspect import inspect_model

    spec = model_spec(model, options)
    refuse_overwriting_inputs(model, spec, (), {**options, "composite": composite, "json_path": None if json_path == "-" else json_path})
    from ..sources.files import saved_input_shape

    shape = input_shape_option(input_shape, spec)
    loaded = load_model_option(model, spec, options)
    shape = shape or saved_input_shape(loaded)  # a .pt2 says what it takes
    if shape is None:
        from ..sources.files import input_channels

        channels = input_channels(loaded)
        example = f"{channels},H,W (the first layer takes {channels} channel(s))" if channels else "C,H,W (or F for tabular models)"
        raise UsageError("the input shape is unknown", hint=f"pass --input-shape {example}, or use a model spec with input.size")
    preprocessing = spec_preprocessing(spec) if spec is not None and shape is not None and len(shape) == 3 else None
    comp = build_composite(composite, spec, parse_params(options["params"]), preprocessing)
    report = inspect_model(loaded, torch.zeros(1, *shape), comp)
    if json_path:
        write_json(json_path, report.to_dict())
        if json_path == "-":
            return
    from rich.table import Table

    table = Table(title=f"{model} with {report.composite} (input {tuple(report.input_shape)}, captured via {report.source})")
    table.add_column("layer", no_wrap=True)
    for column in ("type", "output", "params", "rule", "matched by", "then routed by"):
        table.add_column(column, overflow="fold")
    from rich.markup import escape

    for layer in report.layers:
        rule = layer.rule or "[red]none[/]"
        shown = {k: v for k, v in layer.rule_params.items() if QUIET_DEFAULTS.get(k, object()) != v}
        if shown:
            rule += " (" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"
        table.add_row(
            escape(layer.module),
            escape(layer.type),
            "x".join(str(s) for s in layer.output_shape[1:]) or "-",
            f"{layer.parameters:,}" if layer.parameters else "",
            rule,
            layer.matched_by.split(" {")[0].replace("<built-in ", "").replace(">", ".yaml"),
            ", ".join(layer.routed_after),
        )
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    for message in report.warnings:
        warn(message)
