"""Selective state-space mixers (Mamba), captured with their input-dependent parameters held constant.

A Mamba mixer's selective SSM runs ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t``, ``y_t = C_t h_t + D x_t``, where
Δ, B and C are computed from the input by the mixer's ``x_proj`` (Δ then through ``dt_proj`` and softplus). The
recurrence is linear in ``x`` and ``h`` once Δ, Ā = exp(ΔA), B and C are fixed; through them, the input changes
the operator itself. MambaLRP (Rezaei Jafari et al., NeurIPS 2024, Sec. 4 "selective SSM"; the authors' code,
``mamba_lrp/model/mamba_huggingface.py``, detaches ``discrete_A``, ``discrete_B`` and ``C``) holds them constant,
as AttnLRP and CP-LRP hold a gate: relevance flows through ``x`` and the state only, and the scan conserves it.

While the model is captured, the output of every selective mixer's ``x_proj`` passes :func:`lrpcli::held
<lrpcli.engine.experts.held>` (a forward hook: the module and its path are unchanged). Everything computed from
it alone (Δ, the discretisation's ``exp``, Ā, B̄, C) is then of kind "meta" in the graph: no relevance, no
rule needed; the products ``Ā h``, ``B̄ x`` and ``h C`` have one live factor and scale it. The rest of MambaLRP is
the existing rules (configs/mambalrp.yaml): SiLU passes relevance unchanged, the gate ``y * silu(z)`` splits it
half/half (``uniform``), RMSNorm holds its normaliser.

The hook only marks a value: the captured graph computes what the model computes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from . import experts  # noqa: F401  (registers the lrpcli::held op)

#: the mixers' submodule whose output holds Δ, B and C (transformers' Mamba, FalconMamba, Jamba, Zamba mixers)
SELECTION = "x_proj"


def is_selective_mixer(module: torch.nn.Module) -> bool:
    """A transformers Mamba-1 style mixer: a class named ``...MambaMixer`` with the SSM's ``A_log`` and a linear
    ``x_proj`` that makes Δ, B and C from the input."""
    return (
        type(module).__name__.endswith("MambaMixer")
        and isinstance(getattr(module, SELECTION, None), torch.nn.Linear)
        and isinstance(getattr(module, "A_log", None), torch.Tensor)
    )


def _hold(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
    return torch.ops.lrpcli.held(output)


@contextlib.contextmanager
def held_selection(model: Any) -> Iterator[list[str]]:
    """While open, the ``x_proj`` output of every selective mixer of ``model`` (an nn.Module) passes
    lrpcli::held; yields the mixers' paths. The hooks are removed afterwards, whatever happens."""
    handles = []
    paths: list[str] = []
    if isinstance(model, torch.nn.Module):
        for path, module in model.named_modules():
            if is_selective_mixer(module):
                handles.append(getattr(module, SELECTION).register_forward_hook(_hold))
                paths.append(path)
    try:
        yield paths
    finally:
        for handle in handles:
            handle.remove()


def note(paths: list[str]) -> str:
    """The graph note that says what was held."""
    return f"selective SSM parameters (Δ, A-bar = exp(ΔA), B, C) held constant (MambaLRP): {', '.join(paths)}"
