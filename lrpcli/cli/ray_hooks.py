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
        factory = ExplainerFactory(model, options, composite=explainer.composite)
        return explain_rows_ray(factory, explainer.model, path, source, output, workers=options.get("workers"), **kwargs)

    return run


def ray_images(model: str, options: dict[str, Any]) -> Callable[..., Any]:
    """A stand-in for :func:`lrpcli.runs.images.explain_images` (its call as ``lrp explain`` makes it) on Ray."""
    from ..runs.ray_run import explain_images_ray

    options = {k: v for k, v in options.items()}

    def run(explainer: Any, items: Any, preprocessing: Any, run_options: Any, targets: Any, classes: Any, run_info: Any, progress: Any = None) -> Any:
        factory = ExplainerFactory(model, options, composite=explainer.composite)
        return explain_images_ray(factory, explainer, items, preprocessing, run_options, targets, classes, run_info, workers=options.get("workers"), progress=progress)

    return run
