"""Attention weights made without a softmax, held constant: relevance goes through the values they weigh.

CP-LRP (Ali et al., ICML 2022) holds a transformer's attention weights constant, AttnLRP (Achtibat et al., ICML
2024) holds its gates, and MambaLRP (Rezaei Jafari et al., NeurIPS 2024) holds a selective SSM's input-dependent
coefficients (state_space.py). Three transformers families weigh their values with weights that no published LRP
rule covers; each is held as those hold theirs. While the model is captured, the outputs of the submodules that make
only those weights pass :func:`lrpcli::held <lrpcli.engine.experts.held>` (forward hooks: the module and its path are
unchanged), so everything computed from them alone is of kind "meta" (no relevance, no rule needed):

- Doge (``DogeAttention``): a dynamic mask ``exp(A * softplus(dt_proj(v)))`` added to the attention scores, Mamba's
  discretised decay ``exp(Δ A)`` with ``Δ = softplus(dt_proj(v))``, held as MambaLRP holds it (``dt_proj``). The mask
  is then a constant added to the scores, like a position bias: its share of the scores' relevance is absorbed as a
  bias's, and the scores get the composite's attention rules as in any other attention.
- YOSO (``YosoSelfAttention``): weights ``(1 - acos(q k^T) / pi) ** tau``, the expectation of its LSH collisions, in
  place of a softmax. Its queries and keys make only these weights: holding them (``query``, ``key``) holds the
  weights, as CP-LRP does, and ``E @ V`` is a linear map of the values. AttnLRP's rule is a softmax's; through this
  kernel's ``1 - a / pi`` a proportional split would give the constant 1 more than the whole relevance.
- RWKV (``RwkvSelfAttention``): the WKV, ``out_t = sum_s w_ts v_s / sum_s w_ts`` with ``w_ts = exp(k_s - (t-1-s)
  e^decay)`` (``exp(u + k_t)`` for s = t), a softmax over the positions written as a recurrence and kept finite by
  a running maximum m (``maximum``) that both sums are divided by, so it cancels from every output. The keys make only
  the weights: held (``key``), the maximum, the exps and the denominator are computed from held values alone, and
  relevance goes through the values by a linear recurrence with held coefficients, conserved as MambaLRP's scan.
- xLSTM (``xLSTMBackend``, the mLSTM cell): ``C_t = f_t C_{t-1} + i_t k_t v_t^T``, ``n_t = f_t n_{t-1} + i_t k_t``,
  ``h_t = C_t^T q_t / max(|n_t^T q_t|, exp(-m_t))``, its gates ``exp(log_sigmoid(f~) + m_{t-1} - m_t)`` and
  ``exp(i~ - m_t)`` kept finite by a running maximum m: a linear attention whose weights (gates, queries, keys and
  the normaliser) are held as MambaLRP holds a selective SSM's gates and CP-LRP an attention's weights. Its inputs
  ``query``, ``key``, ``igate`` and ``fgate`` are held (a pre-hook: the gates arrive as pre-activations, split from
  one fused projection in its "fused" weight mode), so relevance goes through the cell input ``v`` and the state C by
  a linear recurrence with held coefficients.

The hooks only mark values: the captured graph computes what the model computes.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import torch

from . import experts  # noqa: F401  (registers lrpcli::held)


def _linear(module: torch.nn.Module, name: str) -> bool:
    return isinstance(getattr(module, name, None), torch.nn.Linear)


def held_parts(module: torch.nn.Module) -> tuple[str, ...]:
    """The submodules whose outputs make only a non-softmax attention's weights (see the module docstring), or ()."""
    if _linear(module, "dt_proj") and isinstance(getattr(module, "A", None), torch.Tensor) and callable(getattr(module, "prepare_dynamic_mask", None)):
        return ("dt_proj",)  # Doge's dynamic mask
    if all(_linear(module, name) for name in ("query", "key", "value")) and isinstance(getattr(module, "lsh_config", None), dict):
        return ("query", "key")  # YOSO's expectation kernel
    if _linear(module, "key") and all(isinstance(getattr(module, name, None), torch.Tensor) for name in ("time_decay", "time_first")):
        return ("key",)  # RWKV's WKV weights
    return ()


#: the inputs held of a module with an xLSTM cell's backend (see the module docstring)
_XLSTM_HELD = ("query", "key", "igate", "fgate")


def held_inputs(module: torch.nn.Module) -> tuple[str, ...]:
    """The forward arguments of ``module`` that make only a non-softmax attention's weights (xLSTM's cell), or ()."""
    if all(callable(getattr(module, name, None)) for name in ("step_kernel_fn", "sequence_kernel_fn", "chunkwise_kernel_fn")):
        return _XLSTM_HELD
    return ()


def _hold_inputs(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    for name in held_inputs(module):
        if isinstance(bound.arguments.get(name), torch.Tensor):
            bound.arguments[name] = torch.ops.lrpcli.held(bound.arguments[name])
    return bound.args, bound.kwargs


def _hold(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
    return torch.ops.lrpcli.held(output)


@contextlib.contextmanager
def held_kernels(model: Any) -> Iterator[list[str]]:
    """While open, the submodules of ``model`` that make a non-softmax attention's weights pass lrpcli::held; yields
    the paths of the attentions found. The model is as it was afterwards, whatever happens."""
    found: list[str] = []
    handles = []
    if isinstance(model, torch.nn.Module):
        for path, module in model.named_modules():
            parts = held_parts(module)
            if parts:
                handles.extend(getattr(module, name).register_forward_hook(_hold) for name in parts)
                found.append(path)
            if held_inputs(module):
                handles.append(module.register_forward_pre_hook(_hold_inputs, with_kwargs=True))
                found.append(path)
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def note(paths: list[str]) -> str:
    """The graph's note: which attentions' weights were held."""
    return f"attention weights made without a softmax held constant (CP-LRP; MambaLRP for Doge's decay mask and xLSTM's gates): {', '.join(paths)}"
