"""``lrp explain --ray``: what the CLI hands the Ray executor (lrpcli/runs/ray_run.py).

The executor's actors each build their own explainer; :class:`ExplainerFactory` is the small picklable recipe for
it (the model path and the command's options), so that no loaded model is ever shipped to a worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .options import build_composite, load_model_option, model_spec, new_explainer, parse_params


@dataclass
class ExplainerFactory:
    """Builds, in an actor, the explainer the plain run builds: the same spec, composite and model options."""

    model: str
    options: dict[str, Any]
    default: str = "epsilon_plus_flat"
    composite: Any = None  # the driver's resolved composite (z^B bounds from the preprocessing included), if built
    cwd: str = field(default_factory=os.getcwd)

    def __call__(self) -> Any:
        if os.path.isdir(self.cwd):  # relative paths in the options are the driver's
            os.chdir(self.cwd)
        spec = model_spec(self.model, self.options)
        composite = self.composite or build_composite(self.options["composite"], spec, parse_params(self.options["params"]), default=self.default)
        return new_explainer(load_model_option(self.model, spec, self.options), composite, self.model, spec, self.options)


def ray_rows(model: str, options: dict[str, Any]) -> Callable[..., Any]:
    """A stand-in for :func:`lrpcli.runs.rows.explain_rows` (its call as explain_csv makes it) that runs on Ray."""
    from ..runs.ray_run import explain_rows_ray

    options = {k: v for k, v in options.items()}

    def run(explainer: Any, handle: Any, source: str, output: Any, *, path: str, **kwargs: Any) -> Any:
        from pathlib import Path

        from ..outputs import is_stream
        from ..sources.files import file_hash

        factory = ExplainerFactory(model, options, composite=explainer.composite)
        out = options.get("out")
        parts = Path(f"{out}.ray-parts") if out and not is_stream(out) else None  # finished blocks, for --resume
        spec = model_spec(model, options)
        settings = {"model": str(model), "model_sha256": file_hash(spec.model if spec else model), "composite": explainer.composite.to_dict()}
        return explain_rows_ray(
            factory, explainer.model, path, source, output, workers=options.get("workers"), parts=parts,
            resume=bool(options.get("resume")), settings=settings, **kwargs,
        )

    return run


def ray_images(model: str, options: dict[str, Any]) -> Callable[..., Any]:
    """A stand-in for :func:`lrpcli.runs.images.explain_images` (its call as ``lrp explain`` makes it) on Ray."""
    from ..runs.ray_run import explain_images_ray

    options = {k: v for k, v in options.items()}

    def run(explainer: Any, items: Any, preprocessing: Any, run_options: Any, targets: Any, classes: Any, run_info: Any, progress: Any = None) -> Any:
        factory = ExplainerFactory(model, options, composite=explainer.composite)
        return explain_images_ray(factory, explainer, items, preprocessing, run_options, targets, classes, run_info, workers=options.get("workers"), progress=progress)

    return run


def ray_texts(model: str, spec_input: dict[str, Any], options: dict[str, Any]) -> Callable[..., Any]:
    """A stand-in for :func:`lrpcli.runs.texts.explain_texts` (its call as ``lrp explain`` on texts makes it) on Ray;
    each actor builds the tokenizer as the driver did (from the spec or --tokenizer, by path)."""
    import functools

    from ..runs.ray_run import explain_texts_ray
    from ..runs.texts import text_tokenizer

    options = {k: v for k, v in options.items()}
    make_tokenizer = functools.partial(text_tokenizer, spec_input, options["tokenizer"], options["max_length"])

    def run(explainer: Any, records: Any, tokenizer: Any, writers: Any, progress: Any = None, **kwargs: Any) -> Any:
        factory = ExplainerFactory(model, options, default="epsilon", composite=explainer.composite)
        return explain_texts_ray(factory, make_tokenizer, records, writers, workers=options.get("workers"), progress=progress, **kwargs)

    return run
