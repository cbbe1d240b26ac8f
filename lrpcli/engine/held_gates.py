"""Gates made from the input, held constant while captured: Qwen3-Next's delta rule decay, Gemma3n's sparsity cutoff.

Qwen3-Next's linear attention (transformers' ``Qwen3NextGatedDeltaNet``; Yang et al., "Gated Delta Networks",
ICLR 2025) updates a matrix state ``S_t = S_{t-1} exp(g_t) (I - beta_t k_t k_t^T) + beta_t v_t k_t^T`` and reads
``o_t = S_t q_t``, with ``beta = sigmoid(b)`` and ``g = -exp(A_log) softplus(a + dt_bias)``, where ``b`` and ``a``
are the output of ``in_proj_ba`` (made from the input, as Mamba-2's Δ is). Once ``g`` and ``beta`` are fixed the
update is a linear recurrence in ``v`` and the state, as Mamba's is once Δ, Ā, B, C are: MambaLRP (Rezaei Jafari et
al., NeurIPS 2024) holds those (state_space.py, :func:`~lrpcli.engine.state_space.hold_ssd_parameters`), and
AttnLRP / CP-LRP hold a gate. So while the model is captured the output of every such mixer's ``in_proj_ba`` passes
:func:`lrpcli::held <lrpcli.engine.experts.held>` (a forward hook: the module and its path are unchanged), and
everything computed from it alone (``beta``, ``g``, the chunk's ``cumsum`` of ``g``, its decay mask, ``exp(g)``) is
of kind "meta": no relevance, no rule needed. Relevance flows through ``q``, ``k``, ``v`` and the state (products of
two live values get the composite's product rule, as attention's ``q k^T``).

Gemma3n's MLP (``Gemma3nTextMLP`` with ``activation_sparsity`` > 0) keeps the top few percent of its gate
projection by a Gaussian estimate, ``relu(x - (mean(x) + std(x) * z))`` (``_gaussian_topk``, z the normal quantile of
the target sparsity): a ReLU whose threshold is computed from the input. The threshold is held, as a norm's sigma is
(passes/norms.py; AttnLRP Prop. 3.4): while captured the MLP's ``_gaussian_topk`` is :func:`held_topk`, transformers'
computation with the cutoff passed through lrpcli::held, so ``relu(x - c)`` is a ReLU with a constant shift and the
``mean``/``std`` that make c take no relevance. (AltUp's magnitude normalisation, ``h * mean(h0**2)**0.5 /
sqrt(maximum(mean(h**2), eps))``, needs no hook: both magnitudes are normalisers, held by
passes/transformer.py's ``classify_products`` as a hand-written RMSNorm's.)

The hook and the rewrite only mark values: the captured graph computes what the model computes.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import torch

from . import experts  # noqa: F401  (registers lrpcli::held)

#: the submodule of a gated delta rule mixer whose output makes only its decay g and write strength beta
GATES = "in_proj_ba"


def is_gated_delta_net(module: torch.nn.Module) -> bool:
    """transformers' Qwen3-Next linear attention: ``in_proj_ba`` (beta, g), ``A_log``, ``dt_bias`` and the chunked rule."""
    return (
        isinstance(getattr(module, GATES, None), torch.nn.Linear)
        and all(isinstance(getattr(module, name, None), torch.Tensor) for name in ("A_log", "dt_bias"))
        and callable(getattr(module, "chunk_gated_delta_rule", None))
    )


def _hold(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
    return torch.ops.lrpcli.held(output)


def is_sparse_mlp(module: torch.nn.Module) -> bool:
    """transformers' Gemma3n MLP with its Gaussian top-k (``activation_sparsity`` > 0)."""
    return callable(getattr(module, "_gaussian_topk", None)) and float(getattr(module, "activation_sparsity", 0.0) or 0.0) > 0.0


def held_topk(module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """transformers' ``Gemma3nTextMLP._gaussian_topk`` (4.57) with the cutoff held (see the module docstring)."""
    sparsity = torch.tensor(module.activation_sparsity, dtype=torch.float32, device=inputs.device)
    multiplier = torch.distributions.normal.Normal(0, 1).icdf(sparsity).type(inputs.dtype)
    mean = torch.mean(inputs, dim=-1, keepdim=True)
    std = torch.std(inputs, dim=-1, keepdim=True, unbiased=False)
    return torch.nn.functional.relu(inputs - torch.ops.lrpcli.held(mean + std * multiplier))


@contextlib.contextmanager
def held_gates(model: Any) -> Iterator[list[str]]:
    """While open, every gated delta rule mixer's ``in_proj_ba`` output passes lrpcli::held and every sparse Gemma3n
    MLP runs :func:`held_topk`; yields their paths. The model is as it was afterwards, whatever happens."""
    found: list[str] = []
    handles = []
    patched = []
    if isinstance(model, torch.nn.Module):
        for path, module in model.named_modules():
            if is_gated_delta_net(module):
                handles.append(getattr(module, GATES).register_forward_hook(_hold))
                found.append(path)
            elif is_sparse_mlp(module) and "_gaussian_topk" not in vars(module):
                module._gaussian_topk = functools.partial(held_topk, module)
                patched.append(module)
                found.append(path)
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()
        for module in patched:
            del module._gaussian_topk


def note(paths: list[str]) -> str:
    """The graph's note: where gates made from the input were held."""
    return ("gates made from the input held constant (the gated delta rule's decay g and write strength beta, as MambaLRP "
            f"holds Δ, A-bar, B, C; Gemma3n's sparsity cutoff, as a norm's sigma): {', '.join(paths)}")
