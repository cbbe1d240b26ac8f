"""LRP inside your own Ray Data pipeline (issue 30): ``lrpcli.ray.explain_dataset(ds, model, composite)``.

Ray is imported only when :func:`explain_dataset` runs (``pip install 'lrpcli[ray]'``). The model travels as what
you give: a path (a spec, TorchScript, ``.pt2``) is loaded once per actor, a module object is pickled to each actor.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import UsageError


class _Explain:
    """One actor: its explainer built once, then each batch explained (the relevance beside the input columns)."""

    def __init__(self, model: Any, composite: Any, params: dict[str, Any] | None, features: Any, target: Any, dtype: str, device: str, init: str):
        import torch

        from .api import Explainer
        from .runs.choices import resolve_device, resolve_dtype

        self.explainer = Explainer(model, composite, params=params)
        self.device, self.dtype = resolve_device(device), resolve_dtype(dtype)
        self.features, self.target, self.init = features, target, init
        self.explainer.model.to(self.device) if isinstance(self.explainer.model, torch.nn.Module) else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if isinstance(self.features, str):  # one tensor column: each row an array (an image, a sequence)
            x = np.stack(list(batch[self.features]))
        else:
            x = np.stack([np.asarray(batch[name], dtype=np.float64) for name in self.features], axis=1)
        result = self.explainer.explain(torch.as_tensor(x).to(device=self.device, dtype=self.dtype), self.target, init=self.init)
        n = x.shape[0]
        relevance = result.relevance.detach().cpu().numpy()
        logits = result.outputs.detach().cpu().numpy().reshape(n, -1)
        targets = result.targets.detach().cpu().numpy().astype(np.int64) if hasattr(result.targets, "detach") else np.asarray(result.targets, np.int64)
        out = dict(batch)
        out["prediction"] = logits[:, 0] if logits.shape[1] == 1 else logits.argmax(1).astype(np.int64)
        out["target"] = targets
        out["logit"] = logits[np.arange(n), targets]
        out["relevance_sum"] = relevance.reshape(n, -1).astype(np.float64).sum(1)
        if isinstance(self.features, str):
            out["relevance"] = relevance
        else:
            for k, name in enumerate(self.features):
                out[f"relevance_{name}"] = np.ascontiguousarray(relevance[:, k])
        return out


def explain_dataset(
    ds: Any,
    model: Any,
    composite: Any = "epsilon",
    *,
    features: Sequence[str] | str,
    target: int | None = None,
    params: dict[str, Any] | None = None,
    batch_size: int = 256,
    workers: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
    init: str = "value",
    num_gpus: float | None = None,
) -> Any:
    """A Ray Dataset of ``ds``'s rows with the model's prediction, target, logit, relevance_sum and relevance.

    ``features`` are the columns fed to the model, in its order (each gets a ``relevance_<name>`` column), or the
    name of one column holding an array per row (images, sequences; its relevance is the ``relevance`` column).
    ``target`` is a class index (default: each row's prediction). ``workers`` actors each load ``model`` once;
    ``device="cuda"`` asks each actor for a GPU (``num_gpus`` to ask for another share). Nothing runs until the
    dataset is consumed."""
    if not features:
        raise UsageError("explain_dataset needs features: the model's input columns, or one column of arrays")
    if workers < 1 or batch_size < 1:
        raise UsageError(f"workers and batch_size must be at least 1 (got {workers}, {batch_size})")
    from .runs.ray_run import actor_options, require_ray

    ray = require_ray()
    if isinstance(composite, str):  # a bad name is said here, not by an actor that fails to start
        from .engine.composite_yaml import load_composite

        load_composite(composite)
    features = features if isinstance(features, str) else list(features)
    return ds.map_batches(
        _Explain,
        fn_constructor_args=(model, composite, params, features, target, dtype, device, init),
        batch_size=batch_size,
        batch_format="numpy",
        **with_gpus(actor_options(ray, workers, device), num_gpus),
    )


def with_gpus(options: dict[str, Any], num_gpus: float | None) -> dict[str, Any]:
    """The actor options with ``num_gpus`` per actor where the caller gives it (in place of a whole GPU or a CPU)."""
    if num_gpus is None:
        return options
    options = {k: v for k, v in options.items() if k not in ("num_gpus", "num_cpus")}
    return {**options, "num_gpus": num_gpus} if num_gpus else {**options, "num_cpus": 1}
